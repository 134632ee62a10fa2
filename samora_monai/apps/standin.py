"""A stand-in for SAM's pre-training, trained here on the CPU: NOT Segment Anything, and no evidence about it.

No pretrained SAM exists on the machines the demo runs on, and a frozen SAM with random weights has no features
worth fusing. :func:`pretrain_standin` therefore pre-trains the ``tiny`` SAM configuration (segment_anything's own
``Sam`` classes: image encoder, prompt encoder, and the standard mask decoder with 3 + 1 mask tokens and the IoU
head) in two short, seeded phases, in the spirit of SAM's origins:

(a) masked image modelling of the encoder on unlabeled phantom CT slices (images only) generated with phantom seeds
    and case ids that no demo case uses (:func:`standin_cases`, :func:`standin_slices`);
(b) promptable class-agnostic segmentation (boxes and points through the real prompt encoder) of random ellipses,
    polygons and blobs with random intensities, textures and noise, painted on those unlabeled slices or on
    synthetic CT-like backgrounds, and (a ``region_fraction`` of the samples) of automatic regions of the unlabeled
    slices, computed from the image alone by a graph-based over-segmentation, like SAM's fully automatic masks
    (:mod:`samora_monai.apps.shapes`); the shapes' own masks and those regions are the only targets.

No organ label, and no image of a demo training or held-out case, reaches it. The result is written atomically as
an official-format SAM state dict (keys ``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``, as
``segment_anything``'s ``Sam`` has them) into a cache folder, and is loaded like ``sam_vit_b_01ec64.pth``:
``SamoraNet(variant="tiny", img_size=..., sam_checkpoint=path)``. A demo on top of it says something about the
SAMora pipeline on a small pretrained backbone, nothing about real SAM.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

__all__ = ["STANDIN_NOTE", "StandinSettings", "standin_settings", "standin_cases", "standin_slices",
           "shape_samples", "standin_path", "pretrain_standin"]

logger = logging.getLogger(__name__)

STANDIN_NOTE = (
    "stand-in SAM backbone: the 'tiny' SAM configuration pre-trained HERE on the CPU (masked image modelling on "
    "unlabeled phantom CT slices of cases no demo uses, then box/point-prompted segmentation of random shapes); it "
    "is NOT Segment Anything, it never saw an organ label or a demo case, and numbers obtained with it say nothing "
    "about real SAM."
)
RECIPE_VERSION = 1  # bump when the training code changes what a given StandinSettings produces
STANDIN_SEED_OFFSET = 7_919_000  # phantom seed of the stand-in's volumes = settings.seed + this offset
STANDIN_FIRST_CASE = 1000  # stand-in case ids start here; the demo's phantom ids are BTCV's, all below 100
DEMO_FOV_MM = (307.2, 307.2, 240.0)  # the demo phantom's field of view: 128 x 128 x 40 voxels of 2.4 x 2.4 x 6 mm


@dataclass(frozen=True)
class StandinSettings:
    """Everything the stand-in checkpoint is a function of (its cache name hashes these)."""

    img_size: int
    variant: str = "tiny"
    num_volumes: int = 8
    depth: int = 40  # slices per volume
    mim_steps: int = 1500
    seg_steps: int = 300
    batch_size: int = 8
    mim_lr: float = 1.5e-3
    seg_lr: float = 1e-3
    mask_ratio: float = 0.6
    num_shape_samples: int = 400
    synthetic_background_fraction: float = 0.3
    region_fraction: float = 0.0  # share of promptable samples that are automatic regions of an unlabeled slice
    max_shapes: int = 6
    max_prompts: int = 4
    seed: int = 0


def standin_settings(img_size: int = 128, quick: bool = False, seed: int = 0) -> StandinSettings:
    """The full recipe (a few CPU minutes at 128 px) or ``quick`` (seconds, for tests)."""
    if quick:
        return StandinSettings(img_size=img_size, num_volumes=1, depth=8, mim_steps=3, seg_steps=3, batch_size=2,
                               num_shape_samples=4, seed=seed)
    return StandinSettings(img_size=img_size, seed=seed)


def standin_cases(settings: StandinSettings) -> list[tuple[int, int]]:
    """(phantom seed, case id) of every unlabeled volume the stand-in sees: a seed offset by
    ``STANDIN_SEED_OFFSET`` and ids from ``STANDIN_FIRST_CASE``, so no case of any demo run is among them."""
    seed = settings.seed + STANDIN_SEED_OFFSET
    return [(seed, STANDIN_FIRST_CASE + i) for i in range(settings.num_volumes)]


def standin_slices(settings: StandinSettings, min_body_fraction: float = 0.05) -> np.ndarray:
    """Axial slices [N, S, S] float32 in [0, 1] (the CT window) of the stand-in's unlabeled phantom volumes.

    Only the image of each phantom case is kept; the phantom's label volume is never read.
    """
    from samora_monai.apps import phantom
    from samora_monai.data.transforms import CT_WINDOW

    size = settings.img_size
    shape = (size, size, settings.depth)
    spacing = tuple(f / n for f, n in zip(DEMO_FOV_MM, shape, strict=True))
    slices = []
    for seed, case_id in standin_cases(settings):
        image = phantom.make_phantom_case(case_id, shape, spacing, seed)[0]  # [X, Y, Z] HU; index 1 (labels) unused
        body = (image > -500).mean(axis=(0, 1)) >= min_body_fraction
        scaled = np.clip((image[..., body] - CT_WINDOW[0]) / (CT_WINDOW[1] - CT_WINDOW[0]), 0.0, 1.0)
        slices.append(np.moveaxis(scaled, -1, 0).astype(np.float32))
    return np.concatenate(slices)


def shape_samples(
    settings: StandinSettings, backgrounds: np.ndarray, rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``settings.num_shape_samples`` (image [S, S], masks [N, S, S]) pairs of random shapes, painted on a random
    slice of ``backgrounds`` [M, S, S] or on a synthetic background."""
    from samora_monai.apps.shapes import region_sample, shape_sample

    samples = []
    for _ in range(settings.num_shape_samples):
        if settings.region_fraction > 0 and rng.random() < settings.region_fraction:
            samples.append(region_sample(rng, backgrounds[rng.integers(len(backgrounds))], settings.max_shapes))
            continue
        synthetic = rng.random() < settings.synthetic_background_fraction
        background = None if synthetic else backgrounds[rng.integers(len(backgrounds))]
        samples.append(shape_sample(rng, settings.img_size, background, settings.max_shapes))
    return samples


