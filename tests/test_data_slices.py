"""Stage-2 slice dataset: shapes, dtypes, values, slice selection and augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import DataLoader

from samora_monai.data import (
    BTCV_TO_SYNAPSE,
    VolumeSliceDataset,
    resize_slices,
    select_slices,
    slice_augmentations,
    volume_transforms,
)


@pytest.fixture
def btcv_case(tmp_path, labels, volume, write_nifti):
    """``btcv_case(name)``: a BTCV NIfTI pair in ``tmp_path`` whose slices 6 and 7 are air only."""

    def make(name: str = "0005") -> dict:
        img = volume()
        img[..., 6:] = -1000.0  # air-only slices 6, 7
        return {
            "image": str(write_nifti(tmp_path / f"img{name}.nii.gz", img)),
            "label": str(write_nifti(tmp_path / f"label{name}.nii.gz", labels(ids=(1, 6, 11), slices=(2, 3, 4)))),
        }

    return make


def test_select_slices_foreground_and_body():
    image = torch.zeros(1, 8, 8, 5)
    image[..., 1:4] = 1.0
    image[0, :2, :, 3] = 0.0  # slice 3: 75% body
    label = torch.zeros(1, 8, 8, 5)
    label[0, 2, 2, [0, 2]] = 1
    assert select_slices(image) == [0, 1, 2, 3, 4]
    assert select_slices(image, label, foreground_only=True) == [0, 2]
    assert select_slices(image, min_body_fraction=0.5) == [1, 2, 3]
    assert select_slices(image, min_body_fraction=0.8) == [1, 2]
    assert select_slices(image, label, foreground_only=True, min_body_fraction=0.5) == [2]


def test_resize_slices_shape_and_modes():
    vol = torch.arange(2 * 4 * 6 * 3, dtype=torch.float32).reshape(2, 4, 6, 3)
    out = resize_slices(vol, [2, 0], 8)
    assert out.shape == (2, 2, 8, 8)
    lab = torch.zeros(1, 4, 6, 3)
    lab[0, :2, :, 1] = 7
    out = resize_slices(lab, [1], (8, 12), "nearest")
    assert out.shape == (1, 1, 8, 12) and set(out.unique().tolist()) == {0.0, 7.0}
    assert torch.all(out[0, 0, :4] == 7) and torch.all(out[0, 0, 4:] == 0)


def test_dataset_from_btcv_nifti(btcv_case):
    data = [btcv_case("0005"), btcv_case("0006")]
    transform = volume_transforms("ct", label_mapping=BTCV_TO_SYNAPSE, num_classes=8)
    ds = VolumeSliceDataset(data, transform, spatial_size=16, progress=False)
    assert len(ds) == 16  # 2 volumes x 8 slices
    item = ds[0]
    assert item["image"].shape == (1, 16, 16) and item["image"].dtype == torch.float32
    assert item["label"].shape == (1, 16, 16) and item["label"].dtype == torch.int64
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert ds.data[7] == {"source": data[0]["image"], "slice": 7}
    assert float(ds[7]["image"].max()) == 0.0  # air slice -> 0 after the CT window
    labels_seen = set(torch.cat([ds[i]["label"].flatten() for i in range(len(ds))]).tolist())
    assert labels_seen == {0, 1, 5, 8}  # BTCV 1, 6, 11 -> Synapse 1, 5, 8

    fg = VolumeSliceDataset(data, transform, spatial_size=16, foreground_only=True, progress=False)
    assert [r["slice"] for r in fg.data] == [2, 3, 4, 2, 3, 4]
    assert all(fg[i]["label"].max() > 0 for i in range(len(fg)))
    body = VolumeSliceDataset(data, transform, spatial_size=16, min_body_fraction=0.1, progress=False)
    assert len(body) == 12  # the two air slices of each volume dropped


def test_explicit_slices_and_one_slice_npz(tmp_path, labels, volume, write_la_h5, write_npz):
    img, lab = volume(), labels()
    la = str(write_la_h5(tmp_path / "ID1" / "mri_norm2.h5", img, lab))
    npz = str(write_npz(tmp_path / "case0005_slice003.npz", img[..., 3] / 1000, lab[..., 3]))
    data = [{"image": la, "label": la, "slices": [4, 1]}, {"image": npz, "label": npz}]
    ds = VolumeSliceDataset(data, volume_transforms("none"), spatial_size=32, progress=False)
    assert [r["slice"] for r in ds.data] == [4, 1, 0]
    # no resize needed along X (32): the first row of each slice is kept exactly
    np.testing.assert_allclose(ds[0]["image"][0, :, 0].numpy(), img[:, 0, 4], rtol=1e-4)
    np.testing.assert_allclose(ds[2]["image"][0, :, 0].numpy(), img[:, 0, 3] / 1000, rtol=1e-4)
    assert ds[0]["image"].shape == (1, 32, 32)


def test_augmented_batches_from_dataloader(btcv_case):
    ds = VolumeSliceDataset(
        [btcv_case()],
        volume_transforms("ct", label_mapping=BTCV_TO_SYNAPSE, num_classes=8),
        spatial_size=16,
        foreground_only=True,
        slice_transform=slice_augmentations(prob=1.0),
        progress=False,
    )
    batch = next(iter(DataLoader(ds, batch_size=3, num_workers=0)))
    assert batch["image"].shape == (3, 1, 16, 16) and batch["label"].shape == (3, 1, 16, 16)
    assert batch["label"].dtype == torch.int64
    assert set(batch["label"].unique().tolist()) <= {0, 1, 5, 8}
    assert not torch.equal(batch["image"][0], ds.images[0])  # augmented, the cache untouched


def test_slice_index_out_of_range_names_file(btcv_case):
    case = btcv_case()
    with pytest.raises(ValueError, match=r"img0005.nii.gz: slice index out of range 0..7"):
        VolumeSliceDataset([{**case, "slices": [3, 8]}], volume_transforms("ct"), spatial_size=16, progress=False)
