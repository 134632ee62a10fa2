"""Ignite handlers for the bundles' workflows."""

from samora_monai.handlers.dual_loss import DualLossEpochHandler
from samora_monai.handlers.learning_curve import LearningCurveWriter
from samora_monai.handlers.model_meta import ModelMetaWriter

__all__ = ["DualLossEpochHandler", "LearningCurveWriter", "ModelMetaWriter"]
