"""Ignite handlers: H-SAM's dual-loss epoch, learning curves, the non-finite loss guard and the model checkpoint
loader with readable errors."""

from samora_monai.handlers.dual_loss import DualLossEpochHandler
from samora_monai.handlers.finite_loss import StopOnNonFiniteLoss, batch_sources
from samora_monai.handlers.learning_curve import LearningCurveWriter
from samora_monai.handlers.model_weights import ModelCheckpointLoader, checkpoint_problem, load_model_weights

__all__ = [
    "DualLossEpochHandler",
    "LearningCurveWriter",
    "ModelCheckpointLoader",
    "StopOnNonFiniteLoss",
    "batch_sources",
    "checkpoint_problem",
    "load_model_weights",
]
