"""Speed paths: torch.compile with fallback, autocast, and the fused inference path against the plain implementation."""

import pytest
import torch
from monai.data import MetaTensor
from test_networks_samora import make_net, randomise_experts, reference_forward

from samora_monai.inferers import ResizedSliceInferer, slice_inferer
from samora_monai.networks import configure_stage
from samora_monai.networks.acceleration import (
    CompiledNetwork,
    autocast,
    compile_network,
    preferred_amp_dtype,
    resolve_amp_dtype,
)


def stage2_net(fusion="hl_attn", img_size=64):
    net = make_net(img_size=img_size, fusion=fusion, fusion_width=16, fusion_heads=2)
    randomise_experts(net)
    configure_stage(net, "stage2")
    with torch.no_grad():  # away from the identity start so HL-Attn contributes
        for block in net.samora_blocks:
            for p in block.fusion.parameters():
                p.add_(torch.randn_like(p) * 0.1)
    return net.eval()


@pytest.mark.parametrize("fusion", ["hl_attn", "hl_attn_lite", "sum"])
def test_inference_mode_fused_path_equals_separate_expert_attentions(fusion):
    """inference_mode + fused SDPA batch (and the lite/sum projection folding) == each expert's attention alone."""
    net = stage2_net(fusion, img_size=80)  # padded windows
    x = torch.rand(2, 1, 80, 80)
    with torch.inference_mode():
        fast = net.decode(net.encode(x)[1])
    with torch.no_grad():
        ref = reference_forward(net, x)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)
    net.set_mode("plain")
    with torch.inference_mode():
        assert not torch.allclose(net.decode(net.encode(x)[1]), ref, atol=1e-3)  # the experts do matter


@pytest.mark.slow  # compiling the tiny SamoraNet with inductor took about 10 min on the shared 2-core CPU
def test_compile_matches_eager_logits():
    net = stage2_net("hl_attn_lite", img_size=32)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        eager = net(x)
    compiled = compile_network(net)
    assert isinstance(compiled, CompiledNetwork)
    with torch.no_grad():
        out = compiled(x)
    if not compiled.compiled:
        pytest.skip(f"torch.compile unavailable here: {compiled.failure}")
    torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-5)
    assert compiled.state_dict().keys() == net.state_dict().keys()


def test_compile_failure_falls_back_to_eager_with_warning():
    net = make_net(img_size=32).eval()
    x = torch.rand(1, 1, 32, 32)

    def broken_backend(graph, example_inputs):
        raise RuntimeError("no compiler here")

    wrapped = compile_network(net, compile_kwargs={"backend": broken_backend})
    with torch.no_grad(), pytest.warns(UserWarning, match="running SamoraNet eagerly.*no compiler here"):
        out = wrapped(x)
    assert not wrapped.compiled and "no compiler here" in wrapped.failure
    with torch.no_grad():
        torch.testing.assert_close(out, net(x))
    # the wrapper is transparent for checkpoints and the network's own API
    assert list(wrapped.state_dict()) == list(net.state_dict())
    wrapped.load_state_dict(net.state_dict())
    assert wrapped.num_classes == net.num_classes
    wrapped.set_mode("plain")
    assert net.mode == "plain"
    assert compile_network(net, enabled=False) is net


def test_amp_dtypes_and_bf16_autocast_keeps_softmax_finite():
    assert resolve_amp_dtype("none") is None and resolve_amp_dtype(None) is None
    assert resolve_amp_dtype("bf16") is torch.bfloat16 and resolve_amp_dtype(torch.float16) is torch.float16
    with pytest.raises(ValueError):
        resolve_amp_dtype("fp8")
    with pytest.raises(ValueError):
        resolve_amp_dtype(torch.float64)
    with pytest.raises(ValueError):
        ResizedSliceInferer(32, amp_dtype="int8")
    net = stage2_net("hl_attn_lite", img_size=32)
    x = torch.rand(2, 1, 32, 32)
    with torch.inference_mode():
        ref = net(x)
        with autocast("cpu", "bf16"):
            low = net(x)
    assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
    assert (low.float() - ref).abs().max() < 0.1 * ref.abs().max()
    with autocast("cpu", "bf16"):  # the training path (low-rank softmax) under autocast, with gradients
        train_low = net(x)
    train_low.float().square().mean().backward()
    assert (train_low.float() - ref).abs().max() < 0.1 * ref.abs().max()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_bundle_speed_options_amp_default_metatensor_inputs_and_flags():
    """What the bundles' ``amp_dtype`` / ``compile`` keys call: fp16 off CUDA, MetaTensor batches reach the
    compiled graph as plain tensors, command-line strings as flags, the transunet protocol's autocast type."""
    assert preferred_amp_dtype("cpu") == "fp16"  # bf16 only on a CUDA device that has it
    traced = []

    def recording_backend(graph, example_inputs):
        traced.append(len(example_inputs))
        return graph.forward

    net = torch.nn.Linear(3, 2)
    x = MetaTensor(torch.rand(4, 3), meta={"filename_or_obj": "case.nii.gz"})
    wrapped = compile_network(net, "true", {"backend": recording_backend})
    out = wrapped(x)
    assert wrapped.compiled and traced and type(out) is torch.Tensor
    torch.testing.assert_close(out, net(x.as_tensor()))
    assert compile_network(net, "false") is net
    assert slice_inferer("transunet", spatial_size=32, amp_dtype="bf16").amp_dtype is torch.bfloat16
    assert slice_inferer("resize", spatial_size=32).amp_dtype is torch.float16
