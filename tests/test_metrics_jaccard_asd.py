"""Jaccard and ASD in both modes against a brute-force recomputation with explicit loops over surface voxels."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from samora_monai.metrics import average_surface_distance, case_metrics, jaccard

SHAPE = (14, 12, 9)
SPACING = (0.7, 1.1, 3.0)  # anisotropic, as MR/CT volumes


def loop_surface(mask: np.ndarray) -> list[tuple[int, int, int]]:
    """Foreground voxels with a face neighbour (6-neighbourhood) that is background or outside the volume."""
    out = []
    for v in itertools.product(*(range(n) for n in mask.shape)):
        if not mask[v]:
            continue
        for axis, step in itertools.product(range(3), (-1, 1)):
            w = list(v)
            w[axis] += step
            if not 0 <= w[axis] < mask.shape[axis] or not mask[tuple(w)]:
                out.append(v)
                break
    return out


def loop_distances(a: np.ndarray, b: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> list[float]:
    """For every surface voxel of ``a``, the Euclidean distance (in ``spacing`` units) to the nearest of ``b``."""
    sb = loop_surface(b)
    out = []
    for u in loop_surface(a):
        best = math.inf
        for v in sb:
            best = min(best, math.sqrt(sum(((p - q) * s) ** 2 for p, q, s in zip(u, v, spacing, strict=True))))
        out.append(best)
    return out


def loop_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    inter = union = 0
    for v in itertools.product(*(range(n) for n in a.shape)):
        inter += bool(a[v] and b[v])
        union += bool(a[v] or b[v])
    return inter / union


def masks() -> tuple[np.ndarray, np.ndarray]:
    """A hollow box touching the volume border vs. a shifted ellipsoid plus a separate blob (different surface
    sizes, so the two ASD conventions differ)."""
    grid = np.indices(SHAPE)
    gt = np.zeros(SHAPE, bool)
    gt[0:8, 2:10, 1:6] = True
    gt[3:5, 5:7, 2:4] = False  # a cavity: inner surface voxels
    pred = ((grid[0] - 5) / 4.5) ** 2 + ((grid[1] - 6) / 3.5) ** 2 + ((grid[2] - 4) / 2.2) ** 2 <= 1
    pred[10:13, 1:4, 6:8] = True
    return pred, gt


def test_transunet_jaccard_and_asd_match_loops():
    pred, gt = masks()
    d_pg, d_gp = loop_distances(pred, gt), loop_distances(gt, pred)
    assert len(d_pg) != len(d_gp)  # non-trivial: different surfaces
    expected_assd = (np.mean(d_pg) + np.mean(d_gp)) / 2
    assert average_surface_distance(pred, gt) == pytest.approx(expected_assd, rel=1e-12)
    assert average_surface_distance(pred, gt, symmetric=False) == pytest.approx(np.mean(d_pg), rel=1e-12)
    assert jaccard(pred, gt) == pytest.approx(loop_jaccard(pred, gt), rel=1e-12)
    label_pred, label_gt = pred.astype(np.int64) * 2, gt.astype(np.int64) * 2
    got = case_metrics(label_pred, label_gt, num_classes=2, mode="transunet", spacing=SPACING)  # spacing ignored
    np.testing.assert_allclose(got[1, 2:], [loop_jaccard(pred, gt), expected_assd], rtol=1e-12)
    np.testing.assert_array_equal(got[0], [0.0, 0.0, 0.0, 0.0])  # class 1 empty in both
    assert 0 < got[1, 2] < got[1, 0] < 1  # Jaccard = Dice / (2 - Dice) < Dice
    assert got[1, 2] == pytest.approx(got[1, 0] / (2 - got[1, 0]))


def test_monai_jaccard_and_asd_in_mm_match_loops():
    pred, gt = masks()
    d_pg, d_gp = loop_distances(pred, gt, SPACING), loop_distances(gt, pred, SPACING)
    pooled = np.mean(d_pg + d_gp)  # MONAI's symmetric ASD: mean of the pooled distances
    got = case_metrics(pred.astype(np.int64), gt.astype(np.int64), num_classes=1, mode="monai", spacing=SPACING)
    np.testing.assert_allclose(got[0, 2:], [loop_jaccard(pred, gt), pooled], rtol=1e-5)
    medpy_mm = (np.mean(d_pg) + np.mean(d_gp)) / 2
    assert average_surface_distance(pred, gt, spacing=SPACING) == pytest.approx(medpy_mm, rel=1e-12)
    assert abs(pooled - medpy_mm) > 0.05  # the two conventions really differ here
    voxel = case_metrics(pred.astype(np.int64), gt.astype(np.int64), num_classes=1, mode="transunet")
    assert abs(voxel[0, 3] - got[0, 3]) > 0.1  # voxel units differ from mm on anisotropic voxels


def test_empty_mask_rules_for_jaccard_and_asd():
    pred, gt = masks()
    p, g, z = pred.astype(np.int64), gt.astype(np.int64), np.zeros(SHAPE, np.int64)
    np.testing.assert_array_equal(case_metrics(p, z, 1, "transunet")[0], [1.0, 0.0, 1.0, 0.0])  # FP on empty GT
    np.testing.assert_array_equal(case_metrics(z, g, 1, "transunet")[0], [0.0, 0.0, 0.0, 0.0])  # missed
    assert np.isnan(case_metrics(p, z, 1, "monai", spacing=SPACING)[0]).all()
    diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(SHAPE, SPACING, strict=True)))
    np.testing.assert_allclose(case_metrics(z, g, 1, "monai", spacing=SPACING)[0], [0.0, diagonal, 0.0, diagonal])
    assert jaccard(z, z) == 0.0
    with pytest.raises(ValueError, match="non-empty"):
        average_surface_distance(pred, z.astype(bool))
