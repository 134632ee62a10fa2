"""Evaluate cases and write a per-case CSV and a JSON summary per metric mode, atomically.

Files written to ``output_dir`` for each mode ``m``:

- ``metrics_<m>.csv``: one row per case and class: ``case, class_index, class_name, dice, hd95, jaccard, asd,
  mode, units`` (``nan`` where the mode leaves a value undefined; ``units`` of HD95 and ASD, ``voxel`` or ``mm``);
- ``metrics_<m>.json``: ``mode``, ``hd95_units``, ``asd_units``, ``metric_definitions``, ``empty_rules``,
  ``num_cases``, ``cases``, ``class_names``, ``per_class`` (mean Dice / HD95 / Jaccard / ASD and ``n_dice``,
  ``n_hd95``, ``n_jaccard``, ``n_asd``, the number of defined values per class), ``mean_dice``, ``mean_hd95``,
  ``mean_jaccard`` and ``mean_asd`` (mean over classes of the per-class means, NaN-excluding; ``null`` when
  undefined) and ``provenance``.

The per-class mean over cases and then the mean over the K classes is the TransUNet aggregation.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.utils import ensure_tuple

from samora_monai.inferers.io import prediction_path
from samora_monai.utils import atomic_output, case_name

from .segmentation import METRICS, MODES, UNITS, case_metrics

__all__ = ["SegmentationReport", "evaluate_folder", "evaluate_pairs", "load_label_volume"]

logger = logging.getLogger(__name__)

EMPTY_RULES = {
    "transunet": "pred and gt non-empty: (dice, hd95 pooled, jaccard, asd symmetric; voxels); "
    "pred non-empty, gt empty: (1, 0, 1, 0); otherwise: (0, 0, 0, 0)",
    "monai": "gt empty: all NaN, excluded from means; gt non-empty, pred empty: dice 0, jaccard 0, "
    "hd95 and asd = {missed}",
}
DEFINITIONS = {
    "transunet": "medpy: dc, jc, hd95 (95th percentile of the pooled surface distances of both directions), "
    "assd (mean of the two directed mean surface distances); no spacing",
    "monai": "MONAI: compute_dice, compute_iou, compute_hausdorff_distance(percentile=95) (max of the two directed "
    "95th percentiles), compute_average_surface_distance(symmetric=True) (mean of the pooled distances); spacing mm",
}


def _nan_to_none(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


class SegmentationReport:
    """Accumulate per-case metrics for one or more modes, then write CSV and JSON files.

    Args:
        class_names: names of the foreground classes ``1..K`` (background excluded).
        modes: ``"transunet"``, ``"monai"`` or both.
        missed_hd95: HD95 and ASD of a missed class in ``"monai"`` mode, ``"diagonal"`` or ``"nan"``.
        provenance: extra facts written into every JSON summary (split, checkpoint, intensity window, ...).
    """

    def __init__(
        self,
        class_names: Sequence[str],
        modes: str | Sequence[str] = MODES,
        missed_hd95: str = "diagonal",
        provenance: Mapping[str, Any] | None = None,
    ) -> None:
        self.class_names = [str(n) for n in class_names]
        if not self.class_names:
            raise ValueError("class_names must name at least one foreground class")
        self.modes = tuple(ensure_tuple(modes))
        for mode in self.modes:
            if mode not in MODES:
                raise ValueError(f"unknown metric mode {mode!r}, expected one of {MODES}")
        self.missed_hd95 = missed_hd95
        self.provenance = dict(provenance or {})
        self.cases: list[str] = []
        self.values: dict[str, list[np.ndarray]] = {m: [] for m in self.modes}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def add(
        self,
        case: str,
        pred: np.ndarray | torch.Tensor,
        label: np.ndarray | torch.Tensor,
        spacing: Sequence[float] | None = None,
    ) -> dict[str, np.ndarray]:
        """Evaluate one case (integer label volumes ``[X, Y, Z]``); returns ``{mode: [K, 4]}`` (``METRICS``)."""
        if case in self.cases:
            raise ValueError(f"case {case!r} was already added")
        row = {
            m: case_metrics(pred, label, self.num_classes, m, spacing=spacing, missed_hd95=self.missed_hd95)
            for m in self.modes
        }
        self.cases.append(case)
        for m, v in row.items():
            self.values[m].append(v)
        return row

    def summary(self, mode: str) -> dict[str, Any]:
        """The JSON summary of ``mode`` as a dict (``None`` for undefined means)."""
        values = np.stack(self.values[mode]) if self.cases else np.zeros((0, self.num_classes, len(METRICS)))
        means = np.array([[_nanmean(values[:, c, m]) for m in range(len(METRICS))] for c in range(self.num_classes)])
        per_class = {
            name: {
                **{metric: _nan_to_none(means[c, m]) for m, metric in enumerate(METRICS)},
                **{f"n_{metric}": int(np.sum(~np.isnan(values[:, c, m]))) for m, metric in enumerate(METRICS)},
            }
            for c, name in enumerate(self.class_names)
        }
        return {
            "mode": mode,
            "hd95_units": UNITS[mode],
            "asd_units": UNITS[mode],
            "metric_definitions": DEFINITIONS[mode],
            "empty_rules": EMPTY_RULES[mode].format(missed=self.missed_hd95),
            "num_cases": len(self.cases),
            "cases": list(self.cases),
            "class_names": list(self.class_names),
            "per_class": per_class,
            **{f"mean_{metric}": _nan_to_none(_nanmean(means[:, m])) for m, metric in enumerate(METRICS)},
            "provenance": self.provenance,
        }

    def write(self, output_dir: str | os.PathLike, prefix: str = "metrics") -> dict[str, dict[str, Path]]:
        """Write ``<prefix>_<mode>.csv`` and ``<prefix>_<mode>.json`` for every mode; returns the paths."""
        output_dir = Path(output_dir)
        paths: dict[str, dict[str, Path]] = {}
        for mode in self.modes:
            csv_path, json_path = output_dir / f"{prefix}_{mode}.csv", output_dir / f"{prefix}_{mode}.json"
            with atomic_output(csv_path) as tmp, open(tmp, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["case", "class_index", "class_name", *METRICS, "mode", "units"])
                for case, v in zip(self.cases, self.values[mode], strict=True):
                    for c, name in enumerate(self.class_names):
                        writer.writerow([case, c + 1, name, *(repr(float(x)) for x in v[c]), mode, UNITS[mode]])
            with atomic_output(json_path) as tmp, open(tmp, "w") as f:
                json.dump(self.summary(mode), f, indent=2, allow_nan=False)
            paths[mode] = {"csv": csv_path, "json": json_path}
            logger.info("%s metrics: %s, %s", mode, csv_path, json_path)
        return paths


def load_label_volume(path: str | os.PathLike, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Read a 3D integer label NIfTI; returns ``(labels [X, Y, Z] int, affine [4, 4])``.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for an unreadable file,
    a non-3D volume, non-integer values or a label above ``num_classes``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label volume not found: {path}")
    try:
        image = nib.load(str(path))
        data = np.asarray(image.dataobj)
    except Exception as e:  # nibabel raises many types for corrupt files
        raise ValueError(f"cannot read NIfTI {path}: {e}") from e
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path} must be a 3D label volume, got shape {data.shape}")
    if not np.all(np.isfinite(data)) or np.any(data != np.round(data)):
        raise ValueError(f"{path} is not an integer label volume")
    labels = data.astype(np.int64)
    if labels.min() < 0 or labels.max() > num_classes:
        raise ValueError(f"{path} has label values in [{labels.min()}, {labels.max()}], expected 0..{num_classes}")
    return labels, np.asarray(image.affine, dtype=np.float64)


def _spacing(affine: np.ndarray) -> list[float]:
    return [float(s) for s in np.linalg.norm(affine[:3, :3], axis=0)]


def evaluate_pairs(
    pairs: Iterable[tuple[str | os.PathLike, str | os.PathLike]],
    class_names: Sequence[str],
    output_dir: str | os.PathLike,
    modes: str | Sequence[str] = MODES,
    case_names: Sequence[str] | None = None,
    missed_hd95: str = "diagonal",
    provenance: Mapping[str, Any] | None = None,
    prefix: str = "metrics",
) -> dict[str, dict[str, Any]]:
    """Evaluate ``(prediction NIfTI, label NIfTI)`` pairs and write the CSV/JSON files; returns the summaries.

    The spacing for ``"monai"`` mode comes from the label's affine (column norms). Case names default to the
    label file names without extension. Every file is checked before the report is written, so a bad file
    stops the run with nothing written.
    """
    pairs = list(pairs)
    if not pairs:
        raise ValueError("no (prediction, label) pairs to evaluate")
    if case_names is not None and len(case_names) != len(pairs):
        raise ValueError(f"{len(case_names)} case names for {len(pairs)} pairs")
    report = SegmentationReport(class_names, modes, missed_hd95=missed_hd95, provenance=provenance)
    for i, (pred_path, label_path) in enumerate(pairs):
        label, label_affine = load_label_volume(label_path, report.num_classes)
        pred, pred_affine = load_label_volume(pred_path, report.num_classes)
        if pred.shape != label.shape:
            raise ValueError(f"prediction {pred_path} has shape {pred.shape} but label {label_path} has {label.shape}")
        if not np.allclose(pred_affine, label_affine, atol=1e-3):
            warnings.warn(f"prediction {pred_path} and label {label_path} have different affines", stacklevel=2)
        case = case_names[i] if case_names is not None else case_name(label_path)
        report.add(case, pred, label, spacing=_spacing(label_affine))
        logger.info("evaluated %s (%d/%d)", case, i + 1, len(pairs))
    report.write(output_dir, prefix=prefix)
    return {m: report.summary(m) for m in report.modes}


def evaluate_folder(
    pred_dir: str | os.PathLike,
    data: Sequence[Mapping[str, Any]],
    output_dir: str | os.PathLike,
    class_names: Sequence[str],
    modes: str | Sequence[str] = MODES,
    pred_postfix: str = "seg",
    image_key: str = "image",
    label_key: str = "label",
    missed_hd95: str = "diagonal",
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Evaluate the predictions that ``SaveLabelVolumed`` wrote to ``pred_dir`` for a datalist.

    ``data`` is the bundle's list of ``{"image": path, "label": path}`` items; the prediction of an item is
    ``prediction_path(item[image_key], pred_dir, pred_postfix)`` and the case name is the image's name.
    """
    pairs, names = [], []
    for item in data:
        if image_key not in item or label_key not in item:
            raise ValueError(f"datalist item {dict(item)} lacks {image_key!r} or {label_key!r}")
        pairs.append((prediction_path(item[image_key], pred_dir, pred_postfix), item[label_key]))
        names.append(case_name(item[image_key]))
    return evaluate_pairs(
        pairs, class_names, output_dir, modes, case_names=names, missed_hd95=missed_hd95, provenance=provenance
    )
