"""HL-Attn: hierarchical fusion of the LoRA experts' contributions inside one encoder block.

Each expert ``e`` changes the block's attention output (before the output projection) by a residual
``r_e = attn(q + dq_e, k, v + dv_e) - attn(q, k, v)``. HL-Attn fuses these residuals, lowest level first
(by default pixel, then patch, then image):

    s_0 = r_{o_0}
    s_i = r_{o_i} + GatedCrossAttn_i(query=r_{o_i}, context=states below i)        i = 1 .. L-1
    E   = sum_i s_i            (init="sum")      or      gamma * sum_i s_i, gamma = 0 at start (init="base")

The path that carries the cross-attention updates back to the block width starts at zero, so at step 0 the block
reproduces the frozen encoder plus the experts' summed contributions (``init="sum"``) or the frozen encoder alone
(``init="base"``). Two cross-attention kinds are available:

- ``"token"`` (default, light): the residuals are projected once to a reduced width ``w`` (shared projection and
  LayerNorm); per token, each level attends, with a sigmoid gate, across ``[s_0 .. s_{i-1}, z_i]`` at width
  ``w``; the summed updates return to width C through one zero-initialised projection. About 1.6M parameters
  for ViT-B at ``w = 64``; cost O(L^2 w) per token plus two ``C x w`` projections.
- ``"spatial"`` (reference-style): full-width multi-head attention across the spatial tokens, query the
  level's residual, key/value the fused lower state, scalar gate; about 71M parameters for ViT-B.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["HLAttn", "SumFusion", "LevelAttention", "SpatialCrossAttention", "build_fusion"]

DEFAULT_FUSION_ORDER = ("pixel", "patch", "image")


class SumFusion(nn.Module):
    """Ablation: ``E = sum_e r_e``. Input [E, B, H, W, C] -> [B, H, W, C]."""

    def __init__(self, levels: Sequence[str]) -> None:
        super().__init__()
        self.levels = tuple(levels)

    def forward(self, residuals: torch.Tensor) -> torch.Tensor:
        return residuals.sum(0)


class LevelAttention(nn.Module):
    """Per-token gated attention of one level over a list of level states, all at the reduced width ``w``.

    ``query`` [T, w] and ``context`` (M tensors [T, w]) -> update [T, w]; a per-token sigmoid gate computed
    from the query scales the attended value.
    """

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"fusion width {width} must be divisible by fusion heads {num_heads}.")
        self.num_heads = num_heads
        self.to_q = nn.Linear(width, width)
        self.to_kv = nn.Linear(width, 2 * width)
        self.gate = nn.Linear(width, 1)
        self.out = nn.Linear(width, width)

    def forward(self, query: torch.Tensor, context: Sequence[torch.Tensor]) -> torch.Tensor:
        heads = self.num_heads
        q = self.to_q(query).unflatten(-1, (heads, -1))  # [T, h, d]
        k, v = (t.unflatten(-1, (heads, -1)) for t in self.to_kv(torch.stack(list(context), dim=1)).chunk(2, -1))
        weights = torch.einsum("thd,tmhd->thm", q, k).mul(q.shape[-1] ** -0.5).softmax(-1)
        attended = torch.einsum("thm,tmhd->thd", weights, v).flatten(-2)
        return self.out(torch.sigmoid(self.gate(query)) * attended)


class SpatialCrossAttention(nn.Module):
    """Reference-style cross-attention across spatial tokens at full width, with a scalar gate.

    ``query`` [B, N, C] and ``context`` [B, N, C] -> update [B, N, C]; the output projection starts at zero.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_k = nn.LayerNorm(dim)
        self.norm_v = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.out = nn.Linear(dim, dim)
        self.gate = nn.Parameter(torch.ones(()))
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        fused, _ = self.attn(self.norm_q(query), self.norm_k(context), self.norm_v(context), need_weights=False)
        return self.gate * self.out(fused)


