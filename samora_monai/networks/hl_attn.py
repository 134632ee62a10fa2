"""HL-Attn: hierarchical fusion of the LoRA experts' contributions inside one encoder block.

Each expert ``e`` changes the block's attention output (before the output projection) by a residual
``r_e = attn(q + dq_e, k, v + dv_e) - attn(q, k, v)``. HL-Attn fuses these residuals, lowest level first
(by default pixel, then patch, then image):

    s_0 = r_{o_0}
    s_i = r_{o_i} + g_i * CrossAttn_i(query=r_{o_i}, context=s_{<i})        i = 1 .. L-1
    E   = gamma * sum_i s_i

The cross-attention output projections start at zero, so at step 0 ``E = gamma * sum_e r_e``: with
``init="sum"`` (gamma = 1) the block reproduces the frozen encoder plus the experts' summed contributions,
with ``init="base"`` (gamma = 0) the frozen encoder alone. Two cross-attention kinds are available:

- ``"token"`` (default, light): per token, attention across the level states ``[s_0 .. s_{i-1}, r_{o_i}]``
  at a reduced width; cost O(L^2) per token.
- ``"spatial"`` (reference-style): full-width multi-head attention across the spatial tokens, query the
  level's residual, key/value the fused lower state; about 71M parameters for ViT-B.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["HLAttn", "SumFusion", "TokenLevelCrossAttention", "SpatialCrossAttention", "build_fusion"]

DEFAULT_FUSION_ORDER = ("pixel", "patch", "image")


class SumFusion(nn.Module):
    """Ablation: ``E = sum_e r_e``. Input [E, B, H, W, C] -> [B, H, W, C]."""

    def __init__(self, levels: Sequence[str]) -> None:
        super().__init__()
        self.levels = tuple(levels)

    def forward(self, residuals: torch.Tensor) -> torch.Tensor:
        return residuals.sum(0)


class TokenLevelCrossAttention(nn.Module):
    """Per-token attention of one level over a stack of level states, at a reduced width.

    ``query`` [T, C] and ``context`` [T, M, C] -> update [T, C]; the output projection starts at zero.
    """

    def __init__(self, dim: int, width: int, num_heads: int) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"fusion width {width} must be divisible by fusion heads {num_heads}.")
        self.num_heads = num_heads
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, width)
        self.to_kv = nn.Linear(dim, 2 * width)
        self.out = nn.Linear(width, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q = self.to_q(self.norm_q(query)).unflatten(-1, (self.num_heads, -1))  # [T, h, d]
        k, v = self.to_kv(self.norm_kv(context)).unflatten(-1, (2, self.num_heads, -1)).unbind(-3)  # [T, M, h, d]
        weights = torch.einsum("thd,tmhd->thm", q, k).mul(q.shape[-1] ** -0.5).softmax(-1)
        return self.out(torch.einsum("thm,tmhd->thd", weights, v).flatten(-2))


class SpatialCrossAttention(nn.Module):
    """Reference-style cross-attention across spatial tokens at full width.

    ``query`` [B, N, C] and ``context`` [B, N, C] -> update [B, N, C]; the output projection starts at zero.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_k = nn.LayerNorm(dim)
        self.norm_v = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.out = nn.Linear(dim, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        fused, _ = self.attn(self.norm_q(query), self.norm_k(context), self.norm_v(context), need_weights=False)
        return self.out(fused)


class HLAttn(nn.Module):
    """Hierarchical gated cross-attention over the experts' residuals (see the module docstring).

    Args:
        dim: block width C.
        levels: the level names in the order the residuals are passed (the LoRA's level order).
        fusion_order: fusion order, lowest level first; defaults to pixel, patch, image (those present).
        kind: ``"token"`` (light, default) or ``"spatial"`` (reference-style, full width).
        width: attention width of the token kind.
        num_heads: attention heads.
        init: ``"sum"`` (start at frozen encoder + summed expert contributions) or ``"base"`` (frozen encoder).
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
            units = [TokenLevelCrossAttention(dim, width, num_heads) for _ in order[1:]]
        else:
            units = [SpatialCrossAttention(dim, num_heads) for _ in order[1:]]
        self.cross = nn.ModuleList(units)
        self.gates = nn.Parameter(torch.ones(len(units)))
        self.gamma = nn.Parameter(torch.tensor(1.0 if init == "sum" else 0.0))

    @staticmethod
    def _default_order(levels: tuple[str, ...]) -> tuple[str, ...]:
        known = [level for level in DEFAULT_FUSION_ORDER if level in levels]
        return tuple(known + [level for level in levels if level not in known])

    def forward(self, residuals: torch.Tensor) -> torch.Tensor:
        """residuals [E, B, H, W, C] (in ``levels`` order) -> fused contribution [B, H, W, C]."""
        ordered = residuals[self.order_index]
        spatial_shape = ordered.shape[1:-1]
        tokens = ordered.flatten(1, -2)  # [E, B*H*W, C]
        states = [tokens[0]]
        for i, unit in enumerate(self.cross, start=1):
            query = tokens[i]
            if self.kind == "token":
                update = unit(query, torch.stack(states + [query], dim=1))
            else:
                batch = spatial_shape[0]
                update = unit(query.unflatten(0, (batch, -1)), states[-1].unflatten(0, (batch, -1))).flatten(0, 1)
            states.append(query + self.gates[i - 1] * update)
        return (self.gamma * torch.stack(states).sum(0)).unflatten(0, spatial_shape)


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
