"""H-SAM's two-stage decoder in SamoraNet, and what trains in the H-SAMora and SAMed overlays of the bundle."""

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from samora_monai.handlers import DualLossEpochHandler
from samora_monai.inferers import AuxOutputInferer
from samora_monai.losses import DualStageLoss, LowResLoss
from samora_monai.networks import SamoraNet, configure_stage

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "samora_synapse" / "configs"
TINY = {"variant": "tiny", "img_size": 64, "random_init": True, "device": "$torch.device('cpu')",
        "allow_missing_experts": True}


def make_net(**kwargs):
    torch.manual_seed(0)
    return SamoraNet(3, variant="tiny", img_size=64, random_init=True, decoder="hsam", **kwargs)


def overlay_network(overlay: str, root: Path):
    """The ``network`` of train.yaml + ``overlay`` exactly as the bundle builds it (tiny, random SAM)."""
    parser = ConfigParser(ConfigParser.load_config_files([str(CONFIGS / "train.yaml"), str(CONFIGS / overlay)]))
    parser.update({**TINY, "bundle_root": str(root)})
    return parser


def grads_after_step(net, loss_fn, size=64):
    torch.manual_seed(1)
    x, y = torch.rand(2, 1, size, size), torch.randint(0, 4, (2, 1, size, size)).float()
    net.train()
    loss_fn(net(x, aux=True), y).backward()
    return {n: p.grad for n, p in net.named_parameters()}


def test_hsam_shapes_train_and_eval():
    net = make_net()
    out = net(torch.rand(2, 1, 64, 64), aux=True)
    assert out["low_res_logits"].shape == (2, 4, 16, 16)  # 4 g, g = 64 / 16
    for key in ("logits", "logits1", "logits2"):
        assert out[key].shape == (2, 4, 64, 64)
    # stage 2 decodes at the full network resolution (16 g) without interpolation
    stage1 = net.mask_decoder.forward_features(net.encode(torch.rand(1, 1, 64, 64))[1], *net._prompt_free(
        torch.zeros(1, 32, 4, 4)))  # fmt: skip
    assert stage1[1].shape == (1, 4, 16) and stage1[2].shape == (1, 4, 16, 16)  # similarity [B, T, g*g], P/8 = 4
    net.eval()
    with torch.no_grad():
        x = torch.rand(1, 1, 48, 48)
        out = net(x, aux=True)
        plain = net(x)
    assert plain.shape == (1, 4, 48, 48)
    torch.testing.assert_close(plain, (out["logits1"] + out["logits2"]) / 2)
    torch.testing.assert_close(out["logits"], plain)
    assert not torch.allclose(out["logits1"], out["logits2"])


def test_noise_and_dropout_only_in_training():
    net = make_net()
    x = torch.rand(1, 1, 64, 64)
    net.eval()
    with torch.no_grad():
        a, b = net(x, aux=True), net(x, aux=True)
    torch.testing.assert_close(a["logits2"], b["logits2"])
    net.train()
    with torch.no_grad():
        c = net(x, aux=True)
    torch.testing.assert_close(c["logits1"], a["logits1"])  # stage 1 sees the clean embedding
    assert (c["logits2"] - a["logits2"]).abs().max() > 1e-3


def test_published_guided_attention_is_inert_and_working_is_not():
    published = make_net()
    gate = published.mask_decoder2.guided_attention
    rows, prior = torch.randn(2, 4, 16), torch.softmax(torch.randn(2, 4, 16), 1)
    torch.testing.assert_close(gate.eval()(rows, prior), torch.ones(2, 1, 4, 4))  # softmax over one channel
    grads = grads_after_step(published, DualStageLoss())
    assert all(grads[n].abs().sum() == 0 for n in grads if "guided_attention" in n)
    working = make_net(hsam_guided_attention="working")
    out = working.mask_decoder2.guided_attention.eval()(rows, prior)
    assert out.shape == (2, 1, 4, 4) and ((out > 0) & (out < 1)).all() and out.std() > 0
    grads = grads_after_step(working, DualStageLoss())
    assert any(grads[n].abs().sum() > 0 for n in grads if "guided_attention.self_attn" in n)
    with pytest.raises(ValueError, match="working"):
        make_net(hsam_guided_attention="fixed")


