"""Stop training at the first non-finite loss, naming the iteration and the files of the batch."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.engines import Workflow
from monai.engines.utils import IterationEvents
from monai.utils import ensure_tuple

__all__ = ["StopOnNonFiniteLoss", "batch_sources"]


def batch_sources(batch: Any, keys: Sequence[str] = ("source", "image")) -> list[str]:
    """The file names a collated batch carries: its ``source`` strings (slice datasets), else the ``filename_or_obj``
    of its ``image`` metadata; empty when the batch names none."""
    if not isinstance(batch, dict):
        return []
    for key in keys:
        value = batch.get(key)
        if value is None:
            continue
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
            return list(value)
        meta = getattr(value, "meta", None) or {}
        names = meta.get("filename_or_obj")
        if names is not None:
            return [str(n) for n in ensure_tuple(names)]
    return []


def _loss(output: Any) -> Any:
    return output.get("loss") if isinstance(output, dict) else output


class StopOnNonFiniteLoss:
    """Raise ``FloatingPointError`` as soon as the training loss is NaN or infinite, before the optimiser step.

    The run stops there, so the handlers that would write ``model.pt`` or a resume checkpoint never see the bad
    weights. The message names the epoch, the iteration and the batch's files (``source`` of
    :class:`~samora_monai.data.VolumeSliceDataset` / ``UnlabeledSliceDataset`` items, or the image file names).

    Args:
        output_transform: ``engine.state.output`` -> loss (a number or a tensor); default: ``output["loss"]``.
    """

    def __init__(self, output_transform: Callable[[Any], Any] = _loss) -> None:
        self.output_transform = output_transform

    def attach(self, engine: Engine) -> None:
        # MONAI workflows fire LOSS_COMPLETED before backward and the optimiser step; plain engines only complete
        event = IterationEvents.LOSS_COMPLETED if isinstance(engine, Workflow) else Events.ITERATION_COMPLETED
        engine.add_event_handler(event, self)

    def __call__(self, engine: Engine) -> None:
        loss = self.output_transform(engine.state.output)
        value = float(loss.detach().float().mean()) if isinstance(loss, torch.Tensor) else float(loss)
        if math.isfinite(value):
            return
        files = sorted(set(batch_sources(engine.state.batch)))
        named = "; ".join(files) if files else "<the batch names no files>"
        raise FloatingPointError(
            f"non-finite training loss ({value}) at epoch {engine.state.epoch}, iteration {engine.state.iteration}; "
            f"batch files: {named}; check these inputs for NaN/inf values or lower the learning rate "
            "(the run stopped before the optimiser step, no checkpoint of this state was written)"
        )
