"""Feature distances shared by the image- and patch-level distillation objectives."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["DISTANCES", "feature_distance"]

DISTANCES = ("mse", "smooth_l1", "cosine")


def feature_distance(pred: torch.Tensor, target: torch.Tensor, mode: str = "mse") -> torch.Tensor:
    """Mean distance between student ``pred`` and teacher ``target`` features [..., D] of the same shape.

    ``mse`` and ``smooth_l1`` average over all elements; ``cosine`` is the mean of 1 - cos over the vectors.
    """
    if pred.shape != target.shape:
        raise ValueError(f"student features {tuple(pred.shape)} and teacher features {tuple(target.shape)} differ")
    if mode == "mse":
        return F.mse_loss(pred, target)
    if mode == "smooth_l1":
        return F.smooth_l1_loss(pred, target)
    if mode == "cosine":
        return (1.0 - F.cosine_similarity(pred, target, dim=-1)).mean()
    raise ValueError(f"unknown distance {mode!r}; choose one of {DISTANCES}")
