"""What the ``samora`` template derives from the ``DataAnalyzer`` statistics (``fill_template_config``)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from samora_monai.data import CT_WINDOW, MR_PERCENTILES

__all__ = ["ALGO_NAME", "derive_hyper_parameters", "slice_axis_from_spacing", "in_plane_size"]

logger = logging.getLogger(__name__)

ALGO_NAME = "samora"  # no "_": Auto3DSeg splits algo ids "<name>_<fold>" on it
MODALITY_ALIASES = {"ct": "ct", "mr": "mr", "mri": "mr"}


def _stat(stats: Mapping, key: str) -> Any:
    node: Any = stats
    for part in key.split("#"):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(f"data statistics lack '{key}' (run DataAnalyzer on the labelled datalist first)")
        node = node[part]
    return node


def slice_axis_from_spacing(spacing: Sequence[float], anisotropy_threshold: float = 2.0) -> int:
    """The spatial axis to slice along: the coarsest-spacing axis when ``max/min`` spacing reaches
    ``anisotropy_threshold`` (thick-slice CT/MR), else 2 (the last axis, axial for RAS-like volumes)."""
    spacing = [float(s) for s in spacing]
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"expected 3 positive voxel spacings, got {spacing}")
    if max(spacing) / min(spacing) >= anisotropy_threshold:
        return spacing.index(max(spacing))
    return 2


def in_plane_size(shape: Sequence[int], slice_axis: int, max_img_size: int = 224, multiple: int = 16) -> int:
    """Network input size: the largest in-plane extent rounded up to ``multiple`` (SAM patch size), capped at
    ``max_img_size`` (slices are resized to it, as SAMed/SAMora do with 512x512 CT at 224)."""
    extent = max(int(s) for i, s in enumerate(shape) if i != slice_axis)
    size = max(multiple, math.ceil(extent / multiple) * multiple)
    return min(size, max(multiple, max_img_size // multiple * multiple))


def derive_hyper_parameters(
    data_stats: Mapping,
    modality: str,
    max_img_size: int = 224,
    anisotropy_threshold: float = 2.0,
) -> dict[str, Any]:
    """Hyper-parameters of the ``samora`` template that follow from the data.

    Args:
        data_stats: the ``DataAnalyzer`` output (``{"stats_summary": ..., "stats_by_cases": ...}``).
        modality: the data source's modality, ``"ct"`` or ``"mri"``/``"mr"``.
        max_img_size: cap of the network input size.
        anisotropy_threshold: spacing ratio from which the coarsest axis becomes the slice axis.

    Returns:
        ``output_classes`` (background included, ``max(label_stats#labels) + 1``), ``input_channels``, ``modality``,
        ``intensity_window`` (CT: foreground 0.5/99.5 percentiles), ``percentiles`` (MR), ``slice_axis``,
        ``img_size`` and ``n_cases``.
    """
    mod = MODALITY_ALIASES.get(str(modality).lower())
    if mod is None:
        raise ValueError(f"modality must be 'ct' or 'mri', got {modality!r}")
    labels = sorted(int(v) for v in _stat(data_stats, "stats_summary#label_stats#labels"))
    if not labels or labels[0] < 0 or labels[-1] < 1:
        raise ValueError(f"label statistics {labels} hold no foreground class")
    if labels != list(range(labels[-1] + 1)):
        logger.warning("label values %s are not contiguous; the network predicts all of 0..%d", labels, labels[-1])
    channels = int(_stat(data_stats, "stats_summary#image_stats#channels#max"))
    if channels not in (1, 3):
        raise ValueError(f"SAMora takes 1- or 3-channel images, the data have {channels} channels")
    spacing = _stat(data_stats, "stats_summary#image_stats#spacing#median")
    axis = slice_axis_from_spacing(spacing, anisotropy_threshold)
    img_size = in_plane_size(_stat(data_stats, "stats_summary#image_stats#shape#max"), axis, max_img_size)
    window = [float(v) for v in CT_WINDOW]
    if mod == "ct":
        lo = float(_stat(data_stats, "stats_summary#image_foreground_stats#intensity#percentile_00_5"))
        hi = float(_stat(data_stats, "stats_summary#image_foreground_stats#intensity#percentile_99_5"))
        if hi > lo:
            window = [lo, hi]
        else:
            logger.warning("degenerate foreground intensity range [%g, %g]; using the window %s", lo, hi, window)
    return {
        "output_classes": labels[-1] + 1,
        "input_channels": channels,
        "modality": mod,
        "intensity_window": window,
        "percentiles": [float(v) for v in MR_PERCENTILES],
        "slice_axis": axis,
        "img_size": img_size,
        "n_cases": int(_stat(data_stats, "stats_summary#n_cases")),
    }
