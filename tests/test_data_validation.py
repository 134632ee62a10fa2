"""Input validation on load (data/validation.py) on real NIfTI files, through the loading pipeline every entry point
uses (``volume_transforms``) and through stage-1 preparation: each bad input stops with the file named and the
problem stated, and nothing is written. Also the label mapping: an empty mapping is refused, ``"null"`` turns it off,
values sent to background are reported."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import LoadImaged

from samora_monai.apps.bundle_run import failure_reason
from samora_monai.data import MapLabelsd, VolumeSliceDataset, prepare_unlabeled, volume_transforms

AFFINE = np.array([[-0.8, 0, 0, 20.0], [0, 0.9, 0, -15.0], [0, 0, 2.5, 30.0], [0, 0, 0, 1]])
SHAPE = (20, 16, 4)


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 50, SHAPE).astype(np.float32)


def _label() -> np.ndarray:
    label = np.zeros(SHAPE, np.float32)
    label[4:10, 3:8] = 1
    label[12:18, 9:14] = 2
    return label


def _save(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), path)
    return str(path)


def _nan_image():
    image = _image()
    image[3, 4, 1] = np.nan
    image[5, 6, 2] = np.inf
    return image


# problem -> (image maker, words the message must contain)
IMAGE_PROBLEMS = {
    "non_finite": (_nan_image, "2 non-finite voxels"),
    "channels": (lambda: np.stack([_image(0), _image(1)], -1), "2 channels (a 4th dimension"),
    "not_3d": (lambda: _image()[..., 0], "2 spatial dimensions"),
    "empty": (lambda: np.zeros((20, 16, 0), np.float32), "is empty"),
    "constant": (lambda: np.full(SHAPE, -1000.0, np.float32), "constant value -1000"),
}


@pytest.mark.parametrize("problem", sorted(IMAGE_PROBLEMS))
def test_bad_image_stops_with_file_named(problem, tmp_path):
    make, words = IMAGE_PROBLEMS[problem]
    image = _save(tmp_path / "data" / f"{problem}.nii.gz", make())
    label = _save(tmp_path / "data" / "label.nii.gz", _label())
    with pytest.raises(Exception) as info:  # noqa: PT011  (MONAI's Compose wraps the ValueError)
        volume_transforms("ct", label_mapping=None, num_classes=2)({"image": image, "label": label})
    reason = failure_reason(info.value)
    assert reason.startswith(f"ValueError: {image}: image") and words in reason


@pytest.mark.parametrize("problem", sorted(IMAGE_PROBLEMS))
def test_bad_image_stage1_preparation_writes_nothing(problem, tmp_path):
    make, words = IMAGE_PROBLEMS[problem]
    _save(tmp_path / "data" / "good0001.nii.gz", _image())
    bad = _save(tmp_path / "data" / f"zz_{problem}.nii.gz", make())  # after the good volume: its slices are undone
    out = tmp_path / "out"
    with pytest.raises(Exception) as info:  # noqa: PT011
        prepare_unlabeled(str(out), glob=str(tmp_path / "data" / "*.nii.gz"), exclude=[], spatial_size=32,
                          progress=False)  # fmt: skip
    reason = failure_reason(info.value)
    assert bad in reason and words in reason
    assert not [p for p in out.rglob("*") if p.is_file()]


def _non_integer_label():
    label = _label()
    label[5, 5, 1] = 0.5
    return label


LABEL_PROBLEMS = {
    "non_integer": (_non_integer_label, AFFINE, "not integer-valued (1 voxels, e.g. 0.5)"),
    "affine": (_label, AFFINE + np.diag([0, 0, 0.5, 0]), "label affine differs from the affine of image"),
    "range": (lambda: _label() * 3, AFFINE, "label values range [0, 6], expected 0..2"),
}


@pytest.mark.parametrize(
    ("problem", "mapping"), [(p, None) for p in sorted(LABEL_PROBLEMS)] + [("non_integer", {1: 1, 2: 2})]
)
def test_bad_label_stops_training_data_with_file_named(problem, mapping, tmp_path):
    make, affine, words = LABEL_PROBLEMS[problem]
    image = _save(tmp_path / "image.nii.gz", _image())
    label = _save(tmp_path / f"label_{problem}.nii.gz", make(), affine)
    transform = volume_transforms("ct", label_mapping=mapping, num_classes=2)
    with pytest.raises(Exception) as info:  # noqa: PT011
        VolumeSliceDataset([{"image": image, "label": label}], transform, spatial_size=32, progress=False)
    reason = failure_reason(info.value)
    assert reason.startswith(f"ValueError: {label}: label") and words in reason


def test_affine_within_tolerance_passes(tmp_path):
    image = _save(tmp_path / "image.nii.gz", _image())
    label = _save(tmp_path / "label.nii.gz", _label(), AFFINE + 1e-5)
    out = volume_transforms("ct", num_classes=2)({"image": image, "label": label})
    assert tuple(out["label"].shape) == (1, *SHAPE)


def test_empty_mapping_refused_and_null_turns_mapping_off(tmp_path):
    with pytest.raises(ValueError, match=r"got \{\} \(an empty mapping would send every label to background\).*null"):
        volume_transforms("ct", label_mapping={}, num_classes=2)
    image = _save(tmp_path / "image.nii.gz", _image())
    label = _save(tmp_path / "label.nii.gz", _label() * np.isin(_label(), [0, 1]) * 5 + (_label() == 2) * 7)
    for off in (None, "null", "None", " NULL "):
        out = volume_transforms("ct", label_mapping=off, num_classes=7)({"image": image, "label": label})
        assert sorted(np.unique(out["label"].numpy()).tolist()) == [0, 5, 7]
    btcv = volume_transforms("ct", label_mapping={1: 1, 2: 2, 3: 3, 4: 4, 6: 5, 7: 6, 8: 7, 11: 8})
    assert sorted(np.unique(btcv({"image": image, "label": label})["label"].numpy()).tolist()) == [0, 6]


def test_values_sent_to_background_are_reported(tmp_path, caplog):
    label = _label() * 5  # values 5 and 10
    path = _save(tmp_path / "label.nii.gz", label)
    transform = MapLabelsd("label", {5: 1})
    data = LoadImaged("label", image_only=True, ensure_channel_first=True)({"label": path})
    with caplog.at_level(logging.WARNING, logger="samora_monai.data.transforms"):
        out = transform(data)
    assert transform.last_dropped == {10: int((label == 10).sum())}
    lines = [r.getMessage() for r in caplog.records if r.name == "samora_monai.data.transforms"]
    assert len(lines) == 1 and path in lines[0] and f"{{10: {int((label == 10).sum())}}}" in lines[0]
    assert sorted(np.unique(out["label"].numpy()).tolist()) == [0, 1]
