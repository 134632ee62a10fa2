"""Random shapes and textures on CT-like backgrounds, and automatic regions of unlabeled images: class-agnostic
promptable-segmentation data for the stand-in.

Every sample is a pure function of its random generator: a background (a slice of an unlabeled image, or a
synthetic body outline with smooth texture), then 2 to ``max_shapes`` shapes painted on top of each other, each an
ellipse, a polygon or a blob (a disc with a harmonic-wobbled radius), with its own intensity, texture, rim and
blur. The masks are the visible parts of the shapes (a later shape occludes an earlier one); they are the only
targets: no anatomical label of any kind is involved. Intensities are in the [0, 1] units of the CT window.
"""

from __future__ import annotations

import numpy as np
from matplotlib.path import Path as PolygonPath
from scipy import ndimage

__all__ = ["SHAPE_KINDS", "smooth_noise", "synthetic_background", "random_shape", "shape_sample", "region_sample",
           "box_prompt", "point_prompt"]

SHAPE_KINDS = ("ellipse", "polygon", "blob")


def smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """[size, size] float32 smooth random field with zero mean and unit standard deviation."""
    field = ndimage.gaussian_filter(rng.normal(size=(size, size)), sigma, mode="wrap")
    return ((field - field.mean()) / (field.std() + 1e-8)).astype(np.float32)


def synthetic_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """[size, size] CT-like background in [0, 1]: air, an elliptical body of soft tissue with fat and texture."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    a, b = rng.uniform(0.3, 0.48), rng.uniform(0.22, 0.42)
    body = (xx / a) ** 2 + (yy / b) ** 2 < 1.0
    tissue = rng.uniform(0.25, 0.6) + rng.uniform(0.03, 0.12) * smooth_noise(rng, size, size / rng.uniform(6, 20))
    return np.where(body, tissue, 0.0).astype(np.float32)


def random_shape(rng: np.random.Generator, size: int) -> np.ndarray:
    """[size, size] bool mask of one random ellipse, polygon or blob covering roughly 0.5-15 % of the image."""
    kind = SHAPE_KINDS[rng.integers(len(SHAPE_KINDS))]
    centre = rng.uniform(0.15, 0.85, size=2) * size
    radius = size * rng.uniform(0.05, 0.22)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dx, dy = xx - centre[0], yy - centre[1]
    if kind == "ellipse":
        angle, aspect = rng.uniform(0, np.pi), rng.uniform(0.35, 1.0)
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        return (u / radius) ** 2 + (v / (radius * aspect)) ** 2 < 1.0
    theta = np.arctan2(dy, dx)
    if kind == "polygon":
        n = int(rng.integers(3, 9))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = radius * rng.uniform(0.5, 1.0, n)
        vertices = np.stack([centre[0] + radii * np.cos(angles), centre[1] + radii * np.sin(angles)], axis=1)
        points = np.stack([xx.ravel(), yy.ravel()], axis=1)
        return PolygonPath(vertices).contains_points(points).reshape(size, size)
    wobble = sum(rng.uniform(0, 0.25) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in range(2, 6))
    return np.hypot(dx, dy) < radius * (1.0 + wobble)


def shape_sample(
    rng: np.random.Generator, size: int, background: np.ndarray | None = None, max_shapes: int = 6,
    min_area: int = 12,
) -> tuple[np.ndarray, np.ndarray]:
    """One image with 1 to ``max_shapes`` painted shapes.

    Args:
        rng: the sample's random generator.
        size: image side in pixels.
        background: [size, size] image in [0, 1] to paint on (e.g. an unlabeled CT slice); default synthetic.
        max_shapes: most shapes per image.
        min_area: shapes with fewer visible pixels are dropped from the targets (they stay painted).

    Returns:
        image [size, size] float32 in [0, 1] and masks [N, size, size] bool (N >= 1) of the visible shapes.
    """
    image = synthetic_background(rng, size) if background is None else background.astype(np.float32).copy()
    shapes = []
    for _ in range(int(rng.integers(2, max_shapes + 1))):
        mask = random_shape(rng, size)
        if not mask.any():
            continue
        texture = rng.uniform(0.0, 0.12) * smooth_noise(rng, size, rng.uniform(1.0, 6.0))
        fill = np.clip(rng.uniform(0.0, 1.0) + texture, 0.0, 1.0)
        if rng.random() < 0.4:  # a wall of another intensity, like a kidney cortex or a bowel wall
            core = ndimage.binary_erosion(mask, iterations=int(rng.integers(1, 4)))
            fill = np.where(core, fill, np.clip(fill + rng.uniform(-0.5, 0.5), 0.0, 1.0))
        image = np.where(mask, fill, image)
        shapes = [s & ~mask for s in shapes] + [mask]
    image = ndimage.gaussian_filter(image, rng.uniform(0.3, 1.2))
    image = np.clip(image + rng.normal(0, rng.uniform(0.0, 0.05), image.shape), 0.0, 1.0).astype(np.float32)
    masks = [s for s in shapes if s.sum() >= min_area]
    if not masks:  # every shape occluded or tiny: the largest visible one is the target
        masks = [max(shapes, key=lambda s: s.sum())]
    return image, np.stack(masks)


def box_prompt(rng: np.random.Generator, mask: np.ndarray, jitter: float = 0.1) -> np.ndarray:
    """[4] float32 box (x0, y0, x1, y1) around ``mask`` [H, W], each side moved by up to ``jitter`` x its length."""
    ys, xs = np.nonzero(mask)
    box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float32)
    extent = np.array([box[2] - box[0], box[3] - box[1]] * 2, dtype=np.float32) + 1.0
    box = box + rng.normal(0.0, jitter, 4).astype(np.float32) * extent
    return np.clip(box, 0, mask.shape[-1] - 1).astype(np.float32)


def point_prompt(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """[2] float32 (x, y) pixel indices of a random pixel inside ``mask`` [H, W] (SAM's prompt encoder adds the
    half-pixel shift to the centre itself)."""
    ys, xs = np.nonzero(mask)
    i = int(rng.integers(len(xs)))
    return np.array([xs[i], ys[i]], dtype=np.float32)


def region_sample(
    rng: np.random.Generator, image: np.ndarray, max_masks: int = 6, min_area: int = 12, max_fraction: float = 0.3
) -> tuple[np.ndarray, np.ndarray]:
    """Automatic class-agnostic masks of an unlabeled image [S, S] in [0, 1]: Felzenszwalb's graph-based regions at
    a random scale (computed from the image alone), up to ``max_masks`` of them between ``min_area`` pixels and
    ``max_fraction`` of the image. Returns the image and masks [N, S, S] bool (N >= 1; the whole non-air area when
    no region fits)."""
    from skimage.segmentation import felzenszwalb

    regions = felzenszwalb(image, scale=float(rng.uniform(100, 1000)), sigma=0.5, min_size=4 * min_area)
    ids, areas = np.unique(regions, return_counts=True)
    fitting = ids[(areas >= min_area) & (areas <= max_fraction * image.size)]
    if not len(fitting):
        return image, (image > 0.02)[None]
    chosen = rng.choice(fitting, size=min(max_masks, len(fitting)), replace=False)
    return image, np.stack([regions == i for i in chosen])
