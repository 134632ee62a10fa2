"""Stage-2 (prompt-free fine-tuning) pieces the bundle configs wire together.

- :func:`stage2_network`: freeze all but HL-Attn and the mask decoder, move to the device;
- :func:`warmup_poly_lr`: SAMora's linear warmup then poly decay, per iteration, as a ``LambdaLR``;
- :func:`expert_files`, :func:`latest_checkpoint`: optional files found in the bundle's ``models/`` folder;
- :class:`ResumeCheckpointSaver` / :class:`ResumeCheckpointLoader`: the resumable ``latest`` checkpoint, trainer
  state included, written atomically (:mod:`~samora_monai.engines.atomic_checkpoint`);
- :class:`SegmentationReportHandler`: per-case Dice/HD95 of an evaluator run, written as CSV and JSON.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from monai.handlers import CheckpointLoader
from monai.utils import look_up_option
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from samora_monai.engines.atomic_checkpoint import AtomicCheckpointSaver, resume_files
from samora_monai.inferers.io import case_name
from samora_monai.metrics import MODES, SegmentationReport
from samora_monai.networks import DEFAULT_LEVELS, SamoraNet, configure_stage

__all__ = [
    "ResumeCheckpointLoader",
    "ResumeCheckpointSaver",
    "SegmentationReportHandler",
    "expert_files",
    "latest_checkpoint",
    "stage2_network",
    "trainable_parameters",
    "warmup_lr",
    "warmup_poly_lr",
]

logger = logging.getLogger(__name__)

LR_SCHEDULES = ("poly", "cosine")

def stage2_network(net: SamoraNet, device: torch.device | str = "cpu") -> SamoraNet:
    """Apply ``configure_stage(net, "stage2")`` (only HL-Attn and the mask decoder train) and move to ``device``."""
    configure_stage(net, "stage2")  # logs the trainable / total parameter counts
    return net.to(device)


def trainable_parameters(net: nn.Module) -> list[nn.Parameter]:
    """The parameters with ``requires_grad`` (what the optimiser updates)."""
    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the network has no trainable parameters; apply stage2_network/configure_stage first")
    return params


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


def expert_files(folder: str | os.PathLike, levels: Sequence[str] = DEFAULT_LEVELS) -> dict[str, str]:
    """``{level: "<folder>/<level>.pt"}`` for the stage-1 expert files that exist (none: stage 2 runs on the
    zero-initialised experts, i.e. the plain SAM encoder)."""
    found = {level: os.path.join(folder, f"{level}.pt") for level in levels}
    found = {level: path for level, path in found.items() if os.path.isfile(path)}
    if found:
        logger.info("stage-1 experts: %s", found)
    else:
        logger.warning("no stage-1 expert files in %s: the experts stay at their zero initialisation", folder)
    return found


def latest_checkpoint(ckpt_dir: str | os.PathLike, prefix: str = "latest") -> str | None:
    """The ``<prefix>_checkpoint_epoch=N.pt`` / ``..._iteration=N.pt`` in ``ckpt_dir`` with the highest N (the newest
    on a tie), i.e. what ``CheckpointSaver(file_prefix=prefix, save_interval=...)`` wrote last, or None."""
    files = resume_files(ckpt_dir, prefix)
    if not files:
        return None
    path = files[-1]
    logger.info("resuming from %s", path)
    return path


class ResumeCheckpointLoader(CheckpointLoader):
    """``CheckpointLoader`` that also restores the state of the engine it is attached to (key ``"trainer"``), so a
    config can resume training without the circular reference ``trainer -> handlers -> loader -> trainer``."""

    def attach(self, engine: Engine) -> None:
        self.load_dict = {**self.load_dict, "trainer": engine}
        super().attach(engine)


class ResumeCheckpointSaver(AtomicCheckpointSaver):
    """:class:`AtomicCheckpointSaver` that also saves the state of the engine it is attached to (key ``"trainer"``);
    use with ``save_interval``, ``n_saved=1`` and ``file_prefix="latest"`` for the checkpoint :func:`latest_checkpoint`
    finds (older ones are pruned after each save)."""

    def attach(self, engine: Engine) -> None:
        self.save_dict["trainer"] = engine  # the ignite Checkpoint objects hold this same dict
        super().attach(engine)


def _spacing(x: torch.Tensor) -> list[float] | None:
    if isinstance(x, MetaTensor):
        return [float(s) for s in x.pixdim[:3]]
    return None


def _labels(x: torch.Tensor) -> np.ndarray:
    """``[1, X, Y, Z]`` label tensor -> integer array ``[X, Y, Z]``."""
    return torch.as_tensor(x).detach().cpu().round().long().numpy()[0]


class SegmentationReportHandler:
    """Collect per-case, per-class Dice and HD95 during an evaluator run and write them when it completes.

    Reads ``engine.state.output`` (decollated items whose ``pred_key``/``label_key`` are integer label volumes
    ``[1, X, Y, Z]``, e.g. after ``AsDiscreted(argmax=True)``). A case is named after its image file, as the saved
    prediction (``<folder>/<name>`` when names repeat); the spacing (``"monai"`` mode, mm) comes from the label's
    affine. Writes ``metrics_<mode>.csv`` and ``metrics_<mode>.json`` to ``output_dir`` through
    :class:`~samora_monai.metrics.SegmentationReport`.

    Args:
        class_names: names of the foreground classes ``1..K``.
        output_dir: destination folder.
        modes: ``"transunet"`` (voxel HD95, empty-mask rules of the published tables), ``"monai"`` (mm) or both.
        pred_key, label_key, image_key: keys in the engine output.
        provenance: extra facts recorded in the JSON summaries (checkpoint, datalist, ...).
    """

    def __init__(
        self,
        class_names: Sequence[str],
        output_dir: str | os.PathLike,
        modes: str | Sequence[str] = MODES,
        pred_key: str = "pred",
        label_key: str = "label",
        image_key: str = "image",
        provenance: dict[str, Any] | None = None,
    ) -> None:
        self.class_names = list(class_names)
        self.output_dir = output_dir
        self.modes = modes
        self.pred_key, self.label_key, self.image_key = pred_key, label_key, image_key
        self.provenance = provenance
        self.report: SegmentationReport | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.update)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def reset(self, engine: Engine | None = None) -> None:
        self.report = SegmentationReport(self.class_names, self.modes, provenance=self.provenance)

    def update(self, engine: Engine) -> None:
        if self.report is None:
            self.reset()
        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        for item in outputs:
            pred, label = item[self.pred_key], item[self.label_key]
            source = next((x for x in (item.get(self.image_key), label) if isinstance(x, MetaTensor)), None)
            src = source.meta.get("filename_or_obj") if source is not None else None
            name = case_name(str(src)) if src else f"case{len(self.report.cases):04d}"
            if name in self.report.cases:  # e.g. LA 2018: every volume is <ID>/mri_norm2.h5
                name = f"{os.path.basename(os.path.dirname(str(src)))}/{name}"
            if pred.shape != label.shape or pred.shape[0] != 1:
                raise ValueError(f"{name}: pred {tuple(pred.shape)} and label {tuple(label.shape)} must be [1,X,Y,Z]")
            self.report.add(name, _labels(pred), _labels(label), spacing=_spacing(label))

    def write(self, engine: Engine | None = None) -> None:
        if self.report is None or not self.report.cases:
            raise RuntimeError("no cases were evaluated")
        paths = self.report.write(self.output_dir)
        for mode in self.report.modes:
            summary = self.report.summary(mode)
            logger.info("%s mode: mean Dice %s, mean HD95 %s (%s)", mode, summary["mean_dice"],
                        summary["mean_hd95"], paths[mode]["json"])
