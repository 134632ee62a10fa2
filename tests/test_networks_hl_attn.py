"""HL-Attn: the reference equations, the identity start, spatial mixing and the parameter counts."""

import pytest
import torch
import torch.nn.functional as F

from samora_monai.networks import HLAttn, build_fusion, count_parameters

LEVELS = ("image", "patch", "pixel")  # the LoRA's level order (the order residuals are passed in)


def layer_norm(x, norm):
    return F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, 1e-5)


def transcribed_caf(unit, query, context):
    """The reference's CAF written out: LN_q/LN_k/LN_v, nn.MultiheadAttention from its own weights, Linear, residual."""
    mha = unit.attn
    heads, dim = mha.num_heads, query.shape[-1]
    w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
    b_q, b_k, b_v = mha.in_proj_bias.chunk(3)
    q = F.linear(layer_norm(query, unit.norm_q), w_q, b_q)
    k = F.linear(layer_norm(context, unit.norm_k), w_k, b_k)
    v = F.linear(layer_norm(context, unit.norm_v), w_v, b_v)
    q, k, v = (t.unflatten(-1, (heads, dim // heads)).transpose(1, 2) for t in (q, k, v))  # [B, a, N, d]
    weights = (q @ k.transpose(-2, -1) / (dim // heads) ** 0.5).softmax(-1)
    attended = (weights @ v).transpose(1, 2).flatten(-2)  # [B, N, C]
    attended = F.linear(attended, mha.out_proj.weight, mha.out_proj.bias)
    return query + F.linear(attended, unit.proj.weight, unit.proj.bias)


def transcribed_hl_attn(module, residuals, order):
    """Reference HL-Attn: per-level loop, the lower state entering as key/value, scalar gates, final LayerNorm."""
    r = {level: residuals[i].flatten(1, 2) for i, level in enumerate(LEVELS)}  # [B, N, C]
    low_level, mid_level, top_level = order
    low = r[mid_level] + module.gates[0] * (transcribed_caf(module.units[0], r[mid_level], r[low_level]) - r[mid_level])
    high = r[top_level] + module.gates[1] * (transcribed_caf(module.units[1], r[top_level], low) - r[top_level])
    return layer_norm(high, module.norm).unflatten(1, residuals.shape[2:4])


@pytest.mark.parametrize("order", [("pixel", "patch", "image"), ("image", "pixel", "patch")])
def test_reference_init_equals_transcribed_reference(order):
    torch.manual_seed(0)
    default = None if order == ("pixel", "patch", "image") else order
    module = build_fusion("hl_attn", 32, LEVELS, block_heads=4, fusion_order=default, init="reference")
    with torch.no_grad():  # gates away from 1 so the gating is exercised
        module.gates.copy_(torch.tensor([0.7, 1.3]))
    residuals = torch.randn(3, 2, 3, 5, 32, requires_grad=True)
    params = [residuals, *module.parameters()]

    out = module(residuals)
    ref = transcribed_hl_attn(module, residuals, order)
    assert out.shape == (2, 3, 5, 32)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    seed = torch.randn_like(out)
    grads = torch.autograd.grad((out * seed).sum(), params)
    ref_grads = torch.autograd.grad((ref * seed).sum(), params)
    for name, g, r in zip(["residuals", *(n for n, _ in module.named_parameters())], grads, ref_grads, strict=True):
        assert g.abs().sum() > 0, name
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5, msg=name)
    # the final LayerNorm is on: every token of the output has zero mean and unit variance
    torch.testing.assert_close(out.mean(-1), torch.zeros(2, 3, 5), atol=1e-5, rtol=0)


def test_default_and_base_init_start_at_sum_and_zero():
    torch.manual_seed(0)
    residuals = torch.randn(3, 2, 4, 4, 32)
    summed = build_fusion("hl_attn", 32, LEVELS, block_heads=4)  # default init "sum"
    base = build_fusion("hl_attn", 32, LEVELS, block_heads=4, init="base")
    assert summed.init == "sum"
    torch.testing.assert_close(summed(residuals), residuals.sum(0))
    assert torch.count_nonzero(base(residuals)) == 0
    # same parameters as the reference; only the output path starts at zero
    assert count_parameters(summed) == count_parameters(build_fusion("hl_attn", 32, LEVELS, 4, init="reference"))


def test_options_are_checked():
    with pytest.raises(ValueError, match="hl_attn_spatial"):
        build_fusion("hl_attn_spatial", 32, LEVELS, block_heads=4)
    with pytest.raises(ValueError, match="reference"):
        build_fusion("hl_attn_lite", 32, LEVELS, block_heads=4, init="reference")
    with pytest.raises(ValueError, match="permutation"):
        HLAttn(32, LEVELS, 4, fusion_order=("image", "patch"))


@pytest.mark.parametrize("fusion", ["hl_attn", "hl_attn_lite"])
def test_spatial_mixing(fusion):
    torch.manual_seed(0)
    module = build_fusion(fusion, 32, LEVELS, block_heads=4, width=16, num_heads=2)
    with torch.no_grad():  # away from the identity start so every path is live
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    residuals = torch.randn(3, 2, 4, 4, 32)
    changed = residuals.clone()
    changed[2, 0, 1, 2] += torch.randn(32)  # one token of the pixel (lowest) level, first sample
    with torch.no_grad():
        diff = (module(changed) - module(residuals)).abs().amax(-1)  # [B, H, W]
    others = torch.ones_like(diff, dtype=torch.bool)
    others[0, 1, 2] = False
    assert diff[0, 1, 2] > 1e-3
    assert torch.all(diff[1] == 0)  # samples never mix
    if fusion == "hl_attn":
        assert torch.all(diff[0][others[0]] > 1e-6)  # every other token of the sample sees the change
    else:
        assert torch.all(diff[others] == 0)  # token-wise: no other token changes


def test_parameter_counts_on_vit_b():
    dim = 768  # ViT-B width, 12 blocks, 12 heads
    full = count_parameters(build_fusion("hl_attn", dim, LEVELS, block_heads=12))["total"]
    lite = count_parameters(build_fusion("hl_attn_lite", dim, LEVELS, block_heads=12))["total"]
    # per unit: 3 LNs + MHA (4 C^2 + 4 C) + Linear (C^2 + C); per block: 2 units + 2 gates + final LN
    unit = 3 * 2 * dim + 4 * dim * dim + 4 * dim + dim * dim + dim
    assert full == 2 * unit + 2 + 2 * dim == 5_916_674
    assert 12 * full == 71_000_088
    # lite at width w = 64: down (C w + w), LN (2 w), per unit q (w^2 + w), kv (2 w^2 + 2 w), gate (w + 1),
    # out (w^2 + w), up (w C + C)
    w = 64
    lite_unit = (w * w + w) + (2 * w * w + 2 * w) + (w + 1) + (w * w + w)
    assert lite == (dim * w + w) + 2 * w + 2 * lite_unit + (w * dim + dim)
    assert 12 * lite < 2e6
