"""Per-case metrics: the TransUNet rules against a brute-force re-computation, and MONAI mode in mm."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from samora_monai.metrics import case_metrics, dice, hd95_pooled


def brute_surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with at least one of their 6 face neighbours outside the mask or the volume."""
    padded = np.pad(mask, 1)
    inner = padded[1:-1, 1:-1, 1:-1]
    all_neighbours_in = np.ones_like(inner)
    for axis in range(3):
        for shift in (-1, 1):
            all_neighbours_in &= np.roll(padded, shift, axis=axis)[1:-1, 1:-1, 1:-1]
    return inner & ~all_neighbours_in


def brute_hd95(a: np.ndarray, b: np.ndarray) -> float:
    pa, pb = np.argwhere(brute_surface(a)), np.argwhere(brute_surface(b))
    d = cdist(pa, pb)
    return float(np.percentile(np.concatenate([d.min(1), d.min(0)]), 95))


def brute_assd(a: np.ndarray, b: np.ndarray) -> float:
    d = cdist(np.argwhere(brute_surface(a)), np.argwhere(brute_surface(b)))
    return float((d.min(1).mean() + d.min(0).mean()) / 2)


def brute_case(pred: np.ndarray, gt: np.ndarray, k: int) -> np.ndarray:
    """The TransUNet ``calculate_metric_percase`` rules (Jaccard/ASD as Dice/HD95), written out directly."""
    out = []
    for c in range(1, k + 1):
        p, g = pred == c, gt == c
        if p.sum() > 0 and g.sum() > 0:
            out.append((2 * (p & g).sum() / (p.sum() + g.sum()), brute_hd95(p, g), (p & g).sum() / (p | g).sum(),
                        brute_assd(p, g)))
        elif p.sum() > 0:
            out.append((1.0, 0.0, 1.0, 0.0))
        else:
            out.append((0.0, 0.0, 0.0, 0.0))
    return np.asarray(out, dtype=float)


def cube(shape, lo, hi) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
    return m


def sphere(shape, centre, radius) -> np.ndarray:
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2


def test_dice_of_shifted_cubes():
    a = cube((20, 20, 20), (4, 4, 4), (10, 10, 10))
    b = cube((20, 20, 20), (6, 4, 4), (12, 10, 10))  # overlap 4*6*6 = 144 of 216 each
    assert dice(a, b) == pytest.approx(2 / 3)
    assert dice(a, np.zeros_like(a)) == 0.0
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 0.0


def test_hd95_known_distances():
    shape = (16, 16, 16)
    slab_a, slab_b = cube(shape, (2, 2, 4), (12, 12, 5)), cube(shape, (2, 2, 6), (12, 12, 7))
    assert hd95_pooled(slab_a, slab_b) == pytest.approx(2.0)
    assert hd95_pooled(slab_a, slab_b, spacing=(1.0, 1.0, 3.0)) == pytest.approx(6.0)
    point_a, point_b = cube(shape, (5, 5, 5), (6, 6, 6)), cube(shape, (5, 5, 9), (6, 6, 10))
    assert hd95_pooled(point_a, point_b) == pytest.approx(4.0)
    assert hd95_pooled(slab_a, slab_a) == 0.0
    with pytest.raises(ValueError, match="non-empty"):
        hd95_pooled(slab_a, np.zeros_like(slab_a))


def test_hd95_matches_brute_force_on_spheres_and_border_objects():
    shape = (18, 20, 16)
    a = sphere(shape, (8, 9, 7), 5)
    b = sphere(shape, (10, 9, 8), 4) | cube(shape, (0, 0, 0), (3, 20, 2))  # touches the volume border
    assert hd95_pooled(a, b) == pytest.approx(brute_hd95(a, b))
    assert hd95_pooled(a, b) > 0


