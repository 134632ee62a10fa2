"""Stage-1 teachers: the image-level contrastive ResNet and the patch-level MAE, with self-describing files."""

from samora_monai.teachers.checkpoint import (
    CHECKPOINT_FORMAT,
    TEACHERS,
    build_teacher,
    freeze,
    load_teacher,
    read_teacher_metadata,
    save_teacher,
)
from samora_monai.teachers.contrastive import ContrastiveTeacher, TwoViewd, as_three_channels, contrastive_augment
from samora_monai.teachers.mae import MAETeacher, patchify, random_keep_indices

__all__ = [
    "CHECKPOINT_FORMAT",
    "TEACHERS",
    "ContrastiveTeacher",
    "MAETeacher",
    "TwoViewd",
    "as_three_channels",
    "build_teacher",
    "contrastive_augment",
    "freeze",
    "load_teacher",
    "patchify",
    "random_keep_indices",
    "read_teacher_metadata",
    "save_teacher",
]
