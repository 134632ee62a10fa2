"""Stage-1 (self-supervised pre-training) pieces the ``pretrain_*`` bundle configs wire together.

- :class:`SelfSupervisedTrainer`: a ``SupervisedTrainer`` whose iteration minimises ``loss_function(*inputs)``, the
  inputs being ``batch[k]`` for ``input_keys`` (no labels, no inferer): NT-Xent of a contrastive teacher, MAE
  reconstruction, or a student objective bound to the SAM encoder (:class:`StudentLoss`);
- :func:`unlabeled_dataset`: the slice cache of ``prepare_unlabeled`` with its modality checked;
- :func:`stage1_teacher`, :func:`stage1_student`: the frozen teacher a student distils from, and the student
  network with only one expert (and the objective's head) trainable;
- :func:`warmup_lr`: linear warmup then poly or cosine decay, per iteration;
- :func:`latest_resume_checkpoint`: the newest ``latest_checkpoint_{epoch|iteration}=N.pt`` to resume from;
- :class:`ExpertWriter`, :class:`TeacherWriter`: handlers that record the loss history (kept in the resume
  checkpoints) and write the deliverable (``models/experts/<level>.pt``, ``models/teachers/<level>.pt``) when
  training completes;
- :class:`LossProgressBar`: ignite's tqdm progress bar showing the loss.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from torch import nn
from torch.optim import Optimizer

from samora_monai.data import UnlabeledSliceDataset
from samora_monai.engines.stage2 import warmup_lr
from samora_monai.networks import SamoraNet, configure_stage, save_expert
from samora_monai.teachers import TEACHERS, build_teacher, save_teacher

__all__ = [
    "ExpertWriter",
    "LossProgressBar",
    "SelfSupervisedTrainer",
    "StudentLoss",
    "TeacherWriter",
    "engine_loss",
    "expert_modules",
    "log_every",
    "stage1_student",
    "stage1_teacher",
    "unlabeled_dataset",
    "warmup_lr",  # re-exported from stage2 for the pretrain configs
]

logger = logging.getLogger(__name__)

PREPARE_HINT = (
    "create it with `python -m samora_monai prepare_unlabeled --output_dir <bundle>/data/unlabeled "
    "--glob '<volumes>/*.nii.gz' --modality <ct|mr> --spatial_size <img_size>` (or pass --unlabeled_datalist)"
)


def engine_loss(output: Mapping[str, torch.Tensor]) -> float:
    """The scalar loss of a :class:`SelfSupervisedTrainer` iteration output (for Stats/TensorBoard handlers)."""
    return float(output["loss"])


def log_every(interval: int) -> Callable[[Engine, int], bool]:
    """Ignite event filter: true at iteration 1 and every ``interval``-th iteration."""
    interval = max(1, int(interval))
    return lambda engine, event: event == 1 or event % interval == 0


class StudentLoss(nn.Module):
    """A stage-1 objective bound to the student's encoder: ``forward(*inputs) = objective(network.encode, *inputs)``.

    The network is not registered as a submodule (the trainer owns it); ``train()`` reaches the objective's head
    and keeps its frozen teacher in eval mode.
    """

    def __init__(self, objective: nn.Module, network: SamoraNet) -> None:
        super().__init__()
        self.objective = objective
        self._encode = network.encode

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.objective(self._encode, *inputs)


class SelfSupervisedTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` for self-supervision: one iteration puts ``network`` (and ``loss_function`` when it is a
    module) in train mode, computes ``loss = loss_function(*[batch[k] for k in input_keys])``, back-propagates and
    steps the optimiser; ``engine.state.output`` is ``{"loss": loss.detach()}``.

    Args:
        device, max_epochs, train_data_loader, optimizer, train_handlers, amp: as ``SupervisedTrainer``.
        network: the module whose trainable parameters the optimiser holds (teacher, or student ``SamoraNet``).
        loss_function: callable on the batch tensors returning a scalar, e.g. ``teacher.training_loss``
            (two views), ``teacher.reconstruction_loss`` or :class:`StudentLoss`.
        input_keys: batch keys passed to ``loss_function`` in this order, e.g. ``("view1", "view2")``.
        kwargs: further ``SupervisedTrainer`` arguments (``epoch_length``, ``inferer``, ...).
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Any,
        network: nn.Module,
        optimizer: Optimizer,
        loss_function: Callable[..., torch.Tensor],
        input_keys: Sequence[str] = ("image",),
        train_handlers: Sequence | None = None,
        amp: bool = False,
        **kwargs: Any,
    ) -> None:
        if hasattr(train_data_loader, "__len__") and len(train_data_loader) == 0:
            dataset = getattr(train_data_loader, "dataset", None)
            size = len(dataset) if dataset is not None and hasattr(dataset, "__len__") else "?"
            raise ValueError(
                f"the training data loader yields no batch ({size} samples; with drop_last the batch size must not "
                "exceed the number of slices): prepare more unlabeled slices or lower batch_size"
            )
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            train_handlers=train_handlers,
            amp=amp,
            decollate=False,
            **kwargs,
        )
        self.input_keys = tuple(input_keys)

    def _iteration(self, engine: SelfSupervisedTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        missing = [k for k in self.input_keys if k not in batchdata]
        if missing:
            raise KeyError(f"batch has no {missing} (keys: {sorted(batchdata)}); check the preprocessing transforms")
        inputs = [
            torch.as_tensor(batchdata[k]).to(engine.state.device, non_blocking=engine.non_blocking)
            for k in self.input_keys
        ]
        engine.network.train()
        if isinstance(engine.loss_function, nn.Module):
            engine.loss_function.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        if engine.amp and engine.scaler is not None:
            with torch.autocast("cuda", **engine.amp_kwargs):
                loss = engine.loss_function(*inputs)
            engine.state.output = {"loss": loss}
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
            engine.scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss = engine.loss_function(*inputs)
            engine.state.output = {"loss": loss}
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {float(loss)} at iteration {engine.state.iteration}")
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        engine.state.output = {"loss": loss.detach()}
        return engine.state.output


def unlabeled_dataset(
    datalist: str | os.PathLike, transform: Callable | None = None, modality: str | None = None
) -> UnlabeledSliceDataset:
    """The slices ``prepare_unlabeled`` wrote (``[1, S, S]`` in [0, 1] per item, then ``transform``).

    Raises ``FileNotFoundError`` (with the command that creates it) when the datalist is missing, and ``ValueError``
    when it was prepared for another ``modality`` than the bundle's.
    """
    path = os.fspath(datalist)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"unlabeled datalist not found: {path}; {PREPARE_HINT}")
    with open(path) as f:
        settings = json.load(f).get("settings", {})
    prepared = settings.get("modality")
    if modality is not None and prepared is not None and str(prepared).lower() != str(modality).lower():
        raise ValueError(
            f"{path}: slices were prepared with modality {prepared!r} but this bundle expects {modality!r}; "
            f"prepare them again with --modality {modality}"
        )
    dataset = UnlabeledSliceDataset(path, transform)
    logger.info("stage-1 data: %d slices from %s (prepared at %s px)", len(dataset), path, settings.get("spatial_size"))
    return dataset


def stage1_teacher(
    level: str,
    checkpoint: str | os.PathLike | None,
    allow_untrained: bool = False,
    img_size: int | None = None,
    config: Mapping[str, Any] | None = None,
) -> nn.Module:
    """The frozen teacher of a student workflow, from the file ``pretrain_teacher_<level>`` wrote.

    ``checkpoint`` None or a missing file is an error naming the workflow that creates it, unless
    ``allow_untrained`` (tests only): then a randomly initialised teacher is built from ``config`` (constructor
    arguments) and the log says so loudly. An existing file is always used. The returned teacher's
    ``source_checkpoint`` is the absolute path of the file, or ``"untrained"``.
    """
    if level not in TEACHERS:
        raise ValueError(f"no teacher for level {level!r}; teachers exist for levels {sorted(TEACHERS)}")
    path = None if checkpoint is None else os.fspath(checkpoint)
    if path is not None and not os.path.isfile(path):
        if not allow_untrained:
            raise FileNotFoundError(
                f"{level}-level teacher checkpoint not found: {path}. Train it first with "
                f"`python -m monai.bundle run training --config_file configs/pretrain_teacher_{level}.yaml`, "
                "or pass an existing file with --teacher_checkpoint <path>"
            )
        path = None
    if path is None and allow_untrained:
        logger.warning(
            "USING AN UNTRAINED %s-LEVEL TEACHER (allow_untrained_teacher: true): for tests only, the expert "
            "learns nothing useful", level.upper()
        )
    teacher = build_teacher(level, path, allow_untrained=allow_untrained, img_size=img_size, **dict(config or {}))
    teacher.source_checkpoint = os.path.abspath(path) if path is not None else "untrained"
    return teacher


def stage1_student(
    network: SamoraNet, objective: nn.Module, level: str, device: torch.device | str = "cpu"
) -> SamoraNet:
    """Freeze everything but expert ``level`` and the objective's head (``configure_stage``), move both to
    ``device`` and return the network."""
    counts = configure_stage(network, "stage1", level, heads=[objective.head])
    logger.info("stage 1 (%s): %d trainable of %d parameters", level, counts["trainable"], counts["total"])
    objective.to(device)
    return network.to(device)


def expert_modules(network: SamoraNet, level: str) -> nn.ModuleList:
    """The expert ``level`` of every LoRA block as one module (shares the parameters): what a resume
    checkpoint needs to store of the frozen student network."""
    experts = [b.lora.experts[level] for b in network.samora_blocks if b.lora is not None]
    if not experts:
        raise ValueError(f"the network has no LoRA expert {level!r}")
    return nn.ModuleList(experts)




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


class LossProgressBar(ProgressBar):
    """Ignite's tqdm ``ProgressBar`` attached with the iteration loss shown; a MONAI-style handler
    (``attach(engine)``) for ``train#handlers``."""

    def __init__(self, persist: bool = True, **kwargs: Any) -> None:
        super().__init__(persist=persist, **kwargs)

    def attach(self, engine: Engine, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        kwargs.setdefault("output_transform", lambda out: {"loss": engine_loss(out)})
        super().attach(engine, *args, **kwargs)
