"""Dice, HD95, Jaccard and ASD in the TransUNet-compatible (voxel) and MONAI (mm) modes, with CSV/JSON reports."""

from .report import SegmentationReport, evaluate_folder, evaluate_pairs, load_label_volume
from .segmentation import (
    METRICS,
    MODES,
    UNITS,
    average_surface_distance,
    case_metrics,
    dice,
    hd95_pooled,
    jaccard,
    surface,
)

__all__ = [
    "METRICS",
    "MODES",
    "UNITS",
    "SegmentationReport",
    "average_surface_distance",
    "case_metrics",
    "dice",
    "evaluate_folder",
    "evaluate_pairs",
    "hd95_pooled",
    "jaccard",
    "load_label_volume",
    "surface",
]
