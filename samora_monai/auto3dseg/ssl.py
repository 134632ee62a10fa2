"""``ssl: run``: SAMora stage 1 (teachers and LoRA experts) of one ``samora`` algorithm, on the fold's unlabeled
pool, through the bundle's own ``pretrain_*`` workflows (the stage-1 pipeline the demo uses)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from monai.bundle import ConfigParser

from samora_monai.apps.stage1_pipeline import LEVELS, STAGE1_STEPS, run_stage1
from samora_monai.auto3dseg.config import SamoraSettings
from samora_monai.data import prepare_unlabeled
from samora_monai.data.datalists import write_datalist
from samora_monai.utils import bundle_dir

__all__ = ["run_ssl", "ssl_overrides"]

logger = logging.getLogger(__name__)


def _datalist_images(datalist: str, base_dir: str | None, key: str) -> list[str]:
    """``image`` paths of section ``key`` of ``datalist`` joined to ``base_dir`` as ``datafold_read`` does (none
    when the section is absent)."""
    items = ConfigParser.load_config_file(datalist).get(key) or []
    return [os.path.join(base_dir, item["image"]) if base_dir else item["image"] for item in items]


def _case_names(paths: Sequence[str]) -> dict[str, str]:
    """Path -> case name: the file name without its suffixes, or the folder when those repeat (LA
    ``<ID>/mri_norm2.h5``)."""
    unique = set(paths)
    stems = {p: Path(p).name.split(".")[0] for p in unique}
    if len(set(stems.values())) < len(unique):
        return {p: Path(p).parent.name for p in unique}
    return stems


def ssl_overrides(settings: SamoraSettings) -> dict[str, list[str]]:
    """``ssl_overrides``: bundle CLI arguments per stage-1 step name (or ``all``), e.g.
    ``{"teacher_image": ["--network_def#arch", "resnet18"]}``."""
    known = {"all", *(step[0] for step in STAGE1_STEPS)}
    unknown = sorted(set(settings.ssl_overrides) - known)
    if unknown:
        raise ValueError(f"ssl_overrides: unknown step(s) {unknown}; use {sorted(known)}")
    return {k: [str(a) for a in v] for k, v in settings.ssl_overrides.items()}


def run_ssl(settings: SamoraSettings, train_files: Sequence[dict], val_files: Sequence[dict]) -> str:
    """SAMora stage 1 for one fold; returns the folder of the expert files ``image.pt``/``patch.pt``/``pixel.pt``.

    The unlabeled pool is the fold's training images plus the datalist's ``unlabeled`` items, less any case of the
    fold's validation images or the ``testing`` items (also passed to the leakage guard of
    :func:`~samora_monai.data.prepare_unlabeled`). Slices are cut at the algorithm's ``img_size`` and intensity
    settings under ``<ckpt_path>/ssl/data/unlabeled``; teachers and experts are trained by
    :func:`~samora_monai.apps.stage1_pipeline.run_stage1` with the ``pretrain_*`` configs of ``bundle`` into
    ``<ckpt_path>/ssl/models`` (step logs in ``<ckpt_path>/ssl/logs``).
    """
    if settings.slice_axis != 2:
        raise ValueError(
            f"ssl='run' cuts stage-1 slices along the last axis but slice_axis={settings.slice_axis}; train the "
            "experts separately (prepare_unlabeled + the bundle's pretrain workflows) and set expert_dir"
        )
    configs = bundle_dir(settings.bundle) / "configs"
    datalist, base, fold = settings.data_list_file_path, settings.data_file_base_dir, settings.fold
    held_out = [f["image"] for f in val_files] + _datalist_images(datalist, base, "testing")
    pool = [f["image"] for f in train_files] + _datalist_images(datalist, base, "unlabeled")
    names = _case_names([*pool, *held_out])
    excluded = sorted({names[p] for p in held_out})
    kept = [p for p in dict.fromkeys(pool) if names[p] not in excluded]
    dropped = sorted({names[p] for p in pool} & set(excluded))
    if dropped:
        logger.warning("stage 1: leaving out %s (validation or testing cases of fold %s)", dropped, fold)
    if not kept:
        raise ValueError(f"{datalist}: no image of fold {fold} is left for stage 1 after the exclusions")

    out = Path(settings.ckpt_path) / "ssl"
    pool_file = write_datalist({"training": [{"image": p} for p in kept]}, out / "ssl_pool.json")
    slices = prepare_unlabeled(
        str(out / "data" / "unlabeled"), datalist=str(pool_file), modality=settings.modality,
        spatial_size=settings.img_size, exclude=excluded, window=settings.intensity_window,
        percentiles=settings.percentiles,
    )  # fmt: skip
    backbone = ["--variant", settings.variant, "--lora_rank", str(settings.lora_rank),
                "--random_init", str(settings.random_init).lower()]  # fmt: skip
    if not settings.random_init:
        backbone += ["--sam_checkpoint", os.path.abspath(str(settings.sam_checkpoint))]
    extra = ssl_overrides(settings)
    common = ["--img_size", str(settings.img_size), "--modality", settings.modality, "--epochs",
              str(settings.ssl_epochs), "--num_workers", str(settings.num_workers)]  # fmt: skip
    if settings.num_images_per_batch is not None:
        common += ["--batch_size", str(settings.num_images_per_batch)]
    written = run_stage1(
        configs, out, slices, overrides=[*common, *extra.get("all", [])],
        teacher_overrides={lv: extra.get(f"teacher_{lv}", []) for lv in ("image", "patch")},
        expert_overrides={lv: [*backbone, *extra.get(f"expert_{lv}", [])] for lv in LEVELS},
    )  # fmt: skip
    logger.info("stage-1 experts of fold %s: %s", fold, {lv: written[f"expert_{lv}"] for lv in LEVELS})
    return os.path.dirname(written["expert_image"])
