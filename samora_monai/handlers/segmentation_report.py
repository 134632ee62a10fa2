"""Per-case Dice/HD95 of an evaluator run, written as CSV and JSON when it completes."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor

from samora_monai.metrics import MODES, SegmentationReport
from samora_monai.utils import case_name

__all__ = ["SegmentationReportHandler"]

logger = logging.getLogger(__name__)


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
