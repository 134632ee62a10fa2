"""Resumable checkpoints: the saver (atomic) and loader of the ``latest`` checkpoint, trainer state included."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ignite.engine import Engine
from monai.handlers import CheckpointLoader
from torch import nn

from samora_monai.handlers.atomic_checkpoint import AtomicCheckpointSaver

__all__ = ["ResumeCheckpointLoader", "ResumeCheckpointSaver", "resume_state"]


def resume_state(model: nn.Module | Mapping[str, Any], optimizer: Any, lr_scheduler: Any, **extra: Any) -> dict:
    """What a resume checkpoint holds: ``model`` (a network, saved as ``"model"``, or a mapping of named modules), the
    optimiser and LR schedule, and the ``extra`` objects that are not None (e.g. ``best_model``: the best-model
    saver, whose best score so far must survive a resume; None when model selection is off)."""
    modules = {"model": model} if isinstance(model, nn.Module) else dict(model)
    return {**modules, "optimizer": optimizer, "lr_scheduler": lr_scheduler,
            **{k: v for k, v in extra.items() if v is not None}}


class ResumeCheckpointLoader(CheckpointLoader):
    """``CheckpointLoader`` that also restores the state of the engine it is attached to (key ``"trainer"``), so a
    config can resume training without the circular reference ``trainer -> handlers -> loader -> trainer``."""

    def attach(self, engine: Engine) -> None:
        self.load_dict = {**self.load_dict, "trainer": engine}
        super().attach(engine)


class ResumeCheckpointSaver(AtomicCheckpointSaver):
    """:class:`AtomicCheckpointSaver` that also saves the state of the engine it is attached to (key ``"trainer"``);
    use with ``save_interval``, ``n_saved=1`` and ``file_prefix="latest"`` for the checkpoint
    :func:`~samora_monai.engines.latest_checkpoint` finds (older ones are pruned after each save)."""

    def attach(self, engine: Engine) -> None:
        self.save_dict["trainer"] = engine  # the ignite Checkpoint objects hold this same dict
        super().attach(engine)
