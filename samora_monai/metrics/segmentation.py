"""Per-case, per-class Dice, HD95, Jaccard and ASD on 3D label volumes, in two documented modes.

A surface is the object minus its binary erosion by the connectivity-1 structure (6-neighbourhood in 3D), voxels
on the volume border included (medpy and MONAI agree on it); surface distances are Euclidean.

``transunet`` (TransUNet / SAMed / H-SAM / SAMora ``calculate_metric_percase``, medpy functions, for published
tables): for every class ``c`` in ``1..K``, with ``p = pred == c`` and ``g = gt == c``:

    - ``p`` and ``g`` non-empty: Dice (medpy ``dc``), Jaccard (medpy ``jc``), and **in voxels** (no spacing):
      HD95 as medpy ``hd95``, the 95th percentile (linear interpolation) of the pooled surface distances of both
      directions; ASD as medpy ``assd``, the mean of the two directed average surface distances
      ``(mean d(p->g) + mean d(g->p)) / 2``;
    - ``p`` non-empty, ``g`` empty: ``(1, 0, 1, 0)`` (a false-positive organ scores a perfect Dice);
    - otherwise (``p`` empty): ``(0, 0, 0, 0)`` (a missed organ lowers mean HD95; both empty also give zeros).

    TransUNet defines the empty-mask rules for Dice and HD95 only; Jaccard follows the Dice rule and ASD the HD95
    rule, which is also the UA-MT/BCP LA convention (an empty prediction scores ``(0, 0, 0, 0)``). Note: the
    UA-MT lineage calls medpy ``asd(pred, gt)``, the *directed* ``mean d(p->g)``; see
    :func:`average_surface_distance` (``symmetric=False``) for that variant.

``monai`` (clean, spacing-aware):
    Dice from MONAI's ``compute_dice`` (``DiceMetric(ignore_empty=True)``), Jaccard from ``compute_iou``
    (``MeanIoU(ignore_empty=True)``), and, with the true voxel spacing, so **in mm**: HD95 from
    ``compute_hausdorff_distance(percentile=95)``, the larger of the two directed 95th percentiles (not the pooled
    one), and ASD from ``compute_average_surface_distance(symmetric=True)``, the mean of the pooled distances of
    both directions (not the mean of the two directed means). Empty masks:

    - ``g`` empty (whatever ``p``): all four ``NaN``, excluded from the means (MONAI's ``ignore_empty``);
    - ``g`` non-empty, ``p`` empty: Dice and Jaccard 0; HD95 and ASD the worst case, the volume diagonal in mm
      (``missed_hd95="diagonal"``), or ``NaN`` (``missed_hd95="nan"``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance, compute_iou
from scipy import ndimage

__all__ = [
    "METRICS",
    "MODES",
    "UNITS",
    "average_surface_distance",
    "case_metrics",
    "dice",
    "hd95_pooled",
    "jaccard",
    "surface",
]

MODES = ("transunet", "monai")
UNITS = {"transunet": "voxel", "monai": "mm"}  # of HD95 and ASD
METRICS = ("dice", "hd95", "jaccard", "asd")  # the columns of :func:`case_metrics`


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice ``2|p & g| / (|p| + |g|)`` of two binary arrays; 0 when both are empty (as medpy's ``dc``)."""
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    total = int(pred.sum()) + int(gt.sum())
    return 2.0 * int(np.logical_and(pred, gt).sum()) / total if total else 0.0


def surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels: ``mask`` minus its erosion by the connectivity-1 structure (outside counts as background)."""
    mask = np.asarray(mask, bool)
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, iterations=1, border_value=0)


def _crop_to_union(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of their union plus one voxel; distances between them are unchanged."""
    coords = np.argwhere(a | b)
    lo = np.maximum(coords.min(0) - 1, 0)
    hi = np.minimum(coords.max(0) + 2, a.shape)
    box = tuple(slice(int(s), int(e)) for s, e in zip(lo, hi, strict=True))
    return a[box], b[box]


def jaccard(pred: np.ndarray, gt: np.ndarray) -> float:
    """Jaccard ``|p & g| / |p | g|`` of two binary arrays (medpy's ``jc``); 0 when both are empty."""
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    union = int(np.logical_or(pred, gt).sum())
    return int(np.logical_and(pred, gt).sum()) / union if union else 0.0


