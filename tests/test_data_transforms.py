"""Intensity pipeline, label mapping and the bad-input errors (each names the file)."""

from __future__ import annotations

import contextlib
import gzip
import re

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from samora_monai.data import BTCV_TO_SYNAPSE, MapLabelsd, intensity_transform, slice_augmentations, volume_transforms


def test_ct_window_maps_hu_to_unit_range():
    hu = torch.tensor([[-1000.0, -125.0, 75.0, 275.0, 3000.0]])
    out = intensity_transform("ct")({"image": hu})["image"]
    np.testing.assert_allclose(out.numpy(), [[0.0, 0.0, 0.5, 1.0, 1.0]], atol=1e-6)


def test_mr_percentiles_map_to_unit_range_and_clip():
    x = torch.from_numpy(np.random.default_rng(0).normal(3.0, 2.0, (1, 16, 16, 8)).astype(np.float32))
    out = intensity_transform("mr")({"image": x})["image"].numpy()
    lo, hi = np.percentile(x.numpy(), [0.5, 99.5])
    np.testing.assert_allclose(out, np.clip((x.numpy() - lo) / (hi - lo), 0, 1), atol=1e-5)
    assert out.min() == 0.0 and out.max() == 1.0


def test_none_keeps_values_and_unknown_modality_fails():
    x = torch.rand(1, 4, 4, 2)
    assert torch.equal(torch.as_tensor(intensity_transform("none")({"image": x})["image"]), x)
    with pytest.raises(ValueError, match="modality"):
        intensity_transform("pet")


def test_btcv_labels_map_to_synapse_classes():
    lab = MetaTensor(torch.arange(14, dtype=torch.float32).reshape(1, 14, 1, 1), meta={"filename_or_obj": "l.nii"})
    out = MapLabelsd("label", BTCV_TO_SYNAPSE)({"label": lab})["label"]
    assert out.flatten().tolist() == [0, 1, 2, 3, 4, 0, 5, 6, 7, 0, 0, 8, 0, 0]
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "l.nii" and out.dtype == torch.float32
    # string keys (JSON configs) and ids above the table become the default
    out = MapLabelsd("label", {"1": 2}, default=0)({"label": torch.tensor([[1.0, 2.0, 40.0]])})["label"]
    assert out.tolist() == [[2.0, 0.0, 0.0]]


def test_volume_transforms_loads_maps_and_normalises(tmp_path, labels, volume, write_nifti):
    img, lab = volume(), labels(ids=(1, 6, 11, 13))
    d = volume_transforms("ct", label_mapping=BTCV_TO_SYNAPSE, num_classes=8)(
        {
            "image": str(write_nifti(tmp_path / "img.nii.gz", img)),
            "label": str(write_nifti(tmp_path / "lab.nii.gz", lab)),
        }
    )
    np.testing.assert_allclose(d["image"][0].numpy(), np.clip((img + 125) / 400, 0, 1), atol=1e-5)
    assert sorted(torch.unique(d["label"]).tolist()) == [0, 1, 5, 8]


@contextlib.contextmanager
def raises_in_pipeline(exc_type: type[Exception], match: str):
    """MONAI's ``Compose`` re-raises a transform's error as ``RuntimeError('applying transform ...')`` from it:
    look for our error (type and message) in the chain of causes, as the user reads it in the traceback."""
    with pytest.raises(Exception) as info:
        yield
    chain, e = [], info.value
    while e is not None:
        chain.append(e)
        e = e.__cause__
    assert any(isinstance(e, exc_type) and re.search(match, str(e)) for e in chain), repr(chain)


@pytest.fixture
def case(tmp_path, labels, volume, write_nifti):
    img = write_nifti(tmp_path / "img0007.nii.gz", volume())
    lab = write_nifti(tmp_path / "label0007.nii.gz", labels())
    return {"image": str(img), "label": str(lab)}


def test_missing_file_names_it(case, tmp_path):
    with raises_in_pipeline(FileNotFoundError, "img0099.nii.gz"):
        volume_transforms()({**case, "image": str(tmp_path / "img0099.nii.gz")})


def test_truncated_gzip_nifti_names_it(case, tmp_path):
    raw = (tmp_path / "img0007.nii.gz").read_bytes()
    bad = tmp_path / "img0008.nii.gz"
    bad.write_bytes(raw[: len(raw) // 2])
    with raises_in_pipeline(RuntimeError, "img0008.nii.gz"):
        volume_transforms()({**case, "image": str(bad)})
    bad.write_bytes(gzip.compress(b"not a nifti header"))
    with raises_in_pipeline(RuntimeError, "img0008.nii.gz"):
        volume_transforms()({**case, "image": str(bad)})


def test_shape_mismatch_names_label_file(case, tmp_path, labels, write_nifti):
    small = write_nifti(tmp_path / "label0009.nii.gz", labels((32, 24, 6), slices=(1,)))
    with raises_in_pipeline(ValueError, r"label0009.nii.gz: label shape \(32, 24, 6\) does not match"):
        volume_transforms()({**case, "label": str(small)})


def test_label_above_class_count_names_file(case):
    # raw BTCV ids (up to 11 here) without the mapping exceed 8 classes
    with raises_in_pipeline(ValueError, r"label0007.nii.gz: label values range \[0, 11\], expected 0..8"):
        volume_transforms(num_classes=8)(case)
    assert volume_transforms(num_classes=8, label_mapping=BTCV_TO_SYNAPSE)(case)["label"].max() == 8


def test_2d_image_where_3d_expected_names_file(case, tmp_path, volume, write_nifti):
    flat = write_nifti(tmp_path / "img2d.nii.gz", volume()[..., 0])
    with raises_in_pipeline(ValueError, r"img2d.nii.gz: image has 2 spatial dimensions .* expected a 3D volume"):
        volume_transforms(label_key=None)({"image": str(flat)})


def test_slice_augmentations_keep_shape_and_label_values():
    aug = slice_augmentations(prob=1.0)
    aug.set_random_state(0)
    img = torch.rand(1, 32, 32)
    lab = torch.zeros(1, 32, 32)
    lab[:, 8:20, 10:24] = 3
    for _ in range(5):
        out = aug({"image": img, "label": lab})
        assert out["image"].shape == (1, 32, 32) and out["label"].shape == (1, 32, 32)
        assert set(torch.unique(out["label"]).tolist()) <= {0.0, 3.0}
    assert not torch.equal(torch.as_tensor(out["image"]), img)
