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
        - ``"fused"``: stage 2. The qkv projection runs once; the base and every expert's attention cores run
          as one batched scaled-dot-product call; the experts' residuals (before the output projection) are
          fused by ``fusion`` and the output projection is applied once to ``base + fused``.

    Args:
        block: the SAM block whose ``norm1``, ``attn``, ``norm2`` and ``mlp`` are adopted.
        lora: the block's experts, or ``None`` for a block without LoRA (it always runs plain).
        fusion: module mapping residuals [E, B, H, W, C] to [B, H, W, C]; required for ``"fused"``.
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
            bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(n, heads, tokens, tokens)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.attn.scale)
        return out.transpose(1, 2).reshape(n, tokens, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, H, W, C] -> [B, H, W, C]."""
        height, width = x.shape[1], x.shape[2]
        h = self.norm1(x)
        pad_hw = (height, width)
        if self.window_size > 0:
            h, pad_hw = window_partition(h, self.window_size)
        n, hh, ww, dim = h.shape
        q, k, v = self.attn.qkv(h).reshape(n, hh * ww, 3 * dim).chunk(3, dim=-1)

        if self.mode == "plain" or self.lora is None:
            out = self._attend(q, k, v, (hh, ww))
        elif self.mode == "expert":
            dq, dv = self.lora.delta(h.reshape(n, hh * ww, dim), self.active_level)
            out = self._attend(q + dq, k, v + dv, (hh, ww))
        else:
            dq, dv = self.lora.deltas(h.reshape(n, hh * ww, dim))  # [E, n, N, C]
            levels = dq.shape[0] + 1
            queries = torch.cat([q[None], q[None] + dq]).flatten(0, 1)
            values = torch.cat([v[None], v[None] + dv]).flatten(0, 1)
            keys = k.expand(levels, -1, -1, -1).flatten(0, 1)
            out = self._attend(queries, keys, values, (hh, ww))
        out = out.reshape(-1, hh, ww, dim)
        if self.window_size > 0:
            out = window_unpartition(out, self.window_size, pad_hw, (height, width))
        if self.mode == "fused" and self.lora is not None:
            out = out.unflatten(0, (levels, -1))  # [1 + E, B, H, W, C]
            base = out[0]
            out = base + self.fusion(out[1:] - base)
        x = x + self.attn.proj(out)
        return x + self.mlp(self.norm2(x))
