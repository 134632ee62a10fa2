"""Geometry through the bundle's ``inference.yaml`` (real CLI): a non-square (16 x 48 x 5), oblique (rotated direction
cosines), LPS-oriented, anisotropic NIfTI volume in, a label NIfTI out whose every voxel is compared with the known
answer in the input's own geometry (same shape, same affine, no transpose or flip).

The network is the only stand-in: ``network_def`` is overridden with :class:`run_probes.ThresholdNet`, whose output
is known (class 1 where the windowed intensity exceeds a threshold), and its threshold comes from the ``model.pt``
the bundle loads. Everything else is the bundle's: loading, CT windowing, the slice inferer's resizing to
``img_size`` and back, softmax/argmax, the saver. With 16-voxel rows resized to 48 (x3) and back, bilinear
(``align_corners=False``) samples the original voxel centres, so the expected mask is exact: voxel intensities are
random integers (HU) and the threshold lies half-way between two of them.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

SHAPE = (16, 48, 5)
THRESHOLD_HU = 75.5  # the CT window [-125, 275] maps it to 0.50125


def oblique_lps_affine() -> np.ndarray:
    """Voxel axes pointing Left, Posterior, Superior (0.7 x 1.3 x 2.5 mm), rotated 25 deg about z and 12 deg about x."""
    a, b = np.deg2rad(25), np.deg2rad(12)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag([-0.7, -1.3, 2.5])
    affine[:3, 3] = [31.5, -18.25, 42.0]
    return affine


def test_inference_prediction_matches_known_mask_in_input_geometry(tmp_path, bundle_cli):
    rng = np.random.default_rng(7)
    image = rng.integers(-100, 251, SHAPE).astype(np.int16)
    src = nib.Nifti1Image(image, oblique_lps_affine())
    direction = src.affine[:3, :3]
    assert nib.aff2axcodes(src.affine) == ("L", "P", "S")
    assert np.count_nonzero(np.abs(direction) > 0.05) >= 7  # oblique: off-diagonal direction cosines
    path = tmp_path / "oblique_lps.nii.gz"
    nib.save(src, path)
    expected = (image > THRESHOLD_HU).astype(np.uint8)
    assert 0.3 < expected.mean() < 0.7

    root = tmp_path / "bundle"
    (root / "models").mkdir(parents=True)
    threshold = (THRESHOLD_HU + 125) / 400
    torch.save({"threshold": torch.tensor(threshold), "scale": torch.tensor(1000.0)}, root / "models" / "model.pt")
    out = tmp_path / "pred"
    bundle_cli("synapse", ["run"], ["inference.yaml"],
               {"bundle_root": str(root), "input_images": str(path), "output_dir": str(out), "img_size": 48,
                "class_names": ["bright"], "network_def": {"_target_": "run_probes.ThresholdNet"}},
               cwd=tmp_path)  # fmt: skip

    assert sorted(p.name for p in out.iterdir()) == ["oblique_lps_seg.nii.gz"]
    pred = nib.load(out / "oblique_lps_seg.nii.gz")
    assert pred.shape == SHAPE
    np.testing.assert_allclose(pred.affine, nib.load(path).affine, atol=1e-6, rtol=0)
    assert nib.aff2axcodes(pred.affine) == ("L", "P", "S")
    labels = np.asarray(pred.dataobj)
    mismatched = np.argwhere(labels != expected)
    assert mismatched.size == 0, f"{len(mismatched)} voxels differ, first {mismatched[:5].tolist()}"
