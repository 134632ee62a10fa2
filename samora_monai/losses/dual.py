"""H-SAM's dual-stage loss on the auxiliary outputs of ``SamoraNet(..., aux=True)``."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from samora_monai.losses.low_res import LowResLoss
from samora_monai.losses.segmentation import segmentation_loss

__all__ = ["DualStageLoss", "dual_loss_weight"]


def dual_loss_weight(epoch: int, base: float = 0.6, decay: float = 0.99) -> float:
    """H-SAM's stage-2 weight ``w = base ** (decay ** epoch)`` (0-based epoch): 0.6 at epoch 0, rising towards 1."""
    return base ** (decay**epoch)


def _segmentation_loss(lambda_dice: float, lambda_ce: float | None) -> nn.Module:
    return segmentation_loss(lambda_dice=lambda_dice, lambda_ce=1.0 - lambda_dice if lambda_ce is None else lambda_ce)


class DualStageLoss(nn.Module):
    """H-SAM's loss: ``(1 - w) * loss1 + w * loss2`` with ``w = dual_loss_weight(epoch)``.

    ``loss1``: Dice + CE on the stage-1 ``low_res_logits`` [B, K+1, h, w] against labels resized to h x w;
    ``loss2``: Dice + CE on the stage-2 ``logits2`` [B, K+1, H, W] against labels [B, 1, H, W]. ``epoch`` (0-based)
    is set by :class:`~samora_monai.handlers.DualLossEpochHandler` at every trainer epoch.

    Args:
        lambda_dice: Dice weight (H-SAM: 0.9, H-SAMora: 0.8); ``lambda_ce`` defaults to ``1 - lambda_dice``.
        base, decay: the schedule ``w = base ** (decay ** epoch)``.
    """

    def __init__(
        self, lambda_dice: float = 0.9, lambda_ce: float | None = None, base: float = 0.6, decay: float = 0.99
    ) -> None:
        super().__init__()
        self.loss1 = LowResLoss(_segmentation_loss(lambda_dice, lambda_ce))
        self.loss2 = _segmentation_loss(lambda_dice, lambda_ce)
        self.base, self.decay = base, decay
        self.epoch = 0

    @property
    def weight(self) -> float:
        return dual_loss_weight(self.epoch, self.base, self.decay)

    def forward(self, pred: Mapping[str, torch.Tensor], label: torch.Tensor) -> torch.Tensor:
        if "logits2" not in pred:
            raise KeyError("DualStageLoss needs the H-SAM decoder's outputs (network decoder: hsam, aux=True)")
        w = self.weight
        return (1.0 - w) * self.loss1(pred, label) + w * self.loss2(pred["logits2"], label)
