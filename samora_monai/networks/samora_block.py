"""An encoder block of SAM with hierarchical LoRA experts and HL-Attn fusion as real submodules."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Block, get_rel_pos, window_partition, window_unpartition
from torch import nn

from samora_monai.networks.lora import HierarchicalLoRA

__all__ = ["SamoraBlock", "BLOCK_MODES"]

BLOCK_MODES = ("plain", "expert", "fused")


class SamoraBlock(nn.Module):
    """Wraps one ``segment_anything`` ViT block, adopting its submodules (same state-dict keys).

    Modes (set with :meth:`set_mode`):
        - ``"plain"``: the frozen SAM block.
        - ``"expert"``: one active expert's q/v deltas are added (stage 1, or a SAMed-style single LoRA).
        - ``"fused"``: stage 2. The qkv projection runs once; the experts' rank-r query/value deltas are added
          and the base and expert attention cores run as one batch (:meth:`_fused_attend`). As in the SAMora
          reference, the experts' residuals ``r_e = proj(a_e) - proj(base)`` (after the output projection) are
          fused by ``fusion`` on the window-partitioned token grid, and ``proj(base) + fused`` is unpartitioned
          and added to the block input; a fusion with a ``project_and_fuse(base, diffs, proj)`` method computes
          that sum itself from the unprojected ``a_e - base`` (cheaper, same value).
        Every mode runs its attention through ``scaled_dot_product_attention`` with the relative-position bias
        as its mask (fused kernels on CPU and GPU; float32 softmax accumulation under autocast).

    Args:
        block: the SAM block whose ``norm1``, ``attn``, ``norm2`` and ``mlp`` are adopted.
        lora: the block's experts, or ``None`` for a block without LoRA (it always runs plain).
        fusion: module mapping residuals [E, n, h, w, C] (n windows of h x w tokens) to [n, h, w, C]; required
            for ``"fused"``.
    """

    def __init__(self, block: Block, lora: HierarchicalLoRA | None = None, fusion: nn.Module | None = None) -> None:
        super().__init__()
        self.norm1 = block.norm1
        self.attn = block.attn
        self.norm2 = block.norm2
        self.mlp = block.mlp
        self.window_size = block.window_size
        self.lora = lora
        self.fusion = fusion
        self.mode = "plain"
        self.active_level: str | None = None

    def set_mode(self, mode: str, level: str | None = None) -> None:
        if mode not in BLOCK_MODES:
            raise ValueError(f"Unknown block mode {mode!r}; choose one of {BLOCK_MODES}.")
        if mode == "expert" and self.lora is not None and level not in self.lora.levels:
            raise ValueError(f"Unknown expert level {level!r}; this block has {list(self.lora.levels)}.")
        if mode == "fused" and self.lora is not None and self.fusion is None:
            raise ValueError("This block has no fusion module; build the network with a fusion to use 'fused'.")
        self.mode = mode
        self.active_level = level if mode == "expert" else None

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """Multi-head attention core with SAM's decomposed relative position bias.

        q, k, v [n, h*w, C] -> [n, h*w, C] (before the output projection).
        """
        n, tokens, dim = q.shape
        heads = self.attn.num_heads
        q, k, v = (t.reshape(n, tokens, heads, dim // heads).transpose(1, 2) for t in (q, k, v))
        bias = None
        if self.attn.use_rel_pos:
            h, w = hw
            r_q = q.reshape(n, heads, h, w, dim // heads)
            rel_h = torch.einsum("nahwc,hkc->nahwk", r_q, get_rel_pos(h, h, self.attn.rel_pos_h))
            rel_w = torch.einsum("nahwc,wkc->nahwk", r_q, get_rel_pos(w, w, self.attn.rel_pos_w))
            bias = self._rel_bias(rel_h, rel_w)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.attn.scale)
        return out.transpose(1, 2).reshape(n, tokens, dim)

    def _fused_attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, h: torch.Tensor, hw: tuple[int, int]):
        """Base and every expert's attention core as one batch of ``(1 + E) n`` attentions through :meth:`_attend`.

        q, k, v [n, N, C] are the frozen projections and h [n, N, C] the normalised block input. Expert e's query
        and value are ``q + U_e B_e^T`` and ``v + U^v_e B^v_e^T`` (rank-r factors from one matmul); the keys are
        shared. One ``scaled_dot_product_attention`` call (fused kernel, softmax accumulated in float32 under
        autocast) covers all of them. Returns [1 + E, n, N, C] (before the output projection).
        """
        u_q, b_q, u_v, b_v = self.lora.low_rank_factors(h)  # U [E, n, N, r], B [E, C, r]
        queries = torch.cat([q[None], q + u_q @ b_q.transpose(1, 2)[:, None]])  # [1 + E, n, N, C]
        values = torch.cat([v[None], v + u_v @ b_v.transpose(1, 2)[:, None]])
        keys = k.expand(queries.shape[0], *k.shape)
        out = self._attend(queries.flatten(0, 1), keys.flatten(0, 1), values.flatten(0, 1), hw)
        return out.unflatten(0, (-1, q.shape[0]))

    @staticmethod
    def _rel_bias(rel_h: torch.Tensor, rel_w: torch.Tensor) -> torch.Tensor:
        """[..., H, W, H] and [..., H, W, W] decomposed terms -> bias [..., H*W, H*W]."""
        *lead, h, w, _ = rel_h.shape
        return (rel_h[..., :, None] + rel_w[..., None, :]).reshape(*lead, h * w, h * w)

    def _project_and_fuse(self, base: torch.Tensor, diffs: torch.Tensor) -> torch.Tensor:
        """base [n, h, w, C] and diffs ``a_e - base`` [E, n, h, w, C] -> ``proj(base) + fusion(r)`` [n, h, w, C]."""
        if hasattr(self.fusion, "project_and_fuse"):
            return self.fusion.project_and_fuse(base, diffs, self.attn.proj)
        # r_e = proj(a_e) - proj(base) = W (a_e - base): the bias cancels, the weight is applied to each residual.
        return self.attn.proj(base) + self.fusion(F.linear(diffs, self.attn.proj.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, H, W, C] -> [B, H, W, C]."""
        height, width = x.shape[1], x.shape[2]
        h = self.norm1(x)
        pad_hw = (height, width)
        if self.window_size > 0:
            h, pad_hw = window_partition(h, self.window_size)
        n, hh, ww, dim = h.shape
        h = h.reshape(n, hh * ww, dim)
        q, k, v = self.attn.qkv(h).chunk(3, dim=-1)

        fused = self.mode == "fused" and self.lora is not None
        if fused:
            out = self._fused_attend(q, k, v, h, (hh, ww)).flatten(0, 1)  # [(1 + E) n, N, C]
        elif self.mode == "expert" and self.lora is not None:
            dq, dv = self.lora.delta(h, self.active_level)
            out = self._attend(q + dq, k, v + dv, (hh, ww))
        else:
            out = self._attend(q, k, v, (hh, ww))
        out = out.reshape(-1, hh, ww, dim)
        if fused:
            out = out.unflatten(0, (-1, n))  # [1 + E, n, h, w, C]
            out = self._project_and_fuse(out[0], out[1:] - out[0])
        else:
            out = self.attn.proj(out)
        if self.window_size > 0:
            out = window_unpartition(out, self.window_size, pad_hw, (height, width))
        x = x + out
        return x + self.mlp(self.norm2(x))
