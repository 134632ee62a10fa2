"""Resumable checkpoints: the saver (atomic) and loader of the ``latest`` checkpoint, trainer state included."""

from __future__ import annotations

from ignite.engine import Engine
from monai.handlers import CheckpointLoader

from samora_monai.handlers.atomic_checkpoint import AtomicCheckpointSaver

__all__ = ["ResumeCheckpointLoader", "ResumeCheckpointSaver"]


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
