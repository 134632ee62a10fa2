"""Volume inference over 2D slices and atomic saving of label volumes."""

from .aux import AuxOutputInferer
from .io import SaveLabelVolumed, atomic_output, case_name, prediction_path
from .slice_inferer import ResizedSliceInferer

__all__ = [
    "AuxOutputInferer",
    "ResizedSliceInferer",
    "SaveLabelVolumed",
    "atomic_output",
    "case_name",
    "prediction_path",
]
