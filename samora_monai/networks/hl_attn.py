"""HL-Attn: hierarchical fusion of the LoRA experts' contributions inside one encoder block.

Each expert ``e`` changes the block's attention output (after the output projection, as in the SAMora reference)
by a residual ``r_e = proj(attn(q + dq_e, k, v + dv_e)) - proj(attn(q, k, v))``, computed on the block's
(window-partitioned) token grid. A fusion maps the residuals [E, B, H, W, C] to the block's expert contribution.

``"hl_attn"`` (default, :class:`HLAttn`) is the reference code's HL-Attn. With the fusion order o (lowest level
first; pixel, patch, image by default) and one cross-attention unit CAF per step (:class:`CrossAttentionUnit`):

    s_0 = r_{o_0}
    s_i = r_{o_i} + g_i * (CAF_i(query=r_{o_i}, key/value=s_{i-1}) - r_{o_i})         i = 1 .. L-1
    E   = LayerNorm(s_{L-1})                                                          (init="reference")
    E   = sum_e r_e + LayerNorm(s_{L-1}),  LayerNorm affine = 0 at start            (init="sum", default)
    E   = LayerNorm(s_{L-1}),              LayerNorm affine = 0 at start            (init="base")

``init="reference"`` is the reference exactly: its final LayerNorm gives E unit variance per token from step 0,
however small the experts' residuals, which perturbs the frozen encoder before any training. Our one deliberate
deviation is the default ``init="sum"``: the final LayerNorm's weight and bias start at 0 and the summed residuals
are added, so step 0 reproduces the frozen encoder plus the experts' summed contributions (the ``sum``
ablation); ``init="base"`` starts at the frozen encoder alone. All three have the same parameters (about 71.0M
for ViT-B: 5,916,674 per block).

``"hl_attn_lite"`` (:class:`HLAttnLite`) is this project's own cheaper variant, not the paper's: per token, the
levels attend to each other at a reduced width ``w`` (no mixing across spatial tokens), about 1.6M parameters
for ViT-B at ``w = 64``. ``"sum"`` (:class:`SumFusion`) is the ablation ``E = sum_e r_e``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from monai.utils import look_up_option
from torch import nn

__all__ = [
    "FUSIONS",
    "FUSION_INITS",
    "CrossAttentionUnit",
    "HLAttn",
    "HLAttnLite",
    "LevelAttention",
    "SumFusion",
    "build_fusion",
    "fusion_factory",
]

DEFAULT_FUSION_ORDER = ("pixel", "patch", "image")
FUSIONS = ("hl_attn", "hl_attn_lite", "sum")
FUSION_INITS = ("sum", "base", "reference")


def _fusion_order(levels: tuple[str, ...], fusion_order: Sequence[str] | None) -> list[int]:
    """Indexes into ``levels`` in fusion order (lowest level first; default pixel, patch, image, then others)."""
    if fusion_order:
        order = tuple(fusion_order)
    else:
        known = [level for level in DEFAULT_FUSION_ORDER if level in levels]
        order = tuple(known + [level for level in levels if level not in known])
    if sorted(order) != sorted(levels):
        raise ValueError(f"fusion_order {list(order)} must be a permutation of the levels {list(levels)}.")
    return [levels.index(level) for level in order]


class SumFusion(nn.Module):
    """Ablation: ``E = sum_e r_e``. Input [E, B, H, W, C] -> [B, H, W, C]."""

    def __init__(self, levels: Sequence[str]) -> None:
        super().__init__()
        self.levels = tuple(levels)

    def forward(self, residuals: torch.Tensor) -> torch.Tensor:
        return residuals.sum(0)

    def project_and_fuse(self, base: torch.Tensor, diffs: torch.Tensor, proj: nn.Linear) -> torch.Tensor:
        """``proj(base) + self(W diffs)`` = ``proj(base + sum_e diffs_e)``: one projection instead of E + 1."""
        return proj(base + diffs.sum(0))


class CrossAttentionUnit(nn.Module):
    """The reference's cross-attention fusion unit across the spatial tokens, at full width.

    ``query`` [B, N, C] and ``context`` [B, N, C] -> ``query + Linear(MHA(LN_q(query), LN_k(context),
    LN_v(context)))`` [B, N, C], with ``nn.MultiheadAttention`` (biases on, dropout 0, batch first).
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_k = nn.LayerNorm(dim)
        self.norm_v = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=0.0, bias=True, batch_first=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        attended, _ = self.attn(self.norm_q(query), self.norm_k(context), self.norm_v(context), need_weights=False)
        return query + self.proj(attended)


