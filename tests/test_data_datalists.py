"""Named splits (package data) and datalists of each dataset layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
from monai.data import load_decathlon_datalist

from samora_monai.data import (
    btcv_datalist,
    group_slices,
    la_datalist,
    load_split,
    msd_heart_datalist,
    named_datalist,
    transunet_synapse_datalist,
    write_datalist,
)

SYNAPSE_TRAIN = [5, 6, 7, 9, 10, 21, 23, 24, 26, 27, 28, 30, 31, 33, 34, 37, 39, 40]
SYNAPSE_TEST = [1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38]
ZEROS = np.zeros((4, 4, 2), dtype=np.float32)


def test_named_splits_from_package_data():
    assert len(load_split("synapse_full")) == 2211
    assert len(load_split("synapse_10pct")) == 221
    assert sorted(load_split("synapse_test")) == [f"case{c:04d}" for c in SYNAPSE_TEST]
    assert sorted(group_slices(load_split("synapse_10pct"))) == [f"case{c:04d}" for c in SYNAPSE_TRAIN]
    assert sorted(group_slices(load_split("synapse_full"))) == [f"case{c:04d}" for c in SYNAPSE_TRAIN]
    assert len(load_split("la_train")) == 80 and len(load_split("la_test")) == 20
    la4 = group_slices(load_split("la_4scans"))
    assert list(la4) == load_split("la_train")[:4] and sum(map(len, la4.values())) == 224
    assert len(load_split("promise12_3scans")) == 58 and len(load_split("promise12_test")) == 10
    with pytest.raises(ValueError, match="unknown split 'synapse_5pct'"):
        load_split("synapse_5pct")


def _btcv_tree(root, cases=SYNAPSE_TRAIN + SYNAPSE_TEST, *, write_nifti):
    for c in cases:
        write_nifti(root / "RawData/Training/img" / f"img{c:04d}.nii.gz", ZEROS)
        write_nifti(root / "RawData/Training/label" / f"label{c:04d}.nii.gz", ZEROS)
    write_nifti(root / "RawData/Testing/img/img0061.nii.gz", ZEROS)


def test_btcv_settings(tmp_path, write_nifti):
    _btcv_tree(tmp_path, write_nifti=write_nifti)
    full = btcv_datalist(tmp_path, "synapse_full")
    assert len(full["training"]) == 18 and "slices" not in full["training"][0]
    assert full["training"][0]["image"].endswith("RawData/Training/img/img0005.nii.gz")
    assert full["training"][0]["label"].endswith("RawData/Training/label/label0005.nii.gz")
    assert [d["image"].split("/")[-1] for d in full["testing"]][:2] == ["img0001.nii.gz", "img0002.nii.gz"]
    assert len(full["testing"]) == 12 and full["unlabeled"][0]["image"].endswith("img0061.nii.gz")
    few = named_datalist("synapse_10pct", tmp_path)
    assert len(few["training"]) == 18 and sum(len(d["slices"]) for d in few["training"]) == 221
    assert len(btcv_datalist(tmp_path, None)["training"]) == 30


def test_btcv_imagestr_layout_and_missing_case(tmp_path, write_nifti):
    for c in SYNAPSE_TRAIN[:3]:
        write_nifti(tmp_path / "imagesTr" / f"img{c:04d}.nii.gz", ZEROS)
        write_nifti(tmp_path / "labelsTr" / f"label{c:04d}.nii.gz", ZEROS)
    assert len(btcv_datalist(tmp_path, None)["training"]) == 3
    with pytest.raises(FileNotFoundError, match="img0009.nii.gz"):
        btcv_datalist(tmp_path, "synapse_full")
    write_nifti(tmp_path / "imagesTr" / "img0099.nii.gz", ZEROS)
    with pytest.raises(FileNotFoundError, match="no label in .*img0099.nii.gz"):
        btcv_datalist(tmp_path, None)


def test_transunet_synapse_10pct(tmp_path, write_npz, write_transunet_h5):
    for name in load_split("synapse_10pct"):
        write_npz(tmp_path / "train_npz" / f"{name}.npz", ZEROS[..., 0], ZEROS[..., 0])
    for case in load_split("synapse_test"):
        write_transunet_h5(tmp_path / "test_vol_h5" / f"{case}.npy.h5", ZEROS, ZEROS)
    dl = named_datalist("synapse_10pct", tmp_path)
    assert len(dl["training"]) == 221 and len(dl["testing"]) == 12
    assert dl["training"][0]["image"] == dl["training"][0]["label"]
    assert dl["training"][0]["image"].endswith(f"train_npz/{load_split('synapse_10pct')[0]}.npz")
    with pytest.raises(FileNotFoundError, match=r"1990 synapse_full training file\(s\) missing"):
        transunet_synapse_datalist(tmp_path, "synapse_full")
    assert len(transunet_synapse_datalist(tmp_path, None)["training"]) == 221


def test_la_4scans(tmp_path, write_la_h5):
    ids = load_split("la_train")[:6] + load_split("la_test")
    for case in ids:
        write_la_h5(tmp_path / "2018LA_Seg_Training Set" / case / "mri_norm2.h5", ZEROS, ZEROS)
    dl = named_datalist("la_4scans", tmp_path)
    assert [d["image"].split("/")[-2] for d in dl["training"]] == load_split("la_train")[:4]
    assert sum(len(d["slices"]) for d in dl["training"]) == 224
    assert dl["training"][0]["slices"][:2] == [19, 20]
    assert len(dl["testing"]) == 20 and [d["image"].split("/")[-2] for d in dl["unlabeled"]] == ids[4:6]
    assert "label" not in dl["unlabeled"][0]
    dl8 = la_datalist(tmp_path, None, num_labeled=5)
    assert len(dl8["training"]) == 5 and "slices" not in dl8["training"][0] and len(dl8["unlabeled"]) == 1


def test_msd_heart_and_written_json_roundtrip(tmp_path, write_nifti):
    root = tmp_path / "Task02_Heart"
    for c in (3, 4, 5, 7):
        write_nifti(root / "imagesTr" / f"la_{c:03d}.nii.gz", ZEROS)
        write_nifti(root / "labelsTr" / f"la_{c:03d}.nii.gz", ZEROS)
    write_nifti(root / "imagesTs" / "la_001.nii.gz", ZEROS)
    (root / "imagesTr" / "._la_003.nii.gz").write_bytes(b"macOS resource fork")
    dl = msd_heart_datalist(root, num_labeled=2, num_validation=1)
    assert [d["image"].split("/")[-1] for d in dl["training"]] == ["la_003.nii.gz", "la_004.nii.gz"]
    assert dl["validation"][0]["label"].endswith("labelsTr/la_005.nii.gz")
    assert [d["image"].split("/")[-2:] for d in dl["unlabeled"]] == [
        ["imagesTr", "la_007.nii.gz"],
        ["imagesTs", "la_001.nii.gz"],
    ]

    path = write_datalist(dl, tmp_path / "lists" / "heart.json")
    raw = json.loads(open(path).read())
    assert raw["training"][0]["image"] == "../Task02_Heart/imagesTr/la_003.nii.gz"
    loaded = load_decathlon_datalist(path, data_list_key="training")
    assert loaded[0]["image"] == str((root / "imagesTr" / "la_003.nii.gz").resolve())
