"""Hierarchical LoRA: independent low-rank query/value experts, one per level of detail."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["LoRAExpert", "HierarchicalLoRA", "DEFAULT_LEVELS"]

DEFAULT_LEVELS = ("image", "patch", "pixel")


class LoRAExpert(nn.Module):
    """Rank-``r`` deltas for the query and value slices of a fused ``qkv`` projection.

    ``delta_q = scale * B_q A_q x`` and ``delta_v = scale * B_v A_v x``; ``A`` uses PyTorch's Linear
    initialisation, ``B`` starts at zero so a new expert is an exact no-op. ``scale`` is a learnable scalar
    (initialised to 1) trained with the expert in stage 1.
    """

    def __init__(self, dim: int, rank: int) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}.")
        self.rank = rank
        self.a_q = nn.Linear(dim, rank, bias=False)
        self.b_q = nn.Linear(rank, dim, bias=False)
        self.a_v = nn.Linear(dim, rank, bias=False)
        self.b_v = nn.Linear(rank, dim, bias=False)
        self.scale = nn.Parameter(torch.ones(()))
        nn.init.zeros_(self.b_q.weight)
        nn.init.zeros_(self.b_v.weight)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [..., C] -> (delta_q, delta_v), each [..., C]."""
        return self.scale * self.b_q(self.a_q(x)), self.scale * self.b_v(self.a_v(x))


class HierarchicalLoRA(nn.Module):
    """One independent :class:`LoRAExpert` per level for one attention block.

    Args:
        dim: width of the block (C).
        rank: LoRA rank r.
        levels: level names, e.g. ``("image", "patch", "pixel")``.
    """

    def __init__(self, dim: int, rank: int, levels: Sequence[str] = DEFAULT_LEVELS) -> None:
        super().__init__()
        if len(set(levels)) != len(levels) or not levels:
            raise ValueError(f"levels must be a non-empty list of distinct names, got {list(levels)}.")
        self.levels = tuple(levels)
        self.experts = nn.ModuleDict({level: LoRAExpert(dim, rank) for level in self.levels})

    def delta(self, x: torch.Tensor, level: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Deltas of one expert: x [..., C] -> (delta_q, delta_v), each [..., C]."""
        return self.experts[level](x)

    def deltas(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Deltas of every expert in one batched call: x [..., C] -> (delta_q, delta_v), each [E, ..., C].

        The down-projections of all experts run as one matmul; the up-projections as one einsum.
        """
        experts = [self.experts[level] for level in self.levels]
        rank = experts[0].rank
        down = torch.cat([torch.cat([e.a_q.weight, e.a_v.weight]) for e in experts])  # [E*2r, C]
        h = torch.nn.functional.linear(x, down).unflatten(-1, (len(experts), 2, rank))  # [..., E, 2, r]
        up_q = torch.stack([e.scale * e.b_q.weight for e in experts])  # [E, C, r]
        up_v = torch.stack([e.scale * e.b_v.weight for e in experts])
        delta_q = torch.einsum("...er,ecr->e...c", h[..., 0, :], up_q)
        delta_v = torch.einsum("...er,ecr->e...c", h[..., 1, :], up_v)
        return delta_q, delta_v