def standin_path(settings: StandinSettings, cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache_dir>/standin_<variant>_<img_size>_<hash>.pth``; default folder ``$SAMORA_CACHE`` or
    ``~/.cache/samora_monai``. The hash covers the settings and ``RECIPE_VERSION``."""
    if cache_dir is None:
        cache_dir = os.environ.get("SAMORA_CACHE") or Path.home() / ".cache" / "samora_monai"
    key = json.dumps({"recipe": RECIPE_VERSION, **asdict(settings)}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(cache_dir) / f"standin_{settings.variant}_{settings.img_size}_{digest}.pth"


def pretrain_standin(
    cache_dir: str | os.PathLike | None = None, img_size: int = 128, quick: bool = False, seed: int = 0,
    force: bool = False,
) -> str:
    """Pre-train the stand-in SAM once and return the path of its cached checkpoint.

    Args:
        cache_dir: folder of the cached checkpoints (default ``$SAMORA_CACHE`` or ``~/.cache/samora_monai``).
        img_size: input size of the encoder (the demo's, e.g. 128); a multiple of 16.
        quick: the few-second recipe of the tests (a worse backbone).
        seed: seed of everything (phantom volumes, shapes, weights, batches); same seed, same tensors on one machine
            with the same thread count.
        force: retrain even when the checkpoint is cached.

    Returns:
        path of the ``.pth`` file, an official-format SAM state dict; ``<path>.json`` beside it records the
        settings, the data, the losses and the time taken.
    """
    import torch

    from samora_monai.apps.standin_train import build_standin_sam, masked_image_modeling, promptable_segmentation
    from samora_monai.networks.sam_backbone import _check_img_size

    _check_img_size(img_size)
    settings = standin_settings(img_size, quick, seed)
    path = standin_path(settings, cache_dir)
    if path.is_file() and not force:
        print(f"{STANDIN_NOTE}\ncached: {path}", flush=True)
        return str(path)
    print(f"{STANDIN_NOTE}\ntraining it once ({settings}) -> {path}", flush=True)
    start, cpu = time.perf_counter(), time.process_time()
    rng = np.random.default_rng([seed, STANDIN_SEED_OFFSET])
    torch.manual_seed(seed)
    sam = build_standin_sam(settings.variant, img_size)
    slices = standin_slices(settings)
    mim = masked_image_modeling(sam, slices, settings.mim_steps, settings.batch_size, settings.mim_lr,
                                settings.mask_ratio, rng)
    print(f"(a) masked image modelling on {len(slices)} unlabeled slices: loss {mim[0]:.4f} -> {mim[-1]:.4f}",
          flush=True)
    samples = shape_samples(settings, slices, rng)
    seg = promptable_segmentation(sam, samples, settings.seg_steps, settings.batch_size, settings.seg_lr,
                                  settings.max_prompts, rng)
    print(f"(b) promptable segmentation of {len(samples)} random-shape images: loss {seg[0]:.4f} -> {seg[-1]:.4f}",
          flush=True)
    record = {
        "what": STANDIN_NOTE,
        "settings": asdict(settings),
        "recipe_version": RECIPE_VERSION,
        "unlabeled_cases": [{"phantom_seed": s, "case_id": c} for s, c in standin_cases(settings)],
        "num_slices": int(len(slices)),
        "num_shape_images": len(samples),
        "loss": {"mim_first": mim[0], "mim_last": mim[-1], "seg_first": seg[0], "seg_last": seg[-1]},
        "seconds": round(time.perf_counter() - start, 1),
        "cpu_seconds": round(time.process_time() - cpu, 1),
        "torch_threads": torch.get_num_threads(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(sam.state_dict(), tmp)
    Path(f"{tmp}.json").write_text(json.dumps(record, indent=2))
    os.replace(f"{tmp}.json", f"{path}.json")
    os.replace(tmp, path)
    print(f"stand-in SAM written to {path} in {record['seconds']} s ({record['cpu_seconds']} s CPU)", flush=True)
    return str(path)
