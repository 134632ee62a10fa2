"""SAM 2 Hiera blocks with experts: stage-2 fused attention against a plain per-expert implementation (forward
and every gradient), plain mode against the official block, identity start, stage gradients, expert files and a
stage-1 smoke run through the engines."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from monai.data import DataLoader, Dataset
from sam2.modeling.backbones.hieradet import MultiScaleBlock, do_pool
from sam2.modeling.backbones.utils import window_partition, window_unpartition

from samora_monai.engines import SelfSupervisedTrainer, StudentLoss, stage1_student
from samora_monai.losses import PixelLevelLoss
from samora_monai.networks import SamoraNet, configure_stage, load_expert, save_expert
from samora_monai.networks.hiera_block import HieraSamoraBlock
from samora_monai.networks.hl_attn import build_fusion
from samora_monai.networks.lora import HierarchicalLoRA
from samora_monai.networks.ssl_heads import DenoisingDecoder, ImageProjector

LEVELS = ("image", "patch", "pixel")
# (dim, dim_out, heads, q_stride, window): windowed, q-pooling (stage change) and global blocks as in Hiera
# (sam2's MultiScaleBlock has no global q-pooling block: it divides by the pooled window size).
BLOCKS = {
    "windowed": (8, 8, 2, None, 4),
    "qpool_windowed": (8, 16, 4, (2, 2), 4),
    "global": (16, 16, 2, None, 0),
}
FUSIONS = ("hl_attn", "hl_attn_lite", "sum")


def randomize_experts(module: torch.nn.Module, seed: int = 1) -> None:
    """Random values for every parameter of experts or fusion modules: non-zero B factors and fusion output
    projections (they start at zero) and scales/gates away from one."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen) + (1.0 if p.ndim == 0 else 0.0))


def make_block(kind: str, fusion: str) -> HieraSamoraBlock:
    torch.manual_seed(0)
    dim, dim_out, heads, q_stride, window = BLOCKS[kind]
    official = MultiScaleBlock(dim, dim_out, heads, q_stride=q_stride, window_size=window)
    lora = HierarchicalLoRA(dim, 2, LEVELS, out_dim=dim_out)
    block = HieraSamoraBlock(official, lora, build_fusion(fusion, dim_out, LEVELS, heads, width=8, num_heads=2))
    randomize_experts(block.lora)
    randomize_experts(block.fusion, seed=2)
    return block


def reference_core(block: HieraSamoraBlock, h: torch.Tensor, level: str | None) -> torch.Tensor:
    """One attention written out as sam2's ``MultiScaleAttention`` (without proj), LoRA added to qkv's q and v."""
    b, height, width, _ = h.shape
    qkv = block.attn.qkv(h)
    if level is not None:
        dq, dv = block.lora.delta(h, level)
        qkv = qkv + torch.cat([dq, torch.zeros_like(dq), dv], dim=-1)
    q, k, v = torch.unbind(qkv.reshape(b, height * width, 3, block.attn.num_heads, -1), 2)
    if block.attn.q_pool is not None:
        q = do_pool(q.reshape(b, height, width, -1), block.attn.q_pool)
        height, width = q.shape[1:3]
        q = q.reshape(b, height * width, block.attn.num_heads, -1)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2).reshape(b, height, width, -1)


def reference_forward(block: HieraSamoraBlock, x: torch.Tensor, levels: tuple[str | None, ...]) -> torch.Tensor:
    """The block as sam2's ``MultiScaleBlock.forward``, running each attention in ``levels`` separately;
    ``(None,)`` is the plain block, ``(None, *LEVELS)`` stage 2 with the residuals fused."""
    shortcut = x
    x = block.norm1(x)
    if block.dim != block.dim_out:
        shortcut = do_pool(block.proj(x), block.pool)
    height, width = x.shape[1], x.shape[2]
    window = block.window_size
    if window > 0:
        x, pad_hw = window_partition(x, window)
    outs = [reference_core(block, x, level) for level in levels]
    if block.q_stride:
        window = block.window_size // block.q_stride[0]
        height, width = shortcut.shape[1:3]
        pad_hw = (height + (window - height % window) % window, width + (window - width % window) % window)
    if block.window_size > 0:
        outs = [window_unpartition(o, window, pad_hw, (height, width)) for o in outs]
    out = block.attn.proj(outs[0])
    if len(outs) > 1:
        out = out + block.fusion(torch.stack([block.attn.proj(o) - out for o in outs[1:]]))
    x = shortcut + out
    return x + block.mlp(block.norm2(x))


