"""The anatomy of the CT phantom (:mod:`samora_monai.apps.phantom`): smooth random deformations, ellipsoid and tube
primitives on a millimetre canvas, and the painters of the body (outline, fat, muscle, lungs, heart, ribs, spine) and
of the abdominal organs with their BTCV label ids. RAS millimetres: +x patient's right, +y anterior, +z superior."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["AIR_HU", "Canvas", "Wobble", "paint_body", "paint_organs"]

AIR_HU = -1000.0


def _rotation(yaw: float, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """3x3 rotation (radians) about z, then y, then x."""
    cz, sz, cy, sy, cx, sx = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return rz @ ry @ rx


class Wobble:
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
    wobble: Wobble
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


class Canvas:
    """HU and label volumes with the anatomical coordinates (mm, RAS) of each voxel axis."""

    def __init__(self, axes: tuple[np.ndarray, np.ndarray, np.ndarray]):
        self.axes = axes
        shape = tuple(len(a) for a in axes)
        self.hu = np.full(shape, AIR_HU, np.float32)
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
    return _Blob(centre, radii, _rotation(*angles), Wobble(rng, wavelength), amp)


def _union_region(canvas: Canvas, blobs: Sequence[_Blob]):
    lows, highs = zip(*(b.bounds() for b in blobs), strict=True)
    return canvas.region(np.min(lows, axis=0), np.max(highs, axis=0))


def paint_body(canvas: Canvas, rng: np.random.Generator) -> dict:
    """Body outline, fat, muscle wall, abdominal contents (fat/bowel), lungs, heart, ribs, spine. Returns the geometry
    the organs need (cavity mask function, diaphragm height, spine position)."""
    a, b = 165 * rng.uniform(0.9, 1.08), 115 * rng.uniform(0.9, 1.08)
    fat, muscle = rng.uniform(10, 30), rng.uniform(8, 14)
    power = rng.uniform(2.0, 2.6)  # superellipse: flatter back and flanks than an ellipse
    body_wobble = Wobble(rng, 120.0)
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
    loops, gas = Wobble(rng, 45.0), Wobble(rng, 20.0)
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


def paint_organs(canvas: Canvas, rng: np.random.Generator, body: dict) -> None:
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
            canvas.paint(slices, lumen, np.where(y > level, AIR_HU + 100, hu(20)).astype(np.float32))

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
    sway = Wobble(rng, 250.0)
    for label, (cx, cy, rx, ry), (z_lo, z_hi), value in tubes:
        found = canvas.region((cx - 2 * rx, cy - 2 * ry, z_lo), (cx + 2 * rx, cy + 2 * ry, z_hi))
        if found is None:
            continue
        slices, (x, y, z) = found
        shift = 4 * sway(0, 0, z)
        inside = ((x - cx - shift) / rx) ** 2 + ((y - cy + shift) / ry) ** 2 < 1
        canvas.paint(slices, inside, np.broadcast_to(np.float32(value), inside.shape), label)


def _paint_pancreas(canvas: Canvas, rng: np.random.Generator, cavity: np.ndarray, value: float) -> None:
    """Curved tube from the head (right, by the duodenum) over the aorta to the tail (left, at the splenic hilum)."""
    # control points (x, y, z, AP semi-axis, SI semi-axis), tail -> body -> head
    points = np.array([[-78, -28, 22, 9, 10], [-10, 4, 6, 9, 12], [34, 0, -10, 15, 22]], float)
    points[:, :3] += np.clip(rng.normal(0, 4, (3, 3)), -8, 8)
    points[:, 3:] *= rng.uniform(0.85, 1.15)
    wobble = Wobble(rng, 30.0)
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