class HLAttn(nn.Module):
    """Hierarchical gated cross-attention over the experts' residuals (see the module docstring).

    Args:
        dim: block width C.
        levels: the level names in the order the residuals are passed (the LoRA's level order).
        fusion_order: fusion order, lowest level first; defaults to pixel, patch, image (those present).
        kind: ``"token"`` (light, default) or ``"spatial"`` (reference-style, full width).
        width: attention width of the token kind.
        num_heads: attention heads.
        init: ``"sum"`` (start at frozen encoder + summed expert contributions) or ``"base"`` (frozen encoder;
            adds a learnable output scale ``gamma`` that starts at 0).
    """

    def __init__(
        self,
        dim: int,
        levels: Sequence[str],
        fusion_order: Sequence[str] | None = None,
        kind: str = "token",
        width: int = 64,
        num_heads: int = 4,
        init: str = "sum",
    ) -> None:
        super().__init__()
        self.levels = tuple(levels)
        order = tuple(fusion_order) if fusion_order else self._default_order(self.levels)
        if sorted(order) != sorted(self.levels):
            raise ValueError(f"fusion_order {list(order)} must be a permutation of the levels {list(self.levels)}.")
        if kind not in ("token", "spatial"):
            raise ValueError(f"HL-Attn kind must be 'token' or 'spatial', got {kind!r}.")
        if init not in ("sum", "base"):
            raise ValueError(f"HL-Attn init must be 'sum' or 'base', got {init!r}.")
        self.kind = kind
        self.order_index = [self.levels.index(level) for level in order]
        if kind == "token":
            self.down = nn.Linear(dim, width)
            self.norm = nn.LayerNorm(width)
            self.cross = nn.ModuleList([LevelAttention(width, num_heads) for _ in order[1:]])
            self.up = nn.Linear(width, dim)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)
        else:
            self.cross = nn.ModuleList([SpatialCrossAttention(dim, num_heads) for _ in order[1:]])
        if init == "base":
            self.gamma = nn.Parameter(torch.zeros(()))
        else:
            self.register_parameter("gamma", None)

    @staticmethod
    def _default_order(levels: tuple[str, ...]) -> tuple[str, ...]:
        known = [level for level in DEFAULT_FUSION_ORDER if level in levels]
        return tuple(known + [level for level in levels if level not in known])

    def forward(self, residuals: torch.Tensor) -> torch.Tensor:
        """residuals [E, B, H, W, C] (in ``levels`` order) -> fused contribution [B, H, W, C]."""
        fused = self._fuse_tokens(residuals) if self.kind == "token" else self._fuse_spatial(residuals)
        return fused if self.gamma is None else self.gamma * fused

    def _fuse_tokens(self, residuals: torch.Tensor) -> torch.Tensor:
        """Light kind: one shared projection to width w, the hierarchy at width w, one projection back."""
        reduced = self.norm(self.down(residuals))  # [E, B, H, W, w]
        levels = [reduced[i].flatten(0, -2) for i in self.order_index]  # each [T, w]
        states, updates = [levels[0]], []
        for query, unit in zip(levels[1:], self.cross, strict=True):
            updates.append(unit(query, [*states, query]))
            states.append(query + updates[-1])
        fused = residuals.sum(0)
        if updates:
            fused = fused + self.up(sum(updates[1:], updates[0])).unflatten(0, residuals.shape[1:-1])
        return fused

    def _fuse_spatial(self, residuals: torch.Tensor) -> torch.Tensor:
        """Reference-style kind: full-width spatial cross-attention, query a level, context the lower state."""
        levels = [residuals[i].flatten(1, -2) for i in self.order_index]  # each [B, N, C]
        states = [levels[0]]
        for query, unit in zip(levels[1:], self.cross, strict=True):
            states.append(query + unit(query, states[-1]))
        return sum(states[1:], states[0]).unflatten(1, residuals.shape[2:-1])


def build_fusion(
    fusion: str,
    dim: int,
    levels: Sequence[str],
    block_heads: int,
    fusion_order: Sequence[str] | None = None,
    width: int = 64,
    num_heads: int = 4,
    init: str = "sum",
) -> nn.Module:
    """Fusion module for one block: ``"hl_attn"`` (light token kind), ``"hl_attn_spatial"`` or ``"sum"``."""
    if fusion == "sum":
        return SumFusion(levels)
    if fusion == "hl_attn":
        return HLAttn(dim, levels, fusion_order, "token", width, num_heads, init)
    if fusion == "hl_attn_spatial":
        return HLAttn(dim, levels, fusion_order, "spatial", dim, block_heads, init)
    raise ValueError(f"Unknown fusion {fusion!r}; choose 'hl_attn', 'hl_attn_spatial' or 'sum'.")
