"""Stage-1 self-supervised objectives (image, patch, pixel level) and the stage-2 segmentation loss (at image or
decoder resolution)."""

from samora_monai.losses.distance import DISTANCES, feature_distance
from samora_monai.losses.dual import DualStageLoss, dual_loss_weight
from samora_monai.losses.low_res import LOSS_RESOLUTIONS, LowResLoss, stage2_loss, zoom_nearest
from samora_monai.losses.segmentation import segmentation_loss
from samora_monai.losses.ssl import (
    Encode,
    ImageLevelLoss,
    PatchLevelLoss,
    PixelLevelLoss,
    corrupt,
    gather_tokens,
    mask_patches,
)

__all__ = [
    "DISTANCES",
    "LOSS_RESOLUTIONS",
    "DualStageLoss",
    "Encode",
    "ImageLevelLoss",
    "LowResLoss",
    "PatchLevelLoss",
    "PixelLevelLoss",
    "corrupt",
    "dual_loss_weight",
    "feature_distance",
    "gather_tokens",
    "mask_patches",
    "segmentation_loss",
    "stage2_loss",
    "zoom_nearest",
]
