"""The bundle's own ``train.yaml`` / ``evaluate.yaml`` / ``inference.yaml`` as the workflows of one ``samora``
algorithm: :class:`monai.bundle.ConfigWorkflow` with overrides filled from the template settings (data statistics,
fold datalist, user values), so the recipe is written once, in the bundle."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.bundle import ConfigWorkflow
from monai.utils import look_up_option

from samora_monai.auto3dseg.config import SamoraSettings
from samora_monai.utils import atomic_output, bundle_dir

__all__ = ["WARMUP_FRACTION", "WORKFLOWS", "bundle_overrides", "bundle_workflow", "clamp_warmup", "write_fold_datalist"]

logger = logging.getLogger(__name__)

WARMUP_FRACTION = 0.1  # warm-up never exceeds this fraction of the run's iterations
# workflow -> (config files of the bundle, ConfigWorkflow type, the component that slices volumes)
WORKFLOWS = {
    "train": (("train.yaml",), "train", "validate#inferer"),
    "evaluate": (("train.yaml", "evaluate.yaml"), "infer", "validate#inferer"),
    "inference": (("inference.yaml",), "infer", "inferer"),
}


def clamp_warmup(warmup_iters: int, total_iters: int, fraction: float = WARMUP_FRACTION) -> int:
    """``min(warmup_iters, floor(fraction * total_iters))``, logged when it clamps (a run of few slices would
    otherwise end inside the warm-up, with a learning rate that never reached its value)."""
    limit = max(0, int(fraction * total_iters))
    if int(warmup_iters) > limit:
        logger.warning(
            "warm-up clamped from %d to %d iterations (%g of the run's %d iterations)",
            warmup_iters, limit, fraction, total_iters,
        )  # fmt: skip
        return limit
    return int(warmup_iters)


def write_fold_datalist(settings: SamoraSettings, train_files: Sequence[dict], val_files: Sequence[dict]) -> str:
    """``<ckpt_path>/datalist_fold<k>.json``: the fold's ``training`` and ``validation`` volumes (absolute paths, as
    ``datafold_read`` returns them), which the bundle reads as its ``datalist``."""
    keep = ("image", "label")
    sections = {
        "training": [{k: item[k] for k in keep} for item in train_files],
        "validation": [{k: item[k] for k in keep} for item in val_files],
    }
    path = os.path.join(settings.ckpt_path, f"datalist_fold{settings.fold}.json")
    with atomic_output(path) as tmp, open(tmp, "w") as f:
        json.dump(sections, f, indent=1)
    return path


def bundle_overrides(settings: SamoraSettings, workflow: str, expert_dir: str) -> dict[str, Any]:
    """Overrides of the bundle's configs for ``workflow`` (``"train"``, ``"evaluate"``, ``"inference"``): the fold's
    folder as ``bundle_root``/``ckpt_dir``, classes, intensity and backbone from the settings, the slice axis, the
    experts; then the user's ``bundle_overrides``."""
    configs, _, inferer = look_up_option(workflow, WORKFLOWS)
    out = {
        "bundle_root": settings.ckpt_path,
        "ckpt_dir": settings.ckpt_path,
        "dataset_dir": settings.data_file_base_dir,
        "class_names": settings.foreground_names,
        "label_mapping": None,  # Auto3DSeg labels are class indices already
        "modality": settings.modality,
        "intensity_window": settings.intensity_window,
        "percentiles": settings.percentiles,
        "variant": settings.variant,
        "img_size": settings.img_size,
        "random_init": settings.random_init,
        "sam_checkpoint": settings.sam_checkpoint,
        "expert_dir": expert_dir,
        "allow_missing_experts": settings.allow_missing_experts,
        "network_def#lora_rank": settings.lora_rank,
        "network_def#in_channels": settings.input_channels,
        "slice_batch_size": settings.slice_batch_size,
        "num_workers": settings.num_workers,
        f"{inferer}#spatial_dim": settings.slice_axis,
    }
    if settings.device:
        device = torch.device(settings.device)
        out.update(device=device, amp=device.type == "cuda")
    if workflow == "train":
        out.update(resume_checkpoint=None, val_interval=settings.val_interval, output_dir=settings.ckpt_path + "/eval")
        if settings.num_epochs is not None:
            out["epochs"] = settings.num_epochs
        if settings.num_images_per_batch is not None:
            out["batch_size"] = settings.num_images_per_batch
        if settings.slice_axis != 2:  # the slice dataset cuts the last axis: move the slice axis there
            order = [0] + [i + 1 for i in range(3) if i != settings.slice_axis] + [settings.slice_axis + 1]
            out["train#dataset#transform"] = (
                f"$monai.transforms.Compose([@train#preprocessing, monai.transforms.Transposed(['image', 'label'], "
                f"{order})])"
            )
    out.update(settings.bundle_overrides)
    return out


def bundle_workflow(
    settings: SamoraSettings, workflow: str, expert_dir: str, extra: Mapping[str, Any] | None = None
) -> ConfigWorkflow:
    """The bundle's ``workflow`` as a :class:`ConfigWorkflow` (not yet initialised) with :func:`bundle_overrides`
    and then ``extra`` applied."""
    configs, workflow_type, _ = look_up_option(workflow, WORKFLOWS)
    folder = bundle_dir(settings.bundle) / "configs"
    overrides = {**bundle_overrides(settings, workflow, expert_dir), **dict(extra or {})}
    wf = ConfigWorkflow(
        config_file=[str(folder / c) for c in configs],
        logging_file=False,
        workflow_type=workflow_type,
        **overrides,
    )
    if workflow == "train":  # the warm-up (the bundle's or the user's), clamped to a fraction of the run
        wf.parser["auto3dseg_warmup_iters"] = wf.parser.get("warmup_iters")
        wf.parser["warmup_iters"] = (
            "$samora_monai.auto3dseg.bundle_run.clamp_warmup(@auto3dseg_warmup_iters, "
            "@train#trainer#max_epochs * len(@train#dataloader))"
        )
    return wf