def _surface_distances(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Distances from every surface voxel of ``pred`` to the surface of ``gt``, and from ``gt`` to ``pred``."""
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    if not pred.any() or not gt.any():
        raise ValueError("surface distances need two non-empty masks")
    pred, gt = _crop_to_union(pred, gt)
    sp, sg = surface(pred), surface(gt)
    to_gt = ndimage.distance_transform_edt(~sg, sampling=spacing)[sp]
    to_pred = ndimage.distance_transform_edt(~sp, sampling=spacing)[sg]
    return to_gt, to_pred


def hd95_pooled(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """medpy-style HD95: 95th percentile of the surface distances ``pred->gt`` and ``gt->pred`` pooled together.

    Both masks must be non-empty. Without ``spacing`` the distances are in voxels.
    """
    return float(np.percentile(np.concatenate(_surface_distances(pred, gt, spacing)), 95))


def average_surface_distance(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None, symmetric: bool = True
) -> float:
    """medpy-style ASD: ``symmetric`` -> ``assd``, the mean of the directed means ``(mean d(p->g) + mean d(g->p)) / 2``;
    otherwise ``asd(pred, gt)``, ``mean d(p->g)``. Both masks must be non-empty; voxels without ``spacing``."""
    to_gt, to_pred = _surface_distances(pred, gt, spacing)
    return float((to_gt.mean() + to_pred.mean()) / 2) if symmetric else float(to_gt.mean())


def _transunet(pred: np.ndarray, gt: np.ndarray) -> tuple[float, ...]:
    if pred.any() and gt.any():
        return dice(pred, gt), hd95_pooled(pred, gt), jaccard(pred, gt), average_surface_distance(pred, gt)
    if pred.any():
        return 1.0, 0.0, 1.0, 0.0
    return 0.0, 0.0, 0.0, 0.0


def _monai(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], missed_hd95: str) -> tuple[float, ...]:
    if not gt.any():
        return (float("nan"),) * len(METRICS)
    if not pred.any():
        worst = float(np.sqrt(np.sum((np.asarray(gt.shape) * np.asarray(spacing)) ** 2)))
        worst = worst if missed_hd95 == "diagonal" else float("nan")
        return 0.0, worst, 0.0, worst
    p = torch.from_numpy(pred)[None, None].float()
    g = torch.from_numpy(gt)[None, None].float()
    spacing = list(spacing)
    return (
        float(compute_dice(p, g, include_background=True, ignore_empty=True).item()),
        float(compute_hausdorff_distance(p, g, include_background=True, percentile=95, spacing=spacing).item()),
        float(compute_iou(p, g, include_background=True, ignore_empty=True).item()),
        float(compute_average_surface_distance(p, g, include_background=True, symmetric=True, spacing=spacing).item()),
    )


def case_metrics(
    pred: np.ndarray | torch.Tensor,
    label: np.ndarray | torch.Tensor,
    num_classes: int,
    mode: str = "transunet",
    spacing: Sequence[float] | None = None,
    missed_hd95: str = "diagonal",
) -> np.ndarray:
    """Dice, HD95, Jaccard and ASD of classes ``1..num_classes`` for one case.

    Returns ``[num_classes, 4]``, columns in :data:`METRICS` order (dice, hd95, jaccard, asd).

    Args:
        pred: integer label volume ``[X, Y, Z]`` (or ``[1, X, Y, Z]``).
        label: ground-truth label volume of the same shape.
        num_classes: K, the number of foreground classes.
        mode: ``"transunet"`` (voxel HD95/ASD, TransUNet empty rules) or ``"monai"`` (mm, NaN for empty GT).
        spacing: voxel size in mm, required by ``"monai"`` (ignored by ``"transunet"``, as in the reference code).
        missed_hd95: ``"monai"`` mode only, HD95 and ASD of a missed class: ``"diagonal"`` (worst case) or
            ``"nan"``.
    """
    if mode not in MODES:
        raise ValueError(f"unknown metric mode {mode!r}, expected one of {MODES}")
    if missed_hd95 not in ("diagonal", "nan"):
        raise ValueError(f"missed_hd95 must be 'diagonal' or 'nan', got {missed_hd95!r}")
    pred = _labels(pred, "prediction", num_classes)
    label = _labels(label, "label", num_classes)
    if pred.shape != label.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from label shape {label.shape}")
    if mode == "monai":
        if spacing is None or len(spacing) != pred.ndim:
            raise ValueError(f"mode 'monai' needs a spacing with {pred.ndim} values, got {spacing}")
        spacing = [float(s) for s in spacing]
    out = np.zeros((num_classes, len(METRICS)), dtype=np.float64)
    for c in range(1, num_classes + 1):
        p, g = pred == c, label == c
        out[c - 1] = _transunet(p, g) if mode == "transunet" else _monai(p, g, spacing, missed_hd95)
    return out


def _labels(x: np.ndarray | torch.Tensor, what: str, num_classes: int) -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise ValueError(f"{what} must be a 3D label volume [X, Y, Z], got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > num_classes):
        raise ValueError(f"{what} has label values in [{arr.min()}, {arr.max()}], expected 0..{num_classes}")
    return arr
