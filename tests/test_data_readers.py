"""Readers: every supported file format becomes [1, X, Y, Z] with the right values and affine.

The ``write_*`` helpers create files in the real formats and are shared by the other tests/test_data_*.py files.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from monai.transforms import LoadImaged

from samora_monai.data import H5VolumeReader, LoadVolumed, NpzSliceReader

SHAPE = (32, 24, 8)  # (X, Y, Z), deliberately non-square
AFFINE = np.array([[0.8, 0, 0, -10.0], [0, 0.7, 0, 5.0], [0, 0, 2.5, 30.0], [0, 0, 0, 1]])


def _load(path: Path, **kwargs) -> dict:
    return LoadVolumed(["image", "label"], **kwargs)({"image": str(path), "label": str(path)})


def test_nifti_keeps_array_and_affine(tmp_path, labels, volume, write_nifti):
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


def test_transunet_h5_is_transposed_back_to_xyz(tmp_path, labels, volume, write_transunet_h5):
    img, lab = volume(), labels()
    d = _load(write_transunet_h5(tmp_path / "case0001.npy.h5", img, lab), spacing=(0.8, 0.7, 3.0))
    assert tuple(d["image"].shape) == (1, *SHAPE)
    np.testing.assert_allclose(d["image"][0].numpy(), img)
    np.testing.assert_array_equal(d["label"][0].numpy(), lab)
    np.testing.assert_allclose(d["label"].affine.numpy(), np.diag([0.8, 0.7, 3.0, 1.0]))


def test_la_h5_keeps_whd_order(tmp_path, labels, volume, write_la_h5):
    img, lab = volume(), labels(ids=(1,))
    d = _load(write_la_h5(tmp_path / "06SR5RBREL16DQ6M8LWS" / "mri_norm2.h5", img, lab))
    assert tuple(d["image"].shape) == (1, *SHAPE)
    np.testing.assert_allclose(d["image"][0].numpy(), img)
    np.testing.assert_array_equal(d["label"][0].numpy(), lab)
    np.testing.assert_allclose(d["image"].affine.numpy(), np.eye(4))


def test_npz_slice_is_a_one_slice_volume(tmp_path, labels, volume, write_npz):
    img, lab = volume()[..., 3], labels()[..., 3]
    d = _load(write_npz(tmp_path / "case0005_slice003.npz", img, lab))
    assert tuple(d["image"].shape) == (1, SHAPE[0], SHAPE[1], 1)
    np.testing.assert_allclose(d["image"][0, ..., 0].numpy(), img)
    np.testing.assert_array_equal(d["label"][0, ..., 0].numpy(), lab)


def test_readers_work_through_monai_loadimaged(tmp_path, labels, volume, write_npz, write_transunet_h5):
    img, lab = volume(), labels()
    path = str(write_transunet_h5(tmp_path / "case0002.npy.h5", img, lab))
    d = LoadImaged("label", reader=H5VolumeReader(dataset="label"), ensure_channel_first=True)({"label": path})
    np.testing.assert_array_equal(d["label"][0].numpy(), lab)
    path = str(write_npz(tmp_path / "s.npz", img[..., 0], lab[..., 0]))
    d = LoadImaged("image", reader=NpzSliceReader("image"), ensure_channel_first=True)({"image": path})
    assert tuple(d["image"].shape) == (1, SHAPE[0], SHAPE[1], 1)


def test_h5_without_the_dataset_names_file_and_keys(tmp_path, volume):
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
