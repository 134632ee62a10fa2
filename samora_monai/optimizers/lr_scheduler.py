"""Per-iteration learning-rate schedules: linear warmup then poly (SAMora/SAMed) or cosine decay."""

from __future__ import annotations

import math

from monai.utils import look_up_option
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["LR_SCHEDULES", "warmup_lr", "warmup_poly_lr"]

LR_SCHEDULES = ("poly", "cosine")


def warmup_lr(
    optimizer: Optimizer, max_iters: int, warmup_iters: int = 25, schedule: str = "poly", power: float = 0.9
) -> LambdaLR:
    """Per-iteration schedule: ``lr = base * (it + 1) / warmup_iters`` for ``it < warmup_iters``, then a decay to 0
    at ``max_iters``, ``"poly"``: ``base * (1 - t) ** power`` (SAMora/SAMed, with the warmup subtracted from the
    decay span) or ``"cosine"``: ``base * (1 + cos(pi t)) / 2``, ``t = (it - warmup_iters) / (max_iters -
    warmup_iters)``. Step it once per iteration (``LrScheduleHandler(epoch_level=False)``).
    """
    schedule = look_up_option(schedule, LR_SCHEDULES)
    if max_iters < 1:
        raise ValueError(f"max_iters must be >= 1, got {max_iters}")
    warmup_iters = max(0, min(int(warmup_iters), int(max_iters) - 1))

    def factor(it: int) -> float:
        if it < warmup_iters:
            return (it + 1) / warmup_iters
        progress = min(1.0, (it - warmup_iters) / (max_iters - warmup_iters))
        if schedule == "poly":
            return (1.0 - progress) ** power
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def warmup_poly_lr(optimizer: Optimizer, max_iters: int, warmup_iters: int = 25, power: float = 0.9) -> LambdaLR:
    """:func:`warmup_lr` with the poly decay (the stage-2 default)."""
    return warmup_lr(optimizer, max_iters, warmup_iters, "poly", power)
