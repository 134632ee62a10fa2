"""Hierarchical LoRA: independent low-rank query/value experts, one per level of detail."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["LoRAExpert", "HierarchicalLoRA", "DEFAULT_LEVELS", "lora_block_indexes"]

DEFAULT_LEVELS = ("image", "patch", "pixel")


def lora_block_indexes(lora_blocks: Sequence[int] | None, depth: int) -> tuple[int, ...]:
    """The sorted indexes of the encoder blocks that carry experts (``None``: all ``depth`` blocks); ``ValueError``
    for an index outside ``0..depth-1``."""
    blocks = tuple(range(depth)) if lora_blocks is None else tuple(sorted(lora_blocks))
    if any(i < 0 or i >= depth for i in blocks):
        raise ValueError(f"lora_blocks {list(blocks)} out of range for {depth} blocks.")
    return blocks


class LoRAExpert(nn.Module):
    """Rank-``r`` deltas for the query and value slices of a fused ``qkv`` projection.

    ``delta_q = scale * B_q A_q x`` and ``delta_v = scale * B_v A_v x``; ``A`` uses PyTorch's Linear
    initialisation, ``B`` starts at zero so a new expert is an exact no-op. ``scale`` is a learnable scalar
    (initialised to 1) trained with the expert in stage 1. ``out_dim`` is the width of the q/v slices
    (``qkv.out_features // 3``; defaults to ``dim``, it differs at Hiera's stage-changing blocks).
    """

    def __init__(self, dim: int, rank: int, out_dim: int | None = None) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}.")
        self.rank = rank
        self.a_q = nn.Linear(dim, rank, bias=False)
        out_dim = dim if out_dim is None else out_dim
        self.b_q = nn.Linear(rank, out_dim, bias=False)
        self.a_v = nn.Linear(dim, rank, bias=False)
        self.b_v = nn.Linear(rank, out_dim, bias=False)
        self.scale = nn.Parameter(torch.ones(()))
        nn.init.zeros_(self.b_q.weight)
        nn.init.zeros_(self.b_v.weight)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [..., C] -> (delta_q, delta_v), each [..., out_dim]."""
        return self.scale * self.b_q(self.a_q(x)), self.scale * self.b_v(self.a_v(x))


class HierarchicalLoRA(nn.Module):
    """One independent :class:`LoRAExpert` per level for one attention block.

    Args:
        dim: width of the block (C).
        rank: LoRA rank r.
        levels: level names, e.g. ``("image", "patch", "pixel")``.
        out_dim: width of the q/v deltas (default ``dim``).
    """

    def __init__(
        self, dim: int, rank: int, levels: Sequence[str] = DEFAULT_LEVELS, out_dim: int | None = None
    ) -> None:
        super().__init__()
        if len(set(levels)) != len(levels) or not levels:
            raise ValueError(f"levels must be a non-empty list of distinct names, got {list(levels)}.")
        self.levels = tuple(levels)
        self.experts = nn.ModuleDict({level: LoRAExpert(dim, rank, out_dim) for level in self.levels})

    def delta(self, x: torch.Tensor, level: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Deltas of one expert: x [..., C] -> (delta_q, delta_v), each [..., C]."""
        return self.experts[level](x)

    def low_rank_factors(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Factors of every expert's deltas, ``delta_q[e] = u_q[e] @ b_q[e].T`` (same for v), in one matmul.

        x [..., C] -> (u_q [E, ..., r], b_q [E, C', r], u_v [E, ..., r], b_v [E, C', r]), C' = ``out_dim``;
        ``b`` includes the scale.
        """
        experts = [self.experts[level] for level in self.levels]
        down = torch.cat([torch.cat([e.a_q.weight, e.a_v.weight]) for e in experts])  # [E*2r, C]
        u = torch.nn.functional.linear(x, down).unflatten(-1, (len(experts), 2, experts[0].rank))  # [..., E, 2, r]
        u = u.movedim(-3, 0)  # [E, ..., 2, r]
        b_q = torch.stack([e.scale * e.b_q.weight for e in experts])
        b_v = torch.stack([e.scale * e.b_v.weight for e in experts])
        return u[..., 0, :], b_q, u[..., 1, :], b_v