def test_transunet_rules_against_direct_recomputation():
    shape = (18, 20, 16)
    gt = np.zeros(shape, np.int64)
    pred = np.zeros(shape, np.int64)
    gt[sphere(shape, (6, 6, 6), 4)] = 1
    pred[sphere(shape, (7, 6, 6), 4)] = 1  # class 1: overlapping spheres
    gt[cube(shape, (12, 12, 8), (16, 18, 14))] = 2  # class 2: missed (empty prediction)
    pred[cube(shape, (12, 2, 10), (15, 6, 14))] = 3  # class 3: false positive (empty ground truth)
    # class 4: empty in both
    gt[cube(shape, (2, 14, 2), (8, 19, 6))] = 5
    pred[cube(shape, (3, 13, 3), (8, 19, 7))] = 5  # class 5: overlapping boxes
    got = case_metrics(pred, gt, num_classes=5, mode="transunet")
    np.testing.assert_allclose(got, brute_case(pred, gt, 5), atol=1e-12)
    np.testing.assert_array_equal(got[1], [0.0, 0.0, 0.0, 0.0])  # empty prediction
    np.testing.assert_array_equal(got[2], [1.0, 0.0, 1.0, 0.0])  # empty ground truth
    np.testing.assert_array_equal(got[3], [0.0, 0.0, 0.0, 0.0])  # both empty
    assert 0 < got[0, 0] < 1 and got[0, 1] > 0 and 0 < got[0, 2] < got[0, 0] and got[0, 3] > 0
    # channel-first [1, X, Y, Z] input gives the same values; spacing is ignored in this mode
    np.testing.assert_array_equal(case_metrics(pred[None], gt[None], 5, "transunet", spacing=(1, 1, 9)), got)


def test_monai_mode_reports_mm_on_anisotropic_volume():
    shape = (16, 16, 12)
    gt = np.zeros(shape, np.int64)
    pred = np.zeros(shape, np.int64)
    gt[cube(shape, (2, 2, 4), (12, 12, 5))] = 1
    pred[cube(shape, (2, 2, 5), (12, 12, 6))] = 1  # one slice further along z
    gt[cube(shape, (3, 3, 8), (9, 9, 11))] = 2
    pred[cube(shape, (3, 3, 8), (9, 9, 11))] = 2  # identical
    gt[cube(shape, (12, 12, 8), (15, 15, 11))] = 3  # missed
    pred[cube(shape, (13, 2, 8), (15, 4, 11))] = 4  # false positive on empty ground truth
    spacing = (1.0, 1.0, 5.0)
    got = case_metrics(pred, gt, num_classes=4, mode="monai", spacing=spacing)
    assert got[0, 0] == pytest.approx(0.0)
    assert got[0, 1] == pytest.approx(5.0)  # one slice of 5 mm
    np.testing.assert_allclose(got[1], [1.0, 0.0, 1.0, 0.0])
    diagonal = math.sqrt(16**2 + 16**2 + 60**2)
    np.testing.assert_allclose(got[2], [0.0, diagonal, 0.0, diagonal])
    assert np.isnan(got[3]).all()
    voxel = case_metrics(pred, gt, num_classes=4, mode="transunet")
    assert voxel[0, 1] == pytest.approx(1.0)  # the same shift in voxel units
    missed_nan = case_metrics(pred, gt, num_classes=4, mode="monai", spacing=spacing, missed_hd95="nan")
    assert missed_nan[2, 0] == missed_nan[2, 2] == 0.0 and np.isnan(missed_nan[2, [1, 3]]).all()


def test_monai_dice_equals_plain_dice_when_both_present():
    shape = (18, 20, 16)
    gt = sphere(shape, (8, 9, 7), 5).astype(np.int64)
    pred = sphere(shape, (9, 10, 7), 5).astype(np.int64)
    got = case_metrics(pred, gt, 1, "monai", spacing=(0.7, 0.7, 2.5))
    assert got[0, 0] == pytest.approx(dice(pred == 1, gt == 1), abs=1e-6)
    assert got[0, 1] > 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": "medpy"}, "unknown metric mode"),
        ({"mode": "monai"}, "needs a spacing"),
        ({"mode": "monai", "spacing": (1.0, 1.0)}, "needs a spacing"),
        ({"missed_hd95": "inf"}, "missed_hd95"),
    ],
)
def test_bad_arguments(kwargs, match):
    vol = np.zeros((4, 4, 4), np.int64)
    with pytest.raises(ValueError, match=match):
        case_metrics(vol, vol, 1, **kwargs)


def test_bad_shapes():
    with pytest.raises(ValueError, match="differs from label shape"):
        case_metrics(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), 1)
    with pytest.raises(ValueError, match="3D label volume"):
        case_metrics(np.zeros((4, 4)), np.zeros((4, 4)), 1)
    with pytest.raises(ValueError, match="label has label values in \\[0, 3\\], expected 0..2"):
        case_metrics(np.zeros((4, 4, 4)), np.arange(64).reshape(4, 4, 4) % 4, 2)
