"""Dice and HD95 in the TransUNet-compatible (voxel) and MONAI (mm) modes, with CSV/JSON reports."""

from .report import SegmentationReport, evaluate_folder, evaluate_pairs, load_label_volume
from .segmentation import MODES, UNITS, case_metrics, dice, hd95_pooled, surface

__all__ = [
    "MODES",
    "UNITS",
    "SegmentationReport",
    "case_metrics",
    "dice",
    "evaluate_folder",
    "evaluate_pairs",
    "hd95_pooled",
    "load_label_volume",
    "surface",
]
