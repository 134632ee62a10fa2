"""Deterministic abdominal CT phantom written in the raw BTCV layout, for the demo and the tests.

Each case is an int16 HU volume (``imagesTr/img00XX.nii.gz``) and, for labelled cases, a uint8 label volume in
BTCV ids (``labelsTr/label00XX.nii.gz``) on a RAS affine with the requested spacing. The anatomy is an adult
abdomen defined in millimetres (RAS: +x patient's right, +y anterior, +z superior): body outline with subcutaneous
fat and a muscle wall, intra-abdominal fat with bowel loops, lung bases above the diaphragm, the heart, ribs, spine,
liver, spleen, kidneys (cortex brighter than medulla), gallbladder, stomach with an air/fluid level, aorta, IVC,
oesophagus and pancreas. Shapes are ellipsoids, tubes and a curved tube deformed by smooth random fields; positions,
sizes and intensities vary with the seed; Gaussian noise, blur and a smooth intensity bias are added.

The adult anatomy needs a field of view of about ``ADULT_FOV_MM``; a smaller field of view (``shape * spacing``)
shrinks the patient isotropically to fit (the factor is returned as ``patient_scale``), so the phantom stays whole at
the small sizes a CPU demo can afford.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage
from tqdm import tqdm

from samora_monai.apps.phantom_anatomy import Canvas, Wobble, paint_body, paint_organs
from samora_monai.utils import atomic_output

__all__ = ["BTCV_LABELS", "ADULT_FOV_MM", "make_phantom_case", "make_demo_data"]

logger = logging.getLogger(__name__)

BTCV_LABELS: dict[int, str] = {
    0: "background",
    1: "spleen",
    2: "right kidney",
    3: "left kidney",
    4: "gallbladder",
    5: "esophagus",
    6: "liver",
    7: "stomach",
    8: "aorta",
    9: "inferior vena cava",
    10: "portal and splenic veins",
    11: "pancreas",
    12: "right adrenal gland",
    13: "left adrenal gland",
}
# case ids of the TransUNet Synapse split and of BTCV's unlabelled testing set, so the phantom looks like the real data
SYNAPSE_TRAIN_IDS = (5, 6, 7, 9, 10, 21, 23, 24, 26, 27, 28, 30, 31, 33, 34, 37, 39, 40)
SYNAPSE_TEST_IDS = (1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38)
BTCV_UNLABELED_IDS = tuple(range(61, 81))

ADULT_FOV_MM = (380.0, 280.0, 240.0)  # lateral, antero-posterior, cranio-caudal extent the adult anatomy needs
_Z_CENTRE_MM = 10.0  # anatomical z (mm above L1) shown at the centre of the volume


def make_phantom_case(
    case_id: int,
    shape: Sequence[int] = (160, 160, 48),
    spacing: Sequence[float] = (0.8, 0.8, 2.5),
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """One phantom case, a pure function of ``(case_id, shape, spacing, seed)``.

    Returns ``image`` int16 HU [X, Y, Z], ``label`` uint8 BTCV ids [X, Y, Z], the 4x4 RAS ``affine`` (voxel -> mm,
    volume centred on the origin) and ``patient_scale`` (1.0 = adult size; smaller when the field of view is smaller
    than ``ADULT_FOV_MM``).
    """
    shape, spacing = _check_geometry(shape, spacing)
    rng = np.random.default_rng([seed, case_id])
    fov = np.asarray(shape) * spacing
    scale = float(min(1.0, *(fov / np.asarray(ADULT_FOV_MM))))
    offset = np.array([rng.uniform(-5, 5), rng.uniform(-5, 5), _Z_CENTRE_MM + rng.uniform(-12, 12)])
    world = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing, strict=True)]
    canvas = Canvas(tuple(w / scale + o for w, o in zip(world, offset, strict=True)))

    body = paint_body(canvas, rng)
    paint_organs(canvas, rng, body)

    # scanner: partial-volume blur, smooth bias inside the body, Gaussian noise
    hu = ndimage.gaussian_filter(canvas.hu, sigma=(0.6, 0.6, 0.3))
    slices, (x, y, z) = canvas.full()
    hu += np.where(hu > -500, rng.uniform(4, 8) * Wobble(rng, 300.0)(x, y, z), 0).astype(np.float32)
    hu += rng.normal(0, rng.uniform(10, 15), hu.shape).astype(np.float32)
    image = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)

    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = world[0][0], world[1][0], world[2][0]
    return image, canvas.label, affine, scale


def _check_geometry(shape: Sequence[int], spacing: Sequence[float]) -> tuple[tuple[int, int, int], np.ndarray]:
    if len(shape) != 3 or any(int(n) != n or n < 8 for n in shape):
        raise ValueError(f"shape must be three integers >= 8 (X, Y, Z voxels), got {shape!r}")
    if len(spacing) != 3 or any(not s > 0 for s in spacing):
        raise ValueError(f"spacing must be three positive numbers (mm), got {spacing!r}")
    return tuple(int(n) for n in shape), np.asarray(spacing, dtype=float)


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: str) -> None:
    """Write through :func:`~samora_monai.utils.atomic_output`: an interrupted run leaves no truncated file."""
    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with atomic_output(path) as tmp:
        nib.save(img, str(tmp))


def make_demo_data(
    out: str,
    num_train: int = 6,
    num_test: int = 3,
    num_unlabeled: int = 6,
    shape: Sequence[int] = (160, 160, 48),
    spacing: Sequence[float] = (0.8, 0.8, 2.5),
    seed: int = 0,
) -> dict:
    """Write a phantom abdominal CT data set in the raw BTCV layout plus a MONAI decathlon-style ``dataset.json``.

    Args:
        out: output folder (created if needed; files of the same names are replaced).
        num_train: labelled training cases (<= 18), numbered like the Synapse training cases (img0005, img0006, ...).
        num_test: held-out labelled cases (<= 12), numbered like the Synapse test cases (img0001, img0002, ...).
        num_unlabeled: unlabelled cases for stage 1 (<= 20), numbered like BTCV's testing set (img0061, ...).
        shape: voxels (X, Y, Z) of every volume.
        spacing: voxel size in mm (X, Y, Z), written into the NIfTI affine.
        seed: every case is a function of (seed, case id, shape, spacing) only.

    Layout: ``imagesTr/img00XX.nii.gz`` (int16 HU) and ``labelsTr/label00XX.nii.gz`` (uint8 BTCV ids) for the
    labelled cases, ``imagesTs/img00XX.nii.gz`` for the unlabelled ones. ``dataset.json`` lists ``training``
    (image, label), ``validation`` and ``testing`` (both the held-out labelled cases, image and label) and
    ``unlabeled`` (images for self-supervision: the unlabelled cases and the training images, never a held-out case).

    Returns:
        dict with ``root``, ``dataset_json``, the lists of written ``images``/``labels``, ``patient_scale`` and
        ``seconds``.
    """
    shape, spacing_arr = _check_geometry(shape, spacing)
    for name, n, pool in (("num_train", num_train, SYNAPSE_TRAIN_IDS), ("num_test", num_test, SYNAPSE_TEST_IDS),
                          ("num_unlabeled", num_unlabeled, BTCV_UNLABELED_IDS)):
        if not 0 <= n <= len(pool):
            raise ValueError(f"{name} must be between 0 and {len(pool)} (BTCV has that many such cases), got {n}")
    if num_train + num_test == 0:
        raise ValueError("make_demo_data needs at least one labelled case (num_train + num_test > 0)")
    train_ids, test_ids = SYNAPSE_TRAIN_IDS[:num_train], SYNAPSE_TEST_IDS[:num_test]
    unlabeled_ids = BTCV_UNLABELED_IDS[:num_unlabeled]
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)

    def entry(case_id: int, labelled: bool) -> dict[str, str]:
        folder = "imagesTr" if labelled else "imagesTs"
        item = {"image": f"./{folder}/img{case_id:04d}.nii.gz"}
        if labelled:
            item["label"] = f"./labelsTr/label{case_id:04d}.nii.gz"
        return item

    jobs = [(i, True) for i in sorted(train_ids + test_ids)] + [(i, False) for i in unlabeled_ids]
    images, labels, scale = [], [], 1.0
    start = time.perf_counter()
    for case_id, labelled in tqdm(jobs, desc="phantom cases", unit="case"):
        image, label, affine, scale = make_phantom_case(case_id, shape, spacing_arr, seed)
        item = entry(case_id, labelled)
        images.append(os.path.join(out, item["image"][2:]))
        _save_nifti(image, affine, images[-1])
        if labelled:
            labels.append(os.path.join(out, item["label"][2:]))
            _save_nifti(label, affine, labels[-1])

    held_out = [entry(i, True) for i in test_ids]
    datalist = {
        "name": "SAMora abdominal CT phantom (BTCV layout)",
        "description": f"Synthetic CT phantom, seed {seed}, shape {list(shape)}, spacing {spacing_arr.tolist()} mm, "
        f"patient scale {scale:.3f}. validation and testing both hold the held-out labelled cases.",
        "reference": "samora_monai.apps.phantom.make_demo_data",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {str(k): v for k, v in BTCV_LABELS.items()},
        "numTraining": len(train_ids),
        "numTest": len(test_ids),
        "training": [entry(i, True) for i in train_ids],
        "validation": held_out,
        "testing": held_out,
        "unlabeled": [{"image": entry(i, False)["image"]} for i in unlabeled_ids]
        + [{"image": entry(i, True)["image"]} for i in train_ids],
    }
    dataset_json = os.path.join(out, "dataset.json")
    with atomic_output(dataset_json) as tmp, open(tmp, "w") as f:
        json.dump(datalist, f, indent=2)
    seconds = time.perf_counter() - start
    logger.info("wrote %d phantom cases to %s in %.1f s", len(jobs), out, seconds)
    return {
        "root": os.path.abspath(out),
        "dataset_json": os.path.abspath(dataset_json),
        "images": [os.path.abspath(p) for p in images],
        "labels": [os.path.abspath(p) for p in labels],
        "patient_scale": round(scale, 4),
        "seconds": round(seconds, 2),
    }
