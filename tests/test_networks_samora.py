"""Hierarchical LoRA, HL-Attn, stage freezing and the optimised stage-2 block."""

import copy
import pickle

import pytest
import torch
from segment_anything.modeling.image_encoder import add_decomposed_rel_pos, window_partition, window_unpartition

from samora_monai.networks import (
    SamoraNet,
    configure_stage,
    count_parameters,
    load_expert,
    save_expert,
)


def make_net(img_size=128, **kwargs):
    torch.manual_seed(0)
    kwargs.setdefault("num_classes", 3)
    return SamoraNet(variant="tiny", img_size=img_size, random_init=True, **kwargs)


def randomise_experts(net, std=0.2):
    """Give every expert non-zero B matrices (as after stage 1)."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for block in net.samora_blocks:
            for expert in block.lora.experts.values():
                for b in (expert.b_q, expert.b_v):
                    b.weight.copy_(torch.randn(b.weight.shape, generator=g) * std)


def reference_attention(block, h, dq=None, dv=None):
    """Plain SAM attention (explicit softmax) incl. the output projection, on window-partitioned h [n, h, w, C]."""
    attn = block.attn
    n, hh, ww, dim = h.shape
    qkv = attn.qkv(h).reshape(n, hh * ww, 3, dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if dq is not None:
        q, v = q + dq, v + dv
    heads = attn.num_heads
    q, k, v = (t.reshape(n, hh * ww, heads, -1).permute(0, 2, 1, 3).reshape(n * heads, hh * ww, -1) for t in (q, k, v))
    scores = (q * attn.scale) @ k.transpose(-2, -1)
    scores = add_decomposed_rel_pos(scores, q, attn.rel_pos_h, attn.rel_pos_w, (hh, ww), (hh, ww))
    out = scores.softmax(-1) @ v
    return attn.proj(out.reshape(n, heads, hh, ww, -1).permute(0, 2, 3, 1, 4).reshape(n, hh, ww, dim))


def reference_block(block, x):
    """Stage-2 block as the SAMora reference computes it: each expert's attention (with its output projection) run
    separately on the window-partitioned grid, r_e = a_e - base, base + HL-Attn(r) unpartitioned, then the MLP."""
    height, width = x.shape[1:3]
    h = block.norm1(x)
    pad_hw = (height, width)
    if block.window_size > 0:
        h, pad_hw = window_partition(h, block.window_size)
    base = reference_attention(block, h)
    residuals = []
    for level in block.lora.levels:
        dq, dv = block.lora.experts[level](h.reshape(h.shape[0], -1, h.shape[-1]))
        residuals.append(reference_attention(block, h, dq, dv) - base)
    out = base + block.fusion(torch.stack(residuals))
    if block.window_size > 0:
        out = window_unpartition(out, block.window_size, pad_hw, (height, width))
    x = x + out
    return x + block.mlp(block.norm2(x))


def reference_forward(net, x):
    enc = net.image_encoder
    tokens = enc.patch_embed(x.expand(-1, 3, -1, -1)) + enc.pos_embed
    for block in net.samora_blocks:
        tokens = reference_block(block, tokens)
    return net.decode(enc.neck(tokens.permute(0, 3, 1, 2)))


def test_zero_initialised_experts_are_identity():
    net = make_net().eval()
    x = torch.rand(2, 1, 128, 128)
    with torch.no_grad():
        net.set_mode("plain")
        plain = net(x)
        for level in net.levels:
            net.set_mode("expert", level)
            torch.testing.assert_close(net(x), plain)
        net.set_mode("fused")
        torch.testing.assert_close(net(x), plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fusion", ["hl_attn", "hl_attn_lite"])
def test_stage2_starting_point(fusion):
    x = torch.rand(2, 1, 128, 128)
    summed = make_net(fusion=fusion, fusion_init="sum").eval()
    reference = make_net(fusion="sum").eval()
    base = make_net(fusion=fusion, fusion_init="base").eval()
    randomise_experts(summed)
    shared = {k: v for k, v in summed.state_dict().items() if ".fusion." not in k}
    for net in (reference, base):
        net.load_state_dict(shared, strict=False)
    with torch.no_grad():
        expected_sum = reference(x)
        torch.testing.assert_close(summed(x), expected_sum, rtol=1e-5, atol=1e-5)
        base_out = base(x)
        base.set_mode("plain")
        torch.testing.assert_close(base_out, base(x), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(expected_sum, base(x), atol=1e-3)  # the experts do change the output


@pytest.mark.parametrize(
    "img_size, fusion, fusion_init",
    [(64, "hl_attn", "reference"), (128, "hl_attn", "reference"), (80, "hl_attn", "sum"), (80, "hl_attn_lite", "sum")],
)  # one window, several windows, padded windows
def test_optimised_stage2_matches_plain_implementation(img_size, fusion, fusion_init):
    net = make_net(img_size=img_size, fusion=fusion, fusion_init=fusion_init, fusion_width=16, fusion_heads=2)
    randomise_experts(net)
    configure_stage(net, "stage2")
    with torch.no_grad():  # move HL-Attn away from its identity start so every path is exercised
        for block in net.samora_blocks:
            for p in block.fusion.parameters():
                p.add_(torch.randn_like(p) * 0.1)
    x = torch.rand(2, 1, img_size, img_size)

    out = net.decode(net.encode(x)[1])
    grads = torch.autograd.grad(out.square().mean(), [p for p in net.parameters() if p.requires_grad])
    ref = reference_forward(net, x)
    ref_grads = torch.autograd.grad(ref.square().mean(), [p for p in net.parameters() if p.requires_grad])
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-3, atol=1e-6)


def test_stage2_gradients_reach_exactly_fusion_and_decoder():
    net = make_net()
    randomise_experts(net)
    counts = configure_stage(net, "stage2")
    net(torch.rand(2, 1, 128, 128)).mean().backward()
    expected = {n for n, _ in net.named_parameters() if ".fusion." in n or n.startswith("mask_decoder.")}
    got = {n for n, p in net.named_parameters() if p.grad is not None}
    assert got == expected
    assert counts["trainable"] == sum(p.numel() for n, p in net.named_parameters() if n in expected)
    # HL-Attn of the first block learns through every later (frozen) block.
    first = net.samora_blocks[0].fusion.norm.weight.grad  # the zero-initialised output path
    assert first.abs().sum() > 0
    # No frozen parameter keeps requires_grad.
    assert all(not p.requires_grad for n, p in net.named_parameters() if n not in expected)


def test_stage1_gradients_reach_only_active_expert_and_head():
    net = make_net()
    head = torch.nn.Linear(net.embed_dim, 4)
    counts = configure_stage(net, "stage1", level="patch", heads=[head])
    tokens, embedding = net.encode(torch.rand(2, 1, 128, 128))
    head(embedding.mean((2, 3))).square().sum().backward()
    got = {n for n, p in net.named_parameters() if p.grad is not None}
    assert got == {n for n, _ in net.named_parameters() if ".lora.experts.patch." in n}
    assert head.weight.grad is not None
    assert counts["trainable"] == sum(p.numel() for n, p in net.named_parameters() if n in got) + 4 * net.embed_dim + 4
    # A (random init) gets no gradient while B is zero; B gets one.
    assert net.samora_blocks[0].lora.experts["patch"].b_q.weight.grad.abs().sum() > 0


def test_samed_stage_and_counts():
    net = make_net()
    counts = configure_stage(net, "samed", level="image")
    assert net.mode == "expert" and net.active_level == "image"
    decoder = sum(p.numel() for p in net.mask_decoder.parameters())
    expert = sum(p.numel() for n, p in net.named_parameters() if ".lora.experts.image." in n)
    assert counts == {"trainable": decoder + expert, "total": count_parameters(net)["total"]}
    with pytest.raises(ValueError, match="level"):
        configure_stage(net, "stage1", level="voxel")


def test_deepcopy_and_pickle_keep_outputs():
    net = make_net().eval()
    randomise_experts(net)
    x = torch.rand(1, 1, 128, 128)
    with torch.no_grad():
        expected = net(x)
        for clone in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
            assert clone.mode == "fused"
            torch.testing.assert_close(clone(x), expected)


def test_expert_file_round_trip_and_mismatch(tmp_path):
    net = make_net()
    randomise_experts(net)
    path = save_expert(net, "pixel", str(tmp_path / "pixel.pt"), {"final_loss": 0.1})
    other = make_net()
    record = load_expert(other, path)
    assert record["level"] == "pixel" and record["summary"] == {"final_loss": 0.1}
    for a, b in zip(net.samora_blocks, other.samora_blocks, strict=True):
        torch.testing.assert_close(a.lora.experts["pixel"].b_v.weight, b.lora.experts["pixel"].b_v.weight)
        assert torch.all(b.lora.experts["image"].b_v.weight == 0)
    with pytest.raises(ValueError, match="rank"):
        load_expert(make_net(lora_rank=2), path)
    with pytest.raises(ValueError, match="img_size"):
        load_expert(make_net(img_size=64), path)
    with pytest.raises(ValueError, match="level"):
        load_expert(other, path, level="image")
    loaded = SamoraNet(3, variant="tiny", img_size=128, random_init=True, expert_checkpoints={"pixel": path})
    torch.testing.assert_close(
        loaded.samora_blocks[1].lora.experts["pixel"].b_q.weight, net.samora_blocks[1].lora.experts["pixel"].b_q.weight
    )


def test_lora_block_indexes_and_fusion_factory():
    from samora_monai.networks.hl_attn import HLAttnLite, SumFusion, fusion_factory
    from samora_monai.networks.lora import lora_block_indexes

    assert lora_block_indexes(None, 4) == (0, 1, 2, 3)
    assert lora_block_indexes([3, 1], 4) == (1, 3)
    with pytest.raises(ValueError, match=r"lora_blocks \[1, 4\] out of range for 4 blocks"):
        lora_block_indexes([4, 1], 4)
    lite = fusion_factory("hl_attn_lite", width=8, num_heads=2)(32, ("image", "pixel"), 4)
    assert isinstance(lite, HLAttnLite) and lite.levels == ("image", "pixel")
    assert isinstance(fusion_factory("sum")(32, ("image",), 4), SumFusion)
    with pytest.raises(ValueError):
        fusion_factory("nope")(32, ("image",), 4)