def grads(module: torch.nn.Module, x: torch.Tensor, out: torch.Tensor, weight: torch.Tensor) -> dict:
    module.zero_grad()
    x.grad = None
    (out * weight).sum().backward()
    found = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    found["input"] = x.grad.clone()
    return found


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("kind", sorted(BLOCKS))
def test_fused_block_equals_separate_expert_attentions(kind, fusion):
    block = make_block(kind, fusion).double()
    x = torch.randn(2, 10, 10, block.dim, dtype=torch.float64, requires_grad=True)  # 10: windows need padding
    block.set_mode("fused")
    out = block(x)
    ref = reference_forward(block, x, (None, *LEVELS))
    side = 5 if block.q_stride else 10
    assert out.shape == ref.shape == (2, side, side, block.dim_out)
    assert torch.allclose(out, ref, atol=1e-10), (out - ref).abs().max()
    assert (ref - reference_forward(block, x, (None,))).abs().max() > 1e-3  # the experts change the output
    weight = torch.randn_like(out)
    got, want = grads(block, x, block(x), weight), grads(block, x, ref, weight)
    params = {n for n, p in block.named_parameters()}
    assert set(got) == set(want) == params | {"input"}
    for name in want:
        assert torch.allclose(got[name], want[name], atol=1e-9), (name, (got[name] - want[name]).abs().max())


@pytest.mark.parametrize("kind", sorted(BLOCKS))
def test_plain_and_expert_modes_match_the_official_block(kind):
    block = make_block(kind, "sum")
    official = MultiScaleBlock(*BLOCKS[kind][:3], q_stride=BLOCKS[kind][3], window_size=BLOCKS[kind][4])
    official.load_state_dict({k: v for k, v in block.state_dict().items() if not k.startswith(("lora", "fusion"))})
    x = torch.randn(2, 10, 10, block.dim)
    assert torch.allclose(block(x), official(x), atol=1e-5)
    block.set_mode("expert", "patch")
    assert torch.allclose(block(x), reference_forward(block, x, ("patch",)), atol=1e-5)
    assert (block(x) - official(x)).abs().max() > 1e-3


def tiny_net(**kwargs) -> SamoraNet:
    torch.manual_seed(0)
    return SamoraNet(num_classes=2, variant="tiny", img_size=64, backbone="sam2", random_init=True, **kwargs)


def test_identity_start_and_hl_attn_starts_at_the_summed_experts():
    net = tiny_net(fusion="hl_attn")
    x = torch.rand(2, 1, 64, 64)
    net.set_mode("plain")
    plain = net(x)
    for mode, level in (("expert", "patch"), ("fused", None)):
        net.set_mode(mode, level)
        assert torch.equal(net(x), plain) if mode == "expert" else torch.allclose(net(x), plain, atol=1e-6)
    summed = tiny_net(fusion="sum")
    for model in (net, summed):
        for block in model.samora_blocks:
            randomize_experts(block.lora)
    summed.load_state_dict({k: v for k, v in net.state_dict().items() if ".fusion." not in k})
    net.set_mode("fused")
    assert torch.allclose(net(x), summed(x), atol=1e-5)
    assert (net(x) - plain).abs().max() > 1e-3


def trainable_names(net: torch.nn.Module) -> set[str]:
    return {n for n, p in net.named_parameters() if p.requires_grad}


