"""Stage-2 segmentation loss: SAMed/TransUNet-style Dice + CE."""

from __future__ import annotations

from typing import Any

from monai.losses import DiceCELoss

__all__ = ["segmentation_loss"]


def segmentation_loss(lambda_dice: float = 0.8, lambda_ce: float = 0.2, **kwargs: Any) -> DiceCELoss:
    """``DiceCELoss`` for logits [B, K+1, H, W] and labels [B, 1, H, W] (class indices).

    Squared-sum Dice denominator reduced over the whole batch per class, background included, smoothing 1e-5:
    the SAMed/TransUNet Dice. ``kwargs`` override any other ``DiceCELoss`` argument.
    """
    options = {
        "include_background": True,
        "to_onehot_y": True,
        "softmax": True,
        "squared_pred": True,
        "batch": True,
        "smooth_nr": 1.0e-5,
        "smooth_dr": 1.0e-5,
    }
    options.update(kwargs)
    return DiceCELoss(lambda_dice=lambda_dice, lambda_ce=lambda_ce, **options)
