"""Volume inference over 2D slices (our resize protocol and the published TransUNet protocol) and atomic saving of
label volumes."""

from .aux import AuxOutputInferer
from .io import SaveLabelVolumed, atomic_output, case_name, prediction_path
from .slice_inferer import ResizedSliceInferer
from .transunet_protocol import SLICE_PROTOCOLS, TransUNetSliceInferer, slice_inferer, zoom_planes

__all__ = [
    "AuxOutputInferer",
    "SLICE_PROTOCOLS",
    "ResizedSliceInferer",
    "SaveLabelVolumed",
    "TransUNetSliceInferer",
    "atomic_output",
    "case_name",
    "prediction_path",
    "slice_inferer",
    "zoom_planes",
]