def test_stage2_gradients_reach_exactly_fusion_and_decoder():
    net = tiny_net()
    for block in net.samora_blocks:
        randomize_experts(block.lora)
    configure_stage(net, "stage2")
    calls = []
    for block in net.samora_blocks:
        block.attn.qkv.register_forward_hook(lambda m, i, o: calls.append(o.shape))
    net(torch.rand(2, 1, 64, 64)).square().mean().backward()
    assert len(calls) == len(net.samora_blocks) == 6  # one qkv projection per block for base + 3 experts
    reached = {n for n, p in net.named_parameters() if p.grad is not None}
    expected = {n for n, _ in net.named_parameters() if ".fusion." in n or n.startswith("mask_decoder.")}
    assert reached == trainable_names(net) == expected
    assert any(n.startswith("mask_decoder.conv_s0") for n in reached)  # the high-resolution path is used
    assert all(net.get_parameter(n).grad.abs().sum() > 0 for n in reached if n.endswith("fusion.up.weight"))


def test_stage1_gradients_reach_exactly_the_active_expert_and_head():
    net = tiny_net()
    head = ImageProjector(net.embed_dim, 16, hidden_dim=32)
    configure_stage(net, "stage1", "patch", heads=[head])
    tokens, embedding = net.encode(torch.rand(2, 1, 64, 64))
    assert tokens.shape == (2, 4, 4, net.encoder_width) and embedding.shape == (2, net.embed_dim, 4, 4)
    head(embedding).square().sum().backward()
    reached = {n for n, p in net.named_parameters() if p.grad is not None}
    assert reached == trainable_names(net) == {n for n, _ in net.named_parameters() if ".experts.patch." in n}
    assert len({n.split(".lora")[0] for n in reached}) == len(net.samora_blocks)  # every Hiera block
    assert all(p.grad is not None for p in head.parameters())


def test_samed_stage_trains_one_expert_and_the_decoder():
    net = tiny_net()
    configure_stage(net, "samed", "image")
    net(torch.rand(1, 1, 64, 64)).square().mean().backward()
    reached = {n for n, p in net.named_parameters() if p.grad is not None}
    expected = {n for n, _ in net.named_parameters() if ".experts.image." in n or n.startswith("mask_decoder.")}
    assert reached == trainable_names(net) == expected and net.mode == "expert"


def test_expert_files_record_the_backbone(tmp_path):
    sam2_net, sam1_net = tiny_net(), SamoraNet(num_classes=2, variant="tiny", img_size=64, random_init=True)
    save_expert(sam1_net, "image", str(tmp_path / "sam1.pt"))
    with pytest.raises(ValueError, match="backbone: file has 'sam', network needs 'sam2'"):
        load_expert(sam2_net, str(tmp_path / "sam1.pt"))
    randomize_experts(sam2_net.samora_blocks[1].lora)
    save_expert(sam2_net, "image", str(tmp_path / "sam2.pt"))
    other = tiny_net()
    load_expert(other, str(tmp_path / "sam2.pt"))
    key = "image_encoder.trunk.blocks.1.lora.experts.image.b_q.weight"
    assert other.state_dict()[key].shape == (16, 4) and torch.equal(other.state_dict()[key], sam2_net.state_dict()[key])


def test_stage1_pixel_smoke_through_the_engines():
    net = tiny_net()
    before = copy.deepcopy(net.state_dict())
    objective = PixelLevelLoss(DenoisingDecoder(net.embed_dim, channels=(8, 8, 8, 8)), blur_prob=0.0)
    net = stage1_student(net, objective, "pixel")
    loss = StudentLoss(objective, net)
    loader = DataLoader(Dataset([{"image": torch.rand(1, 64, 64)} for _ in range(2)]), batch_size=2)
    params = [p for p in [*net.parameters(), *objective.parameters()] if p.requires_grad]
    trainer = SelfSupervisedTrainer("cpu", 2, loader, net, torch.optim.AdamW(params, lr=1e-2), loss)
    trainer.run()
    assert trainer.state.iteration == 2 and torch.isfinite(trainer.state.output["loss"])
    changed = {k for k, v in net.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(".lora.experts.pixel." in k for k in changed), sorted(changed)[:4]
    assert any(".blocks.5." in k for k in changed)  # the last (stride-32) Hiera block trains too
