"""Ignite handlers the bundle configs attach: deliverable writers, atomic and resumable checkpoints, readable model
loading, the non-finite loss guard, H-SAM's dual-loss epoch, learning curves, progress and reports."""

from samora_monai.handlers.atomic_checkpoint import AtomicCheckpointSaver, AtomicDiskSaver, resume_files
from samora_monai.handlers.checkpoint import ResumeCheckpointLoader, ResumeCheckpointSaver, resume_state
from samora_monai.handlers.deliverable_writer import ExpertWriter, TeacherWriter
from samora_monai.handlers.dual_loss import DualLossEpochHandler
from samora_monai.handlers.finite_loss import StopOnNonFiniteLoss, batch_sources
from samora_monai.handlers.learning_curve import LearningCurveWriter
from samora_monai.handlers.model_meta import ModelMetaWriter
from samora_monai.handlers.model_selection import BestModelSaver, LastModelSaver
from samora_monai.handlers.model_weights import ModelCheckpointLoader, checkpoint_problem, load_model_weights
from samora_monai.handlers.progress_bar import LossProgressBar
from samora_monai.handlers.segmentation_report import SegmentationReportHandler
from samora_monai.handlers.utils import engine_loss, log_every

__all__ = [
    "AtomicCheckpointSaver",
    "AtomicDiskSaver",
    "BestModelSaver",
    "DualLossEpochHandler",
    "ExpertWriter",
    "LastModelSaver",
    "LearningCurveWriter",
    "LossProgressBar",
    "ModelCheckpointLoader",
    "ModelMetaWriter",
    "ResumeCheckpointLoader",
    "ResumeCheckpointSaver",
    "SegmentationReportHandler",
    "StopOnNonFiniteLoss",
    "TeacherWriter",
    "batch_sources",
    "checkpoint_problem",
    "engine_loss",
    "load_model_weights",
    "log_every",
    "resume_files",
    "resume_state",
]