class HLAttn(nn.Module):
    """The reference HL-Attn (see the module docstring): gated cross-attention across the spatial tokens.

    Args:
        dim: block width C.
        levels: the level names in the order the residuals are passed (the LoRA's level order).
        num_heads: attention heads (the block's head count in the reference).
        fusion_order: fusion order, lowest level first; any permutation of ``levels``
            (default pixel, patch, image, those present).
        init: ``"sum"`` (default, identity start: encoder + summed expert contributions), ``"base"`` (encoder
            alone) or ``"reference"`` (the reference's initialisation, final LayerNorm at weight 1, bias 0).
    """

    def __init__(
        self,
        dim: int,
        levels: Sequence[str],
        num_heads: int,
        fusion_order: Sequence[str] | None = None,
        init: str = "sum",
    ) -> None:
        super().__init__()
        self.levels = tuple(levels)
        self.order_index = _fusion_order(self.levels, fusion_order)
        self.init = look_up_option(init, FUSION_INITS)
        self.units = nn.ModuleList([CrossAttentionUnit(dim, num_heads) for _ in self.order_index[1:]])
        self.gates = nn.Parameter(torch.ones(len(self.units)))  # one learnable scalar per step, 1.0 at start
        self.norm = nn.LayerNorm(dim)
        if self.init != "reference":  # zero-initialised output path
            nn.init.zeros_(self.norm.weight)
            nn.init.zeros_(self.norm.bias)

    def forward(self, residuals: torch.Tensor) -> torch.Tensor:
        """residuals [E, B, H, W, C] (in ``levels`` order) -> fused contribution [B, H, W, C]."""
        levels = [residuals[i].flatten(1, -2) for i in self.order_index]  # each [B, N, C]
        state = levels[0]
        for gate, query, unit in zip(self.gates, levels[1:], self.units, strict=True):
            state = query + gate * (unit(query, state) - query)
        fused = self.norm(state).unflatten(1, residuals.shape[2:-1])
        return residuals.sum(0) + fused if self.init == "sum" else fused


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
        weights = torch.einsum("thd,tmhd->thm", q, k).mul(q.shape[-1] ** -0.5).softmax(-1, dtype=torch.float32)
        weights = weights.to(v.dtype)  # float32 softmax, also under autocast
        attended = torch.einsum("thm,tmhd->thd", weights, v).flatten(-2)
        return self.out(torch.sigmoid(self.gate(query)) * attended)


