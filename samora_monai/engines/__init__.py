"""Ignite/MONAI engines: the stage-1 self-supervised trainer and the factories the bundle configs call."""

from samora_monai.engines.factories import (
    expert_files,
    expert_modules,
    latest_checkpoint,
    stage1_student,
    stage1_teacher,
    stage2_ablation,
    stage2_experts,
    stage2_network,
    trainable_parameters,
    unlabeled_dataset,
)
from samora_monai.engines.trainer import SelfSupervisedTrainer, StudentLoss

__all__ = [
    "SelfSupervisedTrainer",
    "StudentLoss",
    "expert_files",
    "expert_modules",
    "latest_checkpoint",
    "stage1_student",
    "stage1_teacher",
    "stage2_ablation",
    "stage2_experts",
    "stage2_network",
    "trainable_parameters",
    "unlabeled_dataset",
]
