"""Ignite/MONAI engines: the stage-1 self-supervised trainer and the factories the bundle configs call."""

from samora_monai.engines import factories
from samora_monai.engines.factories import *  # noqa: F403 (re-exports factories.__all__, listed once there)
from samora_monai.engines.trainer import SelfSupervisedTrainer, StudentLoss

__all__ = ["SelfSupervisedTrainer", "StudentLoss", *factories.__all__]
