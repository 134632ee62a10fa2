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
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage
from tqdm import tqdm

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
_AIR = -1000.0


def _rotation(yaw: float, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """3x3 rotation (radians) about z, then y, then x."""
    cz, sz, cy, sy, cx, sx = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return rz @ ry @ rx


class _Wobble:
    """Smooth random field of unit standard deviation: a sum of plane waves with wavelengths near ``wavelength`` mm."""

    def __init__(self, rng: np.random.Generator, wavelength: float, terms: int = 4):
        directions = rng.normal(size=(terms, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        self.k = directions * (2 * np.pi / (wavelength * rng.uniform(0.7, 1.4, size=(terms, 1))))
        self.phase = rng.uniform(0, 2 * np.pi, size=terms)

    def __call__(self, x, y, z) -> np.ndarray:
        """Evaluate on broadcastable coordinate arrays; each wave is a product of per-axis phasors (cheap outer
        products instead of a sine over the whole volume)."""
        total = 0
        for k, p in zip(self.k, self.phase, strict=True):
            ex, ey, ez = (np.exp(1j * (kc * np.asarray(c, float) + off)).astype(np.complex64)
                          for kc, c, off in ((k[0], x, p), (k[1], y, 0.0), (k[2], z, 0.0)))
            total = total + (ex * ey * ez).imag
        return (total * np.sqrt(2.0 / len(self.phase))).astype(np.float32)


@dataclass
class _Blob:
    """Ellipsoid (centre, semi-axes in mm, rotation) whose surface is pushed in/out by ``amp`` x a smooth field."""

    centre: np.ndarray
    radii: np.ndarray
    rot: np.ndarray
    wobble: _Wobble
    amp: float

    def field(self, x, y, z, shrink: float = 0.0) -> np.ndarray:
        """Normalised radius (< 1 inside); ``shrink`` mm is taken off every semi-axis (for a wall or a core)."""
        d = (x - self.centre[0], y - self.centre[1], z - self.centre[2])
        radii = np.maximum(self.radii - shrink, 1.0)
        f = sum(
            (sum(self.rot[j, i] * d[j] for j in range(3)) / radii[i]) ** 2 for i in range(3)
        )
        return np.sqrt(f) / (1.0 + self.amp * np.clip(self.wobble(x, y, z), -2, 2))

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        reach = self.radii.max() * (1 + 2 * self.amp)
        return self.centre - reach, self.centre + reach


class _Canvas:
    """HU and label volumes with the anatomical coordinates (mm, RAS) of each voxel axis."""

    def __init__(self, axes: tuple[np.ndarray, np.ndarray, np.ndarray]):
        self.axes = axes
        shape = tuple(len(a) for a in axes)
        self.hu = np.full(shape, _AIR, np.float32)
        self.label = np.zeros(shape, np.uint8)

    def region(self, lo: Sequence[float], hi: Sequence[float]):
        """Slices of the voxels whose coordinates lie in [lo, hi] and their broadcastable coordinates (or None)."""
        slices = []
        for a, low, high in zip(self.axes, lo, hi, strict=True):
            start, stop = np.searchsorted(a, low), np.searchsorted(a, high, side="right")
            if start >= stop:
                return None
            slices.append(slice(int(start), int(stop)))
        x, y, z = (a[s] for a, s in zip(self.axes, slices, strict=True))
        return tuple(slices), (x[:, None, None], y[None, :, None], z[None, None, :])

    def full(self):
        return self.region([a[0] for a in self.axes], [a[-1] for a in self.axes])

    def paint(self, slices, mask: np.ndarray, hu, label: int | None = None) -> None:
        hu_view = self.hu[slices]
        mask = np.broadcast_to(mask, hu_view.shape)
        hu_view[mask] = np.broadcast_to(hu, mask.shape)[mask] if isinstance(hu, np.ndarray) else hu
        if label is not None:
            self.label[slices][mask] = label


def _blob(rng, centre, radii, angles=(0.0, 0.0, 0.0), jitter=6.0, size=0.12, amp=0.08, wavelength=60.0) -> _Blob:
    """An organ-shaped blob around the mean ``centre``/``radii`` (mm) with per-case position, size and shape jitter."""
    centre = np.asarray(centre, float) + np.clip(rng.normal(0, jitter, 3), -2 * jitter, 2 * jitter)
    radii = np.asarray(radii, float) * rng.uniform(1 - size, 1 + size) * rng.uniform(0.95, 1.05, 3)
    angles = np.asarray(angles, float) + np.deg2rad(rng.uniform(-8, 8, 3))
    return _Blob(centre, radii, _rotation(*angles), _Wobble(rng, wavelength), amp)


def _union_region(canvas: _Canvas, blobs: Sequence[_Blob]):
    lows, highs = zip(*(b.bounds() for b in blobs), strict=True)
    return canvas.region(np.min(lows, axis=0), np.max(highs, axis=0))


def _paint_body(canvas: _Canvas, rng: np.random.Generator) -> dict:
    """Body outline, fat, muscle wall, abdominal contents (fat/bowel), lungs, heart, ribs, spine. Returns the geometry
    the organs need (cavity mask function, diaphragm height, spine position)."""
    a, b = 165 * rng.uniform(0.9, 1.08), 115 * rng.uniform(0.9, 1.08)
    fat, muscle = rng.uniform(10, 30), rng.uniform(8, 14)
    power = rng.uniform(2.0, 2.6)  # superellipse: flatter back and flanks than an ellipse
    body_wobble = _Wobble(rng, 120.0)
    slices, (x, y, z) = canvas.full()
    z_scale = 1 + 0.03 * body_wobble(0, 0, z)  # mild change of girth along z

    def rho(shrink: float) -> np.ndarray:  # normalised radius of the body outline taken in by `shrink` mm
        return ((np.abs(x) / (a - shrink)) ** power + (np.abs(y + 10) / (b - shrink)) ** power) ** (1 / power) / z_scale

    body, outer_muscle, cavity_r = rho(0) < 1, rho(fat) < 1, rho(fat + muscle)
    cavity = cavity_r < 1
    canvas.paint(slices, body, -100 + 8 * body_wobble(x, y, z))
    canvas.paint(slices, outer_muscle, 50 + 5 * body_wobble(y, z, x))

    # paraspinal muscles in the posterior wall
    spine_y = -62 + rng.uniform(-4, 4)
    for side in (-1, 1):
        para = ((x - side * 36) / 26) ** 2 + ((y - spine_y + 30) / 18) ** 2 < 1
        canvas.paint(slices, para & body, np.float32(50))

    # abdominal contents: fat with bowel loops, some containing gas
    loops, gas = _Wobble(rng, 45.0), _Wobble(rng, 20.0)
    bowel = loops(x, y, z) > rng.uniform(-0.2, 0.3)
    canvas.paint(slices, cavity, np.where(bowel, 30 + 6 * gas(y, x, z), -90 + 8 * gas(x, z, y)).astype(np.float32))
    canvas.paint(slices, cavity & bowel & (gas(x, y, z) > 1.4), np.float32(-800))

    # diaphragm: two domes, higher on the right, falling away posteriorly; lungs above it, heart in the middle
    dome_r, dome_l = 120 + rng.uniform(-10, 10), 105 + rng.uniform(-10, 10)

    def diaphragm(px, py):
        right = dome_r - 55 * (((px - 70) / 90) ** 2 + ((py - 5) / 80) ** 2)
        left = dome_l - 55 * (((px + 70) / 90) ** 2 + ((py - 5) / 80) ** 2)
        return np.maximum(right, left)

    below = z <= diaphragm(x, y)
    canvas.paint(slices, cavity & ~below, 45 + 5 * gas(z, x, y))  # the diaphragm muscle, 6 mm thick
    above = z > diaphragm(x, y) + 6
    canvas.paint(slices, cavity & above, -850 + 30 * gas(z, y, x))
    mediastinum = (x / 35) ** 2 + ((y - spine_y - 45) / 55) ** 2 < 1
    canvas.paint(slices, cavity & above & mediastinum, -70 + 10 * gas(y, x, z))
    heart = ((x + 10) / 65) ** 2 + ((y - 25) / 55) ** 2 + ((z - 170) / 60) ** 2 < 1
    canvas.paint(slices, cavity & above & heart, np.float32(45))

    # ribs: oblique bars in the muscle wall, descending anteriorly, absent at the spine and below the costal margin
    theta = np.arctan2((y + 10) / b, x / a)
    band = (cavity_r >= 1) & (rho(fat + 0.2 * muscle) < 1)
    drop = 55 * (1 + np.sin(theta)) / 2
    pitch, thick = 34 + rng.uniform(-3, 3), 10.0
    phase = np.mod(200 - drop - z, pitch)
    costal = -45 + 110 * np.clip(np.sin(theta), 0, 1) ** 1.5
    gaps = (np.abs(theta + np.pi / 2) > 0.3) & (np.abs(theta - np.pi / 2) > 0.35)  # spine and sternum
    ribs = band & (phase < thick) & (z > costal) & gaps
    canvas.paint(slices, ribs, 700 + 40 * gas(x, y, z))

    # spine: vertebral bodies (cortical shell, cancellous core), discs, posterior arch with the canal
    vert_pitch, disc = 32 + rng.uniform(-2, 2), 7.0
    in_disc = np.mod(z - rng.uniform(0, vert_pitch), vert_pitch) < disc
    vb = (x / 22) ** 2 + ((y - spine_y) / 16) ** 2
    vb_core = (x / 19.5) ** 2 + ((y - spine_y) / 13.5) ** 2 < 1
    canvas.paint(slices, vb < 1, np.where(in_disc, 80, np.where(vb_core, 250, 400)).astype(np.float32), 0)
    arch = (x / 17) ** 2 + ((y - spine_y + 26) / 14) ** 2 < 1
    spinous = (x / 4.5) ** 2 + ((y - spine_y + 42) / 11) ** 2 < 1
    transverse = (np.abs(np.abs(x) - 26) < 12) & (np.abs(y - spine_y + 22) < 4.5)
    canal = (x / 9) ** 2 + ((y - spine_y + 26) / 8) ** 2 < 1
    canvas.paint(slices, (arch | spinous | transverse) & ~in_disc & body, np.float32(400), 0)
    canvas.paint(slices, canal, np.float32(15), 0)
    return {"cavity": cavity, "diaphragm": diaphragm, "spine_y": spine_y}


def _paint_organs(canvas: _Canvas, rng: np.random.Generator, body: dict) -> None:
    """The BTCV-labelled organs, clipped to the abdominal cavity; later organs overwrite earlier ones."""
    cavity, diaphragm, spine_y = body["cavity"], body["diaphragm"], body["spine_y"]

    def hu(mean: float, spread: float = 6.0) -> float:
        return mean + rng.uniform(-spread, spread)

    def paint_blobs(blobs, value, label, under_diaphragm=False, texture=4.0):
        found = _union_region(canvas, blobs)
        if found is None:
            return None
        slices, (x, y, z) = found
        inside = np.min([bl.field(x, y, z) for bl in blobs], axis=0) < 1
        inside &= cavity[slices]
        if under_diaphragm:
            inside &= z <= diaphragm(x, y)
        canvas.paint(slices, inside, value + texture * blobs[0].wobble(y, z, x), label)
        return slices, (x, y, z), inside

    # liver: right lobe plus a left lobe crossing the midline anteriorly, domed by the diaphragm
    liver = [_blob(rng, (62, 0, 45), (85, 95, 85), amp=0.06, wavelength=90),
             _blob(rng, (-15, 45, 68), (55, 35, 40), amp=0.08)]
    paint_blobs(liver, hu(60), 6, under_diaphragm=True)
    spleen = _blob(rng, (-88, -42, 55), (25, 55, 50), angles=(np.deg2rad(-35), 0, 0), amp=0.08)
    paint_blobs([spleen], hu(50), 1, under_diaphragm=True)

    # stomach: fundus/body and antrum, with a 4 mm wall, gas anteriorly (supine) above fluid
    stomach = [_blob(rng, (-58, 12, 62), (40, 36, 46), amp=0.07),
               _blob(rng, (-12, 45, 18), (45, 22, 24), angles=(np.deg2rad(20), 0, 0), amp=0.07)]
    painted = paint_blobs(stomach, hu(45), 7, under_diaphragm=True, texture=3.0)
    if painted is not None:
        slices, (x, y, z), inside = painted
        lumen = inside & (np.min([bl.field(x, y, z, shrink=4.0) for bl in stomach], axis=0) < 1)
        if lumen.any():
            ys = np.broadcast_to(y, lumen.shape)[lumen]
            level = np.quantile(ys, 1 - rng.uniform(0.25, 0.5))
            canvas.paint(slices, lumen, np.where(y > level, _AIR + 100, hu(20)).astype(np.float32))

    # kidneys: upper poles medial and posterior, right one lower; cortex enhances more than medulla
    for label, side, z_mean in ((2, 1, -22.0), (3, -1, -8.0)):
        kidney = _blob(rng, (side * 66, spine_y + 10, z_mean), (26, 22, 52),
                       angles=(side * np.deg2rad(30), side * np.deg2rad(-12), np.deg2rad(15)), amp=0.05)
        found = canvas.region(*kidney.bounds())
        if found is None:
            continue
        slices, (x, y, z) = found
        inside = (kidney.field(x, y, z) < 1) & cavity[slices]
        medulla = kidney.field(x, y, z, shrink=7.0) < 1
        canvas.paint(slices, inside, np.where(medulla, hu(40), hu(180, 10)).astype(np.float32), label)

    gallbladder = _blob(rng, (48, 42, -2), (14, 16, 34), angles=(0, np.deg2rad(-20), np.deg2rad(-25)), jitter=4,
                        amp=0.1, wavelength=40)
    paint_blobs([gallbladder], hu(10, 4), 4, texture=2.0)
    _paint_pancreas(canvas, rng, cavity, hu(40))

    # great vessels and oesophagus: tubes along z
    aorta_x, aorta_r = -16 + rng.uniform(-4, 4), 11 * rng.uniform(0.85, 1.15)
    tubes = (
        (8, (aorta_x, spine_y + 34, aorta_r, aorta_r), (-400, 400), hu(200, 15)),
        (9, (22 + rng.uniform(-4, 4), spine_y + 38, 12, 9), (-400, 95 + rng.uniform(-5, 5)), hu(130, 10)),
        (5, (aorta_x - 2, spine_y + 52, 8, 6), (72 + rng.uniform(-5, 5), 400), hu(40)),
    )
    sway = _Wobble(rng, 250.0)
    for label, (cx, cy, rx, ry), (z_lo, z_hi), value in tubes:
        found = canvas.region((cx - 2 * rx, cy - 2 * ry, z_lo), (cx + 2 * rx, cy + 2 * ry, z_hi))
        if found is None:
            continue
        slices, (x, y, z) = found
        shift = 4 * sway(0, 0, z)
        inside = ((x - cx - shift) / rx) ** 2 + ((y - cy + shift) / ry) ** 2 < 1
        canvas.paint(slices, inside, np.broadcast_to(np.float32(value), inside.shape), label)


def _paint_pancreas(canvas: _Canvas, rng: np.random.Generator, cavity: np.ndarray, value: float) -> None:
    """Curved tube from the head (right, by the duodenum) over the aorta to the tail (left, at the splenic hilum)."""
    # control points (x, y, z, AP semi-axis, SI semi-axis), tail -> body -> head
    points = np.array([[-78, -28, 22, 9, 10], [-10, 4, 6, 9, 12], [34, 0, -10, 15, 22]], float)
    points[:, :3] += np.clip(rng.normal(0, 4, (3, 3)), -8, 8)
    points[:, 3:] *= rng.uniform(0.85, 1.15)
    wobble = _Wobble(rng, 30.0)
    found = canvas.region(points[:, :3].min(0) - 25, points[:, :3].max(0) + 25)
    if found is None:
        return
    slices, (x, y, z) = found
    xs = points[:, 0]

    def along(values):  # quadratic through the 3 control points, as a function of x (clamped at the ends)
        return np.polyval(np.polyfit(xs, values, 2), np.clip(x, xs[0], xs[2]))

    cap = (np.maximum(xs[0] - x, 0) + np.maximum(x - xs[2], 0)) / along(points[:, 3])
    f = ((y - along(points[:, 1])) / along(points[:, 3])) ** 2 + ((z - along(points[:, 2])) / along(points[:, 4])) ** 2
    inside = (np.sqrt(f + cap**2) < 1 + 0.12 * wobble(x, y, z)) & cavity[slices]
    canvas.paint(slices, inside, value + 5 * wobble(z, x, y), 11)


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
    canvas = _Canvas(tuple(w / scale + o for w, o in zip(world, offset, strict=True)))

    body = _paint_body(canvas, rng)
    _paint_organs(canvas, rng, body)

    # scanner: partial-volume blur, smooth bias inside the body, Gaussian noise
    hu = ndimage.gaussian_filter(canvas.hu, sigma=(0.6, 0.6, 0.3))
    slices, (x, y, z) = canvas.full()
    hu += np.where(hu > -500, rng.uniform(4, 8) * _Wobble(rng, 300.0)(x, y, z), 0).astype(np.float32)
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
