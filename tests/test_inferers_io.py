"""Saving label volumes in the input geometry, atomically."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Activationsd,
    AsDiscreted,
    Compose,
    EnsureChannelFirstd,
    Invertd,
    LoadImaged,
    Orientationd,
    ScaleIntensityRanged,
)

import samora_monai.inferers.io as io
from samora_monai.inferers import ResizedSliceInferer, SaveLabelVolumed, atomic_output, case_name, prediction_path

# a non-RAS affine with permuted axes, so that Orientationd("RAS") really transposes and flips the array
AFFINE = np.array(
    [
        [0.0, 0.0, -2.5, 30.0],
        [-0.8, 0.0, 0.0, 12.0],
        [0.0, 0.9, 0.0, -40.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def write_image(tmp_path) -> tuple[str, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.uniform(-100, 300, size=(11, 8, 6)).astype(np.float32)
    path = tmp_path / "img0007.nii.gz"
    nib.save(nib.Nifti1Image(image, AFFINE), str(path))
    return str(path), image


def threshold_net(x: torch.Tensor) -> torch.Tensor:
    """Class 1 wherever the (scaled) intensity is above 0.5: the expected labels are known."""
    return torch.cat([0.5 - x, x - 0.5], dim=1)


def preprocessing() -> Compose:
    return Compose(
        [
            LoadImaged(keys="image"),
            EnsureChannelFirstd(keys="image"),
            Orientationd(keys="image", axcodes="RAS"),
            ScaleIntensityRanged(keys="image", a_min=-100, a_max=300, b_min=0, b_max=1, clip=True),
        ]
    )


def run_inference(path: str, pre: Compose) -> dict:
    data = pre({"image": path})
    inferer = ResizedSliceInferer(spatial_size=None, sw_batch_size=4)
    data["pred"] = inferer(data["image"][None], threshold_net)[0]
    return data


def test_pipeline_writes_input_geometry(tmp_path):
    path, image = write_image(tmp_path)
    pre = preprocessing()
    data = run_inference(path, pre)
    assert data["image"].shape[1:] != image.shape  # the preprocessing really reoriented the volume
    post = Compose(
        [
            Activationsd(keys="pred", softmax=True),
            AsDiscreted(keys="pred", argmax=True),
            Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=True),
            SaveLabelVolumed(keys="pred", output_dir=tmp_path / "out"),
        ]
    )
    post(data)
    out = tmp_path / "out" / "img0007_seg.nii.gz"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["img0007_seg.nii.gz"]
    saved = nib.load(str(out))
    assert saved.shape == image.shape
    np.testing.assert_allclose(saved.affine, AFFINE, atol=1e-5)
    assert nib.aff2axcodes(saved.affine) == nib.aff2axcodes(AFFINE)
    np.testing.assert_allclose(saved.header.get_zooms(), (0.8, 0.9, 2.5), atol=1e-5)
    assert saved.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(saved.dataobj), (image > 100).astype(np.uint8))


def test_missing_invert_is_refused_and_nothing_written(tmp_path):
    path, _ = write_image(tmp_path)
    data = run_inference(path, preprocessing())
    data = AsDiscreted(keys="pred", argmax=True)(data)
    with pytest.raises(RuntimeError, match="img0007.nii.gz.*Invertd"):
        SaveLabelVolumed(keys="pred", output_dir=tmp_path / "out")(data)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_failure_while_writing_leaves_no_file(tmp_path, monkeypatch):
    out_dir = tmp_path / "out"
    pred = MetaTensor(torch.ones(1, 4, 4, 3), affine=torch.eye(4), meta={"filename_or_obj": "case.nii.gz"})

    def broken_save(img, filename):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(io.nib, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        SaveLabelVolumed(keys="pred", output_dir=out_dir, ref_key=None)({"pred": pred})
    assert list(out_dir.iterdir()) == []


def test_bad_predictions(tmp_path):
    meta = {"filename_or_obj": "/x/case3.nii.gz"}
    save = SaveLabelVolumed(keys="pred", output_dir=tmp_path, ref_key=None)
    with pytest.raises(ValueError, match="case3.nii.gz has 3 channels.*argmax"):
        save({"pred": MetaTensor(torch.zeros(3, 4, 4, 4), meta=meta)})
    with pytest.raises(ValueError, match="case3.nii.gz must be a 3D"):
        save({"pred": MetaTensor(torch.zeros(1, 4, 4), meta=meta)})
    with pytest.raises(ValueError, match="case3.nii.gz is not an integer"):
        save({"pred": MetaTensor(torch.full((1, 4, 4, 4), 0.5), meta=meta)})
    with pytest.raises(ValueError, match="filename_or_obj"):
        save({"pred": MetaTensor(torch.zeros(1, 4, 4, 4))})
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_replaces_only_on_success(tmp_path):
    target = tmp_path / "sub" / "report.json"
    with atomic_output(target) as tmp:
        assert tmp.name.endswith("report.json") and tmp.parent == target.parent
        tmp.write_text("first")
    with pytest.raises(KeyError), atomic_output(target) as tmp:
        tmp.write_text("half")
        raise KeyError("boom")
    assert target.read_text() == "first"
    assert [p.name for p in target.parent.iterdir()] == ["report.json"]


def test_naming():
    assert case_name("/d/img0001.nii.gz") == "img0001" and case_name("a/b.nii") == "b"
    assert prediction_path("/d/img0001.nii.gz", "/o").as_posix() == "/o/img0001_seg.nii.gz"
    assert prediction_path("img0001.nii", "/o", postfix="").as_posix() == "/o/img0001.nii.gz"
