"""Engine-output helpers for handler arguments in the configs."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from ignite.engine import Engine

__all__ = ["engine_loss", "log_every"]


def engine_loss(output: Mapping[str, torch.Tensor]) -> float:
    """The scalar loss of a :class:`SelfSupervisedTrainer` iteration output (for Stats/TensorBoard handlers)."""
    return float(output["loss"])


def log_every(interval: int) -> Callable[[Engine, int], bool]:
    """Ignite event filter: true at iteration 1 and every ``interval``-th iteration."""
    interval = max(1, int(interval))
    return lambda engine, event: event == 1 or event % interval == 0
