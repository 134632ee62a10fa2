"""Readers: every supported file format becomes [1, X, Y, Z] with the right values and affine.

The ``write_*`` helpers create files in the real formats and are shared by the other tests/test_data_*.py files.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from monai.transforms import LoadImaged

from samora_monai.data import H5VolumeReader, LoadVolumed, NpzSliceReader

SHAPE = (32, 24, 8)  # (X, Y, Z), deliberately non-square
AFFINE = np.array([[0.8, 0, 0, -10.0], [0, 0.7, 0, 5.0], [0, 0, 2.5, 30.0], [0, 0, 0, 1]])


def volume(shape=SHAPE, seed: int = 0) -> np.ndarray:
    """CT-like volume in HU whose voxels are all distinct (so any axis mix-up shows)."""
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    return (x / x.max() * 1200 - 1000 + np.random.default_rng(seed).random(shape)).astype(np.float32)


def labels(shape=SHAPE, ids=(1, 6, 11), slices=(2, 3, 4)) -> np.ndarray:
    """Label volume with a blob per id in the given slices only."""
    lab = np.zeros(shape, dtype=np.uint8)
    for k, i in enumerate(ids):
        lab[4 + 6 * k : 8 + 6 * k, 4:10, list(slices)] = i
    return lab


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def write_transunet_h5(path: Path, image_xyz: np.ndarray, label_xyz: np.ndarray) -> Path:
    """TransUNet ``test_vol_h5``: (D, H, W) = transpose of the nibabel (X, Y, Z) array."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["image"] = image_xyz.transpose(2, 1, 0)
        f["label"] = label_xyz.transpose(2, 1, 0).astype(np.float32)
    return path


def write_la_h5(path: Path, image_xyz: np.ndarray, label_xyz: np.ndarray) -> Path:
    """UA-MT LA ``mri_norm2.h5``: (W, H, D)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["image"] = image_xyz
        f["label"] = label_xyz.astype(np.uint8)
    return path


def write_npz(path: Path, image_xy: np.ndarray, label_xy: np.ndarray) -> Path:
    """TransUNet ``train_npz`` slice: (H, W) = slice z of the (D, H, W) volume."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, image=image_xy.T.astype(np.float32), label=label_xy.T.astype(np.float32))
    return path


def _load(path: Path, **kwargs) -> dict:
    return LoadVolumed(["image", "label"], **kwargs)({"image": str(path), "label": str(path)})


def test_nifti_keeps_array_and_affine(tmp_path):
    img, lab = volume(), labels()
    d = LoadVolumed(["image", "label"])(
        {
            "image": str(write_nifti(tmp_path / "img0001.nii.gz", img)),
            "label": str(write_nifti(tmp_path / "l.nii", lab)),
        }
    )
    assert tuple(d["image"].shape) == (1, *SHAPE)
    np.testing.assert_allclose(d["image"][0].numpy(), img)
    np.testing.assert_array_equal(d["label"][0].numpy(), lab)
    np.testing.assert_allclose(d["image"].affine.numpy(), AFFINE, atol=1e-6)
    assert d["image"].meta["filename_or_obj"].endswith("img0001.nii.gz")


def test_transunet_h5_is_transposed_back_to_xyz(tmp_path):
    img, lab = volume(), labels()
    d = _load(write_transunet_h5(tmp_path / "case0001.npy.h5", img, lab), spacing=(0.8, 0.7, 3.0))
    assert tuple(d["image"].shape) == (1, *SHAPE)
    np.testing.assert_allclose(d["image"][0].numpy(), img)
    np.testing.assert_array_equal(d["label"][0].numpy(), lab)
    np.testing.assert_allclose(d["label"].affine.numpy(), np.diag([0.8, 0.7, 3.0, 1.0]))


def test_la_h5_keeps_whd_order(tmp_path):
    img, lab = volume(), labels(ids=(1,))
    d = _load(write_la_h5(tmp_path / "06SR5RBREL16DQ6M8LWS" / "mri_norm2.h5", img, lab))
    assert tuple(d["image"].shape) == (1, *SHAPE)
    np.testing.assert_allclose(d["image"][0].numpy(), img)
    np.testing.assert_array_equal(d["label"][0].numpy(), lab)
    np.testing.assert_allclose(d["image"].affine.numpy(), np.eye(4))


def test_npz_slice_is_a_one_slice_volume(tmp_path):
    img, lab = volume()[..., 3], labels()[..., 3]
    d = _load(write_npz(tmp_path / "case0005_slice003.npz", img, lab))
    assert tuple(d["image"].shape) == (1, SHAPE[0], SHAPE[1], 1)
    np.testing.assert_allclose(d["image"][0, ..., 0].numpy(), img)
    np.testing.assert_array_equal(d["label"][0, ..., 0].numpy(), lab)


def test_readers_work_through_monai_loadimaged(tmp_path):
    img, lab = volume(), labels()
    path = str(write_transunet_h5(tmp_path / "case0002.npy.h5", img, lab))
    d = LoadImaged("label", reader=H5VolumeReader(dataset="label"), ensure_channel_first=True)({"label": path})
    np.testing.assert_array_equal(d["label"][0].numpy(), lab)
    path = str(write_npz(tmp_path / "s.npz", img[..., 0], lab[..., 0]))
    d = LoadImaged("image", reader=NpzSliceReader("image"), ensure_channel_first=True)({"image": path})
    assert tuple(d["image"].shape) == (1, SHAPE[0], SHAPE[1], 1)


def test_h5_without_the_dataset_names_file_and_keys(tmp_path):
    path = tmp_path / "broken.h5"
    with h5py.File(path, "w") as f:
        f["img"] = volume()
    with pytest.raises(RuntimeError, match=r"broken\.h5.*no dataset 'image'.*\['img'\]"):
        LoadVolumed("image")({"image": str(path)})


def test_unsupported_suffix_names_file(tmp_path):
    path = tmp_path / "scan.xyz"
    path.write_text("nothing")
    with pytest.raises(ValueError, match=r"scan\.xyz: unsupported format"):
        LoadVolumed("image")({"image": str(path)})
