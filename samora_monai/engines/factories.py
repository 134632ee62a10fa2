"""Factories the bundle configs call to build what the trainers get.

- :func:`unlabeled_dataset`: the slice cache of ``prepare_unlabeled`` with its modality checked;
- :func:`stage1_teacher`, :func:`stage1_student`: the frozen teacher a student distils from, and the student
  network with only one expert (and the objective's head) trainable; :func:`expert_modules`: what a stage-1 resume
  checkpoint stores of the student;
- :func:`stage2_network`, :func:`trainable_parameters`: only HL-Attn and the mask decoder train in stage 2;
- :func:`expert_files`, :func:`latest_checkpoint`: optional files found in the bundle's ``models/`` folder.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from samora_monai.data import UnlabeledSliceDataset
from samora_monai.handlers.atomic_checkpoint import resume_files
from samora_monai.networks import DEFAULT_LEVELS, SamoraNet, configure_stage
from samora_monai.teachers import TEACHERS, build_teacher
from samora_monai.utils import as_bool

__all__ = [
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

logger = logging.getLogger(__name__)


PREPARE_HINT = (
    "create it with `python -m samora_monai prepare_unlabeled --output_dir <bundle>/data/unlabeled "
    "--glob '<volumes>/*.nii.gz' --modality <ct|mr> --spatial_size <img_size>` (or pass --unlabeled_datalist)"
)


def unlabeled_dataset(
    datalist: str | os.PathLike, transform: Callable | None = None, modality: str | None = None
) -> UnlabeledSliceDataset:
    """The slices ``prepare_unlabeled`` wrote (``[1, S, S]`` in [0, 1] per item, then ``transform``).

    Raises ``FileNotFoundError`` (with the command that creates it) when the datalist is missing, and ``ValueError``
    when it was prepared for another ``modality`` than the bundle's.
    """
    path = os.fspath(datalist)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"unlabeled datalist not found: {path}; {PREPARE_HINT}")
    with open(path) as f:
        settings = json.load(f).get("settings", {})
    prepared = settings.get("modality")
    if modality is not None and prepared is not None and str(prepared).lower() != str(modality).lower():
        raise ValueError(
            f"{path}: slices were prepared with modality {prepared!r} but the workflow runs with {modality!r}; "
            f"pass --modality {prepared} to the workflow (or prepare them again with --modality {modality})"
        )
    dataset = UnlabeledSliceDataset(path, transform)
    logger.info("stage-1 data: %d slices from %s (prepared at %s px)", len(dataset), path, settings.get("spatial_size"))
    return dataset


def stage1_teacher(
    level: str,
    checkpoint: str | os.PathLike | None,
    allow_untrained: bool | str = False,
    img_size: int | None = None,
    config: Mapping[str, Any] | None = None,
) -> nn.Module:
    """The frozen teacher of a student workflow, from the file ``pretrain_teacher_<level>`` wrote.

    ``checkpoint`` None or a missing file is an error naming the workflow that creates it, unless
    ``allow_untrained`` (tests only): then a randomly initialised teacher is built from ``config`` (constructor
    arguments) and the log says so loudly. An existing file is always used. The returned teacher's
    ``source_checkpoint`` is the absolute path of the file, or ``"untrained"``.
    """
    allow_untrained = as_bool(allow_untrained)  # "true" from the command line
    if level not in TEACHERS:
        raise ValueError(f"no teacher for level {level!r}; teachers exist for levels {sorted(TEACHERS)}")
    path = None if checkpoint is None else os.fspath(checkpoint)
    if path is not None and not os.path.isfile(path):
        if not allow_untrained:
            raise FileNotFoundError(
                f"{level}-level teacher checkpoint not found: {path}. Train it first with "
                "`python -m monai.bundle run training --config_file "
                f"\"['configs/pretrain.yaml','configs/pretrain_teacher_{level}.yaml']\"`, "
                "or pass an existing file with --teacher_checkpoint <path>"
            )
        path = None
    if path is None and allow_untrained:
        logger.warning(
            "USING AN UNTRAINED %s-LEVEL TEACHER (allow_untrained_teacher: true): for tests only, the expert "
            "learns nothing useful", level.upper()
        )
    teacher = build_teacher(level, path, allow_untrained=allow_untrained, img_size=img_size, **dict(config or {}))
    teacher.source_checkpoint = os.path.abspath(path) if path is not None else "untrained"
    return teacher


def stage1_student(
    network: SamoraNet, objective: nn.Module, level: str, device: torch.device | str = "cpu"
) -> SamoraNet:
    """Freeze everything but expert ``level`` and the objective's head (``configure_stage``), move both to
    ``device`` and return the network."""
    counts = configure_stage(network, "stage1", level, heads=[objective.head])
    logger.info("stage 1 (%s): %d trainable of %d parameters", level, counts["trainable"], counts["total"])
    objective.to(device)
    return network.to(device)


def expert_modules(network: SamoraNet, level: str) -> nn.ModuleList:
    """The expert ``level`` of every LoRA block as one module (shares the parameters): what a resume
    checkpoint needs to store of the frozen student network."""
    experts = [b.lora.experts[level] for b in network.samora_blocks if b.lora is not None]
    if not experts:
        raise ValueError(f"the network has no LoRA expert {level!r}")
    return nn.ModuleList(experts)


def stage2_network(net: SamoraNet, device: torch.device | str = "cpu") -> SamoraNet:
    """Apply ``configure_stage(net, "stage2")`` (only HL-Attn and the mask decoder train) and move to ``device``."""
    configure_stage(net, "stage2")  # logs the trainable / total parameter counts
    return net.to(device)


def trainable_parameters(net: nn.Module) -> list[nn.Parameter]:
    """The parameters with ``requires_grad`` (what the optimiser updates)."""
    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the network has no trainable parameters; apply stage2_network/configure_stage first")
    return params


def _present(folder: str | os.PathLike, levels: Sequence[str]) -> dict[str, str]:
    paths = {level: os.path.join(folder, f"{level}.pt") for level in levels}
    return {level: path for level, path in paths.items() if os.path.isfile(path)}


def expert_files(folder: str | os.PathLike, levels: Sequence[str] = DEFAULT_LEVELS) -> dict[str, str]:
    """``{level: "<folder>/<level>.pt"}`` for the stage-1 expert files that exist (none: stage 2 runs on the
    zero-initialised experts, i.e. the plain SAM encoder)."""
    found = _present(folder, levels)
    if found:
        logger.info("stage-1 experts: %s", found)
    else:
        logger.warning("no stage-1 expert files in %s: the experts stay at their zero initialisation", folder)
    return found


STAGE1_HINT = (
    "run stage 1 first: the five workflows of docs/pretraining.md, each `python -m monai.bundle run training "
    "--config_file \"['configs/pretrain.yaml','configs/pretrain_<name>.yaml']\"` (teacher_image, teacher_patch, "
    "image, patch, pixel), which write them there; or point --expert_dir at the folder holding image.pt, patch.pt "
    "and pixel.pt, or set --allow_missing_experts true for the 'no stage 1' ablation (SAM + HL-Attn, not SAMora)"
)


def stage2_experts(
    folder: str | os.PathLike, allow_missing: bool | str = False, levels: Sequence[str] = DEFAULT_LEVELS
) -> dict[str, str]:
    """``{level: "<folder>/<level>.pt"}`` of the stage-1 expert files stage 2 trains on.

    A missing file is an error naming ``folder`` and the stage-1 command, unless ``allow_missing`` (the "no stage
    1" ablation): then the missing experts stay at their zero initialisation and the log says ABLATION.
    """
    found = _present(folder, levels)
    missing = [f"{level}.pt" for level in levels if level not in found]
    if missing and not as_bool(allow_missing):
        raise FileNotFoundError(f"stage 2 needs the stage-1 experts: {missing} missing in {os.fspath(folder)}; "
                                f"{STAGE1_HINT}")
    if missing:
        logger.warning(
            "ABLATION (allow_missing_experts: true): no stage-1 experts %s in %s; they stay at their zero "
            "initialisation (SAM + HL-Attn, not SAMora)", missing, os.fspath(folder)
        )
    logger.info("stage-1 experts: %s", found)
    return found


def stage2_ablation(
    allow_missing: bool | str, experts: Mapping[str, str], levels: Sequence[str] = DEFAULT_LEVELS
) -> str | None:
    """The ablation ``models/model_meta.json`` records: "no stage 1" when ``allow_missing`` let :func:`stage2_experts`
    leave out some of ``levels``' expert files (``experts``: what it returned), else None."""
    if as_bool(allow_missing) and len(experts) < len(levels):
        return "no stage 1: zero-initialised experts (SAM + HL-Attn, not SAMora)"
    return None


def latest_checkpoint(ckpt_dir: str | os.PathLike, prefix: str = "latest") -> str | None:
    """The ``<prefix>_checkpoint_epoch=N.pt`` / ``..._iteration=N.pt`` in ``ckpt_dir`` with the highest N (the newest
    on a tie), i.e. what ``CheckpointSaver(file_prefix=prefix, save_interval=...)`` wrote last, or None."""
    files = resume_files(ckpt_dir, prefix)
    if not files:
        return None
    path = files[-1]
    logger.info("resuming from %s", path)
    return path
