"""Ignite/MONAI engine pieces: stage-2 fine-tuning helpers (stage-1 engines live beside them)."""

from samora_monai.engines.atomic_checkpoint import AtomicCheckpointSaver, AtomicDiskSaver, resume_files
from samora_monai.engines.stage1 import (
    ExpertWriter,
    LossProgressBar,
    SelfSupervisedTrainer,
    StudentLoss,
    TeacherWriter,
    engine_loss,
    expert_modules,
    log_every,
    stage1_student,
    stage1_teacher,
    unlabeled_dataset,
    warmup_lr,
)
from samora_monai.engines.stage2 import (
    ResumeCheckpointLoader,
    ResumeCheckpointSaver,
    SegmentationReportHandler,
    expert_files,
    latest_checkpoint,
    stage2_network,
    trainable_parameters,
    warmup_poly_lr,
)

__all__ = [
    "AtomicCheckpointSaver",
    "AtomicDiskSaver",
    "resume_files",
    "ResumeCheckpointLoader",
    "ResumeCheckpointSaver",
    "SegmentationReportHandler",
    "expert_files",
    "latest_checkpoint",
    "stage2_network",
    "trainable_parameters",
    "warmup_poly_lr",
    "ExpertWriter",
    "LossProgressBar",
    "SelfSupervisedTrainer",
    "StudentLoss",
    "TeacherWriter",
    "engine_loss",
    "expert_modules",
    "log_every",
    "stage1_student",
    "stage1_teacher",
    "unlabeled_dataset",
    "warmup_lr",
]