class HLAttnLite(nn.Module):
    """This project's light HL-Attn: token-wise attention across the levels at a reduced width (no spatial mixing).

    The residuals are projected once to width ``w`` (shared projection and LayerNorm); per token, each level
    attends, with a sigmoid gate, across ``[s_0 .. s_{i-1}, z_i]``; the summed updates return to width C through
    one zero-initialised projection and are added to ``sum_e r_e``. Cost O(L^2 w) per token plus two ``C x w``
    projections.

    Args:
        dim: block width C.
        levels: the level names in the order the residuals are passed.
        fusion_order: fusion order, lowest level first (default pixel, patch, image).
        width: attention width ``w``.
        num_heads: attention heads at width ``w``.
        init: ``"sum"`` (encoder + summed expert contributions) or ``"base"`` (encoder alone: a learnable output
            scale ``gamma`` starts at 0).
    """

    def __init__(
        self,
        dim: int,
        levels: Sequence[str],
        fusion_order: Sequence[str] | None = None,
        width: int = 64,
        num_heads: int = 4,
        init: str = "sum",
    ) -> None:
        super().__init__()
        self.levels = tuple(levels)
        self.order_index = _fusion_order(self.levels, fusion_order)
        if look_up_option(init, FUSION_INITS) == "reference":
            raise ValueError("fusion 'hl_attn_lite' has no reference initialisation; use fusion_init 'sum' or 'base'.")
        self.down = nn.Linear(dim, width)
        self.norm = nn.LayerNorm(width)
        self.cross = nn.ModuleList([LevelAttention(width, num_heads) for _ in self.order_index[1:]])
        self.up = nn.Linear(width, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.gamma = nn.Parameter(torch.zeros(())) if init == "base" else None

    def _updates(self, down: torch.Tensor) -> torch.Tensor | None:
        """``down(r)`` [E, B, H, W, w] -> summed level updates [B, H, W, w] (``None`` for a single level)."""
        levels = [t.flatten(0, -2) for t in self.norm(down).unbind(0)]
        levels = [levels[i] for i in self.order_index]  # each [T, w]
        states, updates = [levels[0]], []
        for query, unit in zip(levels[1:], self.cross, strict=True):
            updates.append(unit(query, [*states, query]))
            states.append(query + updates[-1])
        return sum(updates[1:], updates[0]).unflatten(0, down.shape[1:-1]) if updates else None

    def forward(self, residuals: torch.Tensor) -> torch.Tensor:
        """residuals [E, B, H, W, C] (in ``levels`` order) -> fused contribution [B, H, W, C]."""
        fused = residuals.sum(0)
        updates = self._updates(self.down(residuals))
        if updates is not None:
            fused = fused + self.up(updates)
        return fused if self.gamma is None else self.gamma * fused

    def project_and_fuse(self, base: torch.Tensor, diffs: torch.Tensor, proj: nn.Linear) -> torch.Tensor:
        """``proj(base) + self(W diffs)`` for the block's output projection ``proj`` (weight W), with one C x C
        projection instead of E + 1: ``sum_e r_e = W sum_e diffs_e`` joins ``proj(base)``, and
        ``down(r_e) = (W_down W) diffs_e + b_down``. base [B, H, W, C], diffs [E, B, H, W, C] -> [B, H, W, C]."""
        gamma = 1.0 if self.gamma is None else self.gamma
        out = proj(base + gamma * diffs.sum(0))
        updates = self._updates(F.linear(diffs, self.down.weight @ proj.weight, self.down.bias))
        return out if updates is None else out + gamma * self.up(updates)


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
    """Fusion module for one block: ``"hl_attn"`` (reference, ``block_heads`` heads at width ``dim``),
    ``"hl_attn_lite"`` (this project's light variant, ``num_heads`` heads at ``width``) or ``"sum"``."""
    fusion = look_up_option(fusion, FUSIONS)
    if fusion == "sum":
        return SumFusion(levels)
    if fusion == "hl_attn":
        return HLAttn(dim, levels, block_heads, fusion_order, init)
    return HLAttnLite(dim, levels, fusion_order, width, num_heads, init)


def fusion_factory(
    fusion: str = "hl_attn",
    fusion_order: Sequence[str] | None = None,
    width: int = 64,
    num_heads: int = 4,
    init: str = "sum",
) -> Callable[[int, Sequence[str], int], nn.Module]:
    """``make(dim, levels, block_heads)``: :func:`build_fusion` with these network-wide settings, for the backbone
    builders to call once per block that carries experts."""
    return partial(build_fusion, fusion, fusion_order=fusion_order, width=width, num_heads=num_heads, init=init)
