"""Self-describing teacher checkpoints, and the student-side rule that a teacher must be trained."""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import torch
from torch import nn

from samora_monai.teachers.contrastive import ContrastiveTeacher
from samora_monai.teachers.mae import MAETeacher
from samora_monai.utils import atomic_output, load_record

__all__ = [
    "TEACHERS",
    "CHECKPOINT_FORMAT",
    "save_teacher",
    "read_teacher_metadata",
    "load_teacher",
    "build_teacher",
    "freeze",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "samora_monai.teacher"
FORMAT_VERSION = 1
#: SSL level -> teacher class
TEACHERS: dict[str, type[nn.Module]] = {"image": ContrastiveTeacher, "patch": MAETeacher}


def _teacher_class(level: str) -> type[nn.Module]:
    if level not in TEACHERS:
        raise ValueError(f"no teacher for level {level!r}; teachers exist for levels {sorted(TEACHERS)}")
    return TEACHERS[level]


def freeze(module: nn.Module) -> nn.Module:
    """Switch ``module`` to eval mode and stop gradients to all its parameters; returns it."""
    module.requires_grad_(False)
    return module.eval()


def save_teacher(teacher: nn.Module, path: str | os.PathLike, summary: dict[str, Any] | None = None) -> str:
    """Write ``teacher`` with its metadata (kind, level, hyper-parameters, image size, training summary).

    The file is written under a temporary name and renamed, so a failed save leaves no partial file.
    ``summary`` holds plain values (e.g. ``{"iterations": 1000, "final_loss": 0.12, "data": "..."}``).
    """
    path = os.fspath(path)
    record = {
        "format": CHECKPOINT_FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": teacher.kind,
        "level": teacher.level,
        "config": dict(teacher.config),
        "img_size": teacher.config["img_size"],
        "summary": dict(summary or {}),
        "pretrained": getattr(teacher, "pretrained", None),
        "state_dict": {k: v.detach().cpu() for k, v in teacher.state_dict().items()},
    }
    with atomic_output(path) as tmp:
        torch.save(record, tmp)
    return path


def read_teacher_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's record without building the network; errors name the file."""
    hint = "; write teacher files with samora_monai.teachers.save_teacher"
    return load_record(path, CHECKPOINT_FORMAT, "samora_monai teacher checkpoint", hint)


def load_teacher(path: str | os.PathLike, level: str, img_size: int | None = None) -> nn.Module:
    """Build the teacher a checkpoint describes, load its weights strictly and return it frozen.

    Args:
        path: a file written by :func:`save_teacher`.
        level: the SSL level the caller needs (``"image"`` or ``"patch"``); another level is an error.
        img_size: the student's input size; a patch teacher must have been built for exactly this size
            (its patch grid must equal the student's token grid).
    """
    path = os.fspath(path)
    cls = _teacher_class(level)
    record = read_teacher_metadata(path)
    if record["level"] != level or record["kind"] != cls.kind:
        raise ValueError(
            f"{path} holds a {record['kind']!r} teacher for level {record['level']!r}, "
            f"but a {cls.kind!r} teacher for level {level!r} was requested"
        )
    if level == "patch" and img_size is not None and record["img_size"] != img_size:
        raise ValueError(
            f"{path}: patch teacher was built for {record['img_size']} px images but the student uses {img_size} px; "
            "the teacher's patch grid must equal the student's token grid (retrain the teacher at this size)"
        )
    try:
        teacher = cls(**record["config"])
        teacher.load_state_dict(record["state_dict"], strict=True)
    except (TypeError, RuntimeError) as e:
        raise ValueError(f"{path}: weights do not match the recorded {record['kind']} architecture: {e}") from e
    logger.info("loaded %s teacher from %s (summary: %s)", record["kind"], path, record.get("summary"))
    return freeze(teacher)


def build_teacher(
    level: str,
    checkpoint: str | os.PathLike | None = None,
    allow_untrained: bool = False,
    img_size: int | None = None,
    **config: Any,
) -> nn.Module:
    """The frozen teacher a student objective distils from.

    Args:
        level: ``"image"`` (contrastive ResNet) or ``"patch"`` (MAE).
        checkpoint: a trained teacher file (see :func:`save_teacher`); required unless ``config`` names
            ``pretrained`` weights or ``allow_untrained``.
        allow_untrained: tests only: build a randomly initialised teacher from ``config`` (a warning says so).
        img_size: the student's input size (checked against a patch teacher; passed to a new teacher).
        config: constructor arguments of the teacher class, used only without a checkpoint; ``pretrained``
            (a local torchvision ResNet or official MAE file) builds the teacher from those weights as they are.

    Raises:
        RuntimeError: neither a checkpoint nor ``pretrained`` weights were given and ``allow_untrained`` is False.
    """
    cls = _teacher_class(level)
    if checkpoint is not None:
        if config:
            logger.info("teacher config %s ignored: the architecture comes from %s", sorted(config), checkpoint)
        return load_teacher(checkpoint, level, img_size=img_size)
    if config.get("pretrained") is not None:
        logger.info("%s-level teacher: %s from %s, not trained further", level, cls.__name__, config["pretrained"])
    elif not allow_untrained:
        raise RuntimeError(
            f"no {level}-level teacher checkpoint given: distilling from a random {cls.__name__} teaches nothing. "
            f"Train one with the pretrain_teacher_{level} workflow and pass its file as the teacher checkpoint, "
            "or pass pretrained=<local weights> "
            "(allow_untrained=True exists for tests only)"
        )
    else:
        warnings.warn(
            f"the {level}-level teacher ({cls.__name__}) is randomly initialised and untrained "
            "(allow_untrained=True); its features carry no information",
            stacklevel=2,
        )
    if img_size is not None:
        config = {**config, "img_size": img_size}
    return freeze(cls(**config))
