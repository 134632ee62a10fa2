"""Ignite handlers the bundle configs attach: deliverable writers, resumable checkpoints, progress, reports."""

from samora_monai.handlers.checkpoint import ResumeCheckpointLoader, ResumeCheckpointSaver
from samora_monai.handlers.deliverable_writer import ExpertWriter, TeacherWriter
from samora_monai.handlers.progress_bar import LossProgressBar
from samora_monai.handlers.segmentation_report import SegmentationReportHandler
from samora_monai.handlers.utils import engine_loss, log_every

__all__ = [
    "ExpertWriter",
    "LossProgressBar",
    "ResumeCheckpointLoader",
    "ResumeCheckpointSaver",
    "SegmentationReportHandler",
    "TeacherWriter",
    "engine_loss",
    "log_every",
]
