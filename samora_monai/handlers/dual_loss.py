"""Ignite handler that drives :class:`~samora_monai.losses.DualStageLoss`'s schedule with the trainer's epoch."""

from __future__ import annotations

from ignite.engine import Engine, Events

from samora_monai.losses.dual import DualStageLoss

__all__ = ["DualLossEpochHandler"]


class DualLossEpochHandler:
    """Set ``loss.epoch`` to the trainer's 0-based epoch when each epoch starts (resumed runs included), so the
    stage-2 weight follows H-SAM's ``0.6 ** (0.99 ** epoch)``."""

    def __init__(self, loss: DualStageLoss) -> None:
        if not isinstance(loss, DualStageLoss):
            raise TypeError(f"DualLossEpochHandler needs a DualStageLoss, got {type(loss).__name__}")
        self.loss = loss

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        self.loss.epoch = engine.state.epoch - 1
