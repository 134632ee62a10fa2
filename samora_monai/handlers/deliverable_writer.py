"""Handlers that write a stage-1 deliverable when training completes: :class:`ExpertWriter`
(``models/experts/<level>.pt``) and :class:`TeacherWriter` (``models/teachers/<level>.pt``), each with the loss
history (kept in the resume checkpoints) in its training summary."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from ignite.engine import Engine, Events
from torch import nn

from samora_monai.handlers.utils import engine_loss
from samora_monai.networks import SamoraNet, save_expert
from samora_monai.teachers import save_teacher

__all__ = ["ExpertWriter", "TeacherWriter"]

logger = logging.getLogger(__name__)


class _DeliverableWriter:
    """Record the loss at iteration 1 and every ``log_interval``-th iteration (and the last), and on completion
    write the deliverable with a training summary. The history survives a restart: include this handler in the
    resume checkpoint's ``save_dict``/``load_dict`` (it has ``state_dict``/``load_state_dict``) and list it after
    the checkpoint loader so that its run record starts from the restored counters.

    Args:
        path: the deliverable file.
        log_interval: loss recording interval (iterations), the StatsHandler's.
        info: extra plain values recorded in the summary (data list, hyper-parameters, ...).
    """

    def __init__(self, path: str | os.PathLike, log_interval: int = 10, info: Mapping[str, Any] | None = None) -> None:
        self.path = os.fspath(path)
        self.log_interval = max(1, int(log_interval))
        self.info = {k: v for k, v in (info or {}).items()}
        self.history: list[list[float]] = []
        self.runs: list[dict[str, int]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.record)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def state_dict(self) -> dict[str, Any]:
        return {"history": [list(h) for h in self.history], "runs": [dict(r) for r in self.runs]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.history = [list(h) for h in state.get("history", [])]
        self.runs = [dict(r) for r in state.get("runs", [])]

    def started(self, engine: Engine) -> None:
        self.runs.append({"start_iteration": engine.state.iteration, "start_epoch": engine.state.epoch})
        if engine.state.iteration:
            logger.info("resumed at epoch %d, iteration %d", engine.state.epoch, engine.state.iteration)

    def record(self, engine: Engine) -> None:
        it = engine.state.iteration
        self.runs[-1].update(end_iteration=it, end_epoch=engine.state.epoch)
        last = it == engine.state.max_epochs * engine.state.epoch_length
        if it == 1 or it % self.log_interval == 0 or last:
            self.history.append([it, engine_loss(engine.state.output)])

    def summary(self, engine: Engine) -> dict[str, Any]:
        dataset = getattr(getattr(engine, "data_loader", None), "dataset", None)
        return {
            "first_loss": self.history[0][1] if self.history else None,
            "first_iteration": int(self.history[0][0]) if self.history else None,
            "last_loss": self.history[-1][1] if self.history else None,
            "last_iteration": int(self.history[-1][0]) if self.history else None,
            "iterations": engine.state.iteration,
            "epochs": engine.state.epoch,
            "data_size": len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None,
            "batch_size": getattr(getattr(engine, "data_loader", None), "batch_size", None),
            "loss_history": self.history,
            "runs": self.runs,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **self.info,
        }

    def completed(self, engine: Engine) -> None:
        summary = self.summary(engine)
        self.write(summary)
        logger.info(
            "wrote %s (iterations %d, loss %s at iteration %s -> %s at iteration %s)", self.path,
            summary["iterations"], summary["first_loss"], summary["first_iteration"], summary["last_loss"],
            summary["last_iteration"],
        )

    def write(self, summary: dict[str, Any]) -> None:
        raise NotImplementedError


class ExpertWriter(_DeliverableWriter):
    """Write expert ``level`` of ``network`` as a self-describing file (:func:`~samora_monai.networks.save_expert`)
    when training completes. See :class:`_DeliverableWriter` for ``path``, ``log_interval`` and ``info``."""

    def __init__(
        self,
        network: SamoraNet,
        level: str,
        path: str | os.PathLike,
        log_interval: int = 10,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(path, log_interval, info)
        self.network = network
        self.level = level

    def write(self, summary: dict[str, Any]) -> None:
        save_expert(self.network, self.level, self.path, {"level": self.level, **summary})


class TeacherWriter(_DeliverableWriter):
    """Write ``teacher`` as a self-describing teacher file (:func:`~samora_monai.teachers.save_teacher`) when
    training completes. See :class:`_DeliverableWriter` for ``path``, ``log_interval`` and ``info``."""

    def __init__(
        self, teacher: nn.Module, path: str | os.PathLike, log_interval: int = 10, info: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(path, log_interval, info)
        self.teacher = teacher

    def write(self, summary: dict[str, Any]) -> None:
        save_teacher(self.teacher, self.path, summary)