def test_stage1_loads_from_sam_checkpoint_stage2_fresh(tmp_path):
    torch.manual_seed(3)
    sam = SamoraNet(8, variant="tiny", img_size=64, random_init=True, levels=())
    path = tmp_path / "sam_tiny.pth"
    torch.save(sam.state_dict(), path)
    net = SamoraNet(3, variant="tiny", img_size=64, sam_checkpoint=str(path), decoder="hsam")
    ref, got = sam.state_dict(), net.state_dict()
    for key in ("transformer.layers.0.cross_attn_token_to_image.q_proj.weight", "output_upscaling.0.weight"):
        torch.testing.assert_close(got[f"mask_decoder.{key}"], ref[f"mask_decoder.{key}"])
    assert got["mask_decoder.mask_tokens.weight"].shape == (4, 32)  # class-dependent: not loaded
    assert any(k.startswith("mask_decoder2.") for k in got) and not any(k.startswith("mask_decoder2.") for k in ref)


def test_hsamora_overlay_stage2_gradients_reach_exactly_hl_attn_and_both_decoders(tmp_path):
    parser = overlay_network("hsamora.yaml", tmp_path)
    net, loss = parser.get_parsed_content("network"), parser.get_parsed_content("loss")
    assert net.decoder == "hsam" and isinstance(loss, DualStageLoss) and loss.loss1.loss.lambda_dice == 0.8
    last = len(parser["train#handlers"]) - 1  # appended by the overlay's +train#handlers
    handler = parser.get_parsed_content(f"train#handlers#{last}")
    assert isinstance(handler, DualLossEpochHandler) and handler.loss is loss
    assert isinstance(parser.get_parsed_content("train#inferer"), AuxOutputInferer)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    expected = {
        n for n, _ in net.named_parameters() if ".fusion." in n or n.startswith(("mask_decoder.", "mask_decoder2."))
    }
    assert trainable == expected and any(".fusion." in n for n in expected)
    grads = grads_after_step(net, loss)
    assert {n for n, g in grads.items() if g is not None} == expected
    for part in (".fusion.", "mask_decoder.", "mask_decoder2.output_hypernetworks"):
        assert any(grads[n].abs().sum() > 0 for n in expected if part in n), part


def test_samed_overlay_trains_exactly_one_lora_and_the_decoder(tmp_path):
    parser = overlay_network("samed.yaml", tmp_path)
    parser["img_size"] = 64
    net, loss = parser.get_parsed_content("network"), parser.get_parsed_content("loss")
    assert isinstance(loss, LowResLoss) and net.levels == ("image",) and net.lora_rank == 4
    assert all(set(b.lora.experts) == {"image"} for b in net.samora_blocks)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    expected = {n for n, _ in net.named_parameters() if ".lora.experts.image." in n or n.startswith("mask_decoder.")}
    assert trainable == expected and not any(".fusion." in n for n in trainable)
    assert sum(".lora." in n for n in trainable) == 5 * len(net.samora_blocks)  # A, B for q and v, scale
    grads = grads_after_step(net, loss)
    assert {n for n, g in grads.items() if g is not None} == expected


def test_samed_stage_trains_both_hsam_decoders_for_the_hsam_baseline():
    net = make_net(levels=("image",))
    configure_stage(net, "samed", "image")
    trainable = {n.split(".")[0] for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"image_encoder", "mask_decoder", "mask_decoder2"}
    assert all(".lora.experts.image." in n for n, p in net.named_parameters() if p.requires_grad and "encoder" in n)
