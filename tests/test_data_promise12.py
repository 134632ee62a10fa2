"""PROMISE12: both file formats load as [1, X, Y, Z] with the right values and geometry; the named settings pick
exactly the published cases and slices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from samora_monai.data import (
    PROMISE12_CASES,
    LoadVolumed,
    NpyDictReader,
    load_split,
    named_datalist,
    promise12_datalist,
)

SHAPE_DHW = (6, 20, 14)  # (D, H, W) = (Z, Y, X), non-square in-plane


def volume_dhw(seed: int = 0) -> np.ndarray:
    """MR-like volume whose voxels are all distinct, so an axis mix-up shows."""
    x = np.arange(np.prod(SHAPE_DHW), dtype=np.float32).reshape(SHAPE_DHW)
    return x + np.random.default_rng(seed).random(SHAPE_DHW, dtype=np.float32) * 0.5


def label_dhw() -> np.ndarray:
    lab = np.zeros(SHAPE_DHW, np.uint8)
    lab[2:4, 5:12, 3:9] = 1
    return lab


def write_npy_dict(path: Path, img: np.ndarray, label: np.ndarray) -> Path:
    """The H-SAM ``all_data_prepro/CaseXX.npy`` format: ``np.save`` of a dict (pickled)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, {"img": img, "label": label}, allow_pickle=True)
    return path


def write_mhd(path: Path, array_zyx: np.ndarray, spacing_xyz, origin_xyz) -> Path:
    """A MetaImage header + raw pair written by hand (``DimSize`` is X Y Z; the raw data is Z-major)."""
    types = {np.dtype(np.int16): "MET_SHORT", np.dtype(np.uint8): "MET_UCHAR", np.dtype(np.float32): "MET_FLOAT"}
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = path.with_suffix(".raw")
    np.ascontiguousarray(array_zyx).astype(array_zyx.dtype.newbyteorder("<")).tofile(raw)
    header = {
        "ObjectType": "Image",
        "NDims": "3",
        "BinaryData": "True",
        "BinaryDataByteOrderMSB": "False",
        "CompressedData": "False",
        "TransformMatrix": "1 0 0 0 1 0 0 0 1",
        "Offset": " ".join(map(str, origin_xyz)),
        "ElementSpacing": " ".join(map(str, spacing_xyz)),
        "DimSize": " ".join(map(str, array_zyx.shape[::-1])),
        "ElementType": types[array_zyx.dtype],
        "ElementDataFile": raw.name,
    }
    path.write_text("".join(f"{k} = {v}\n" for k, v in header.items()))
    return path


def test_npy_dict_reader_values_and_geometry(tmp_path):
    img, lab = volume_dhw(), label_dhw()
    path = write_npy_dict(tmp_path / "Case05.npy", img, lab)
    out = LoadVolumed(["image", "label"])({"image": str(path), "label": str(path)})
    assert out["image"].shape == (1, 14, 20, 6)  # [1, X, Y, Z] = [1, W, H, D]
    np.testing.assert_array_equal(out["image"][0].numpy(), img.transpose(2, 1, 0))
    np.testing.assert_array_equal(out["label"][0].numpy(), lab.transpose(2, 1, 0))
    # slice z of the loaded volume is slice z of the file, transposed to (X, Y)
    np.testing.assert_array_equal(out["image"][0, :, :, 3].numpy(), img[3].T)
    np.testing.assert_allclose(out["image"].affine.numpy(), np.eye(4))
    spaced = LoadVolumed(["image"], spacing=(0.6, 0.6, 3.0))({"image": str(path)})["image"]
    np.testing.assert_allclose(np.diag(spaced.affine.numpy()), [0.6, 0.6, 3.0, 1.0])
    # H-SAM's LA test files store (D, W, H)
    la = NpyDictReader("image", axes="DWH").get_data(NpyDictReader("image").read(path))[0]
    np.testing.assert_array_equal(la, img.transpose(1, 2, 0))


def test_npy_reader_refuses_other_content(tmp_path):
    plain = tmp_path / "Case01.npy"
    np.save(plain, np.zeros((2, 3, 4)))
    with pytest.raises(RuntimeError, match=r"Case01\.npy.*expected a pickled dict"):
        LoadVolumed(["image"])({"image": str(plain)})
    no_img = write_npy_dict(tmp_path / "Case02.npy", volume_dhw(), label_dhw())
    np.save(no_img, {"image": volume_dhw()}, allow_pickle=True)
    with pytest.raises(RuntimeError, match=r"Case02\.npy.*no entry 'img'"):
        LoadVolumed(["image"])({"image": str(no_img)})
    flat = write_npy_dict(tmp_path / "Case03.npy", volume_dhw()[0], label_dhw()[0])
    with pytest.raises(RuntimeError, match=r"Case03\.npy.*expected a 3D volume"):
        LoadVolumed(["image"])({"image": str(flat)})


def test_mhd_reader_values_and_geometry(tmp_path):
    pytest.importorskip("itk")
    img = (volume_dhw() * 10).astype(np.int16)  # (Z, Y, X) in the raw file
    lab = label_dhw()
    spacing, origin = (0.625, 0.7, 3.6), (-40.0, 12.5, 7.0)
    image_path = write_mhd(tmp_path / "Case14.mhd", img, spacing, origin)
    label_path = write_mhd(tmp_path / "Case14_segmentation.mhd", lab, spacing, origin)
    out = LoadVolumed(["image", "label"])({"image": str(image_path), "label": str(label_path)})
    assert out["image"].shape == (1, 14, 20, 6)
    np.testing.assert_array_equal(out["image"][0].numpy(), img.transpose(2, 1, 0).astype(np.float32))
    np.testing.assert_array_equal(out["label"][0].numpy(), lab.transpose(2, 1, 0))
    affine = out["image"].affine.numpy()
    np.testing.assert_allclose(np.abs(np.diag(affine)[:3]), spacing, rtol=1e-6)  # spacing from the header
    np.testing.assert_allclose(np.abs(affine[:3, 3]), np.abs(origin), rtol=1e-6)  # LPS origin, in RAS
    np.testing.assert_allclose(out["label"].affine.numpy(), affine)


def make_dataset(root: Path, fmt: str, cases=PROMISE12_CASES) -> None:
    """Placeholder files of the given format for the datalist tests (datalists only check that files exist)."""
    for k, case in enumerate(cases):
        folder = root / f"TrainingData_Part{k % 3 + 1}" if fmt == "mhd" else root
        folder.mkdir(parents=True, exist_ok=True)
        names = [f"{case}.npy"] if fmt == "npy" else [f"{case}.mhd", f"{case}_segmentation.mhd"]
        for name in names:
            (folder / name).write_text("")


@pytest.mark.parametrize("fmt", ["npy", "mhd"])
def test_three_scan_setting_picks_the_listed_cases(tmp_path, fmt):
    make_dataset(tmp_path, fmt)
    dl = named_datalist("promise12_3scans", tmp_path)
    assert [Path(d["image"]).name for d in dl["training"]] == [f"Case05.{fmt}", f"Case14.{fmt}", f"Case29.{fmt}"]
    slices = {Path(d["image"]).stem: d["slices"] for d in dl["training"]}
    assert slices == {"Case05": list(range(7, 33)), "Case14": list(range(2, 18)), "Case29": list(range(2, 18))}
    assert sum(len(s) for s in slices.values()) == 58
    expected_test = ["Case12", "Case13", "Case16", "Case20", "Case23", "Case28", "Case34", "Case35", "Case43", "Case49"]
    assert [Path(d["image"]).stem for d in dl["testing"]] == expected_test
    assert sorted(load_split("promise12_test")) == expected_test
    for d in dl["training"] + dl["testing"]:
        image, label = Path(d["image"]), Path(d["label"])
        assert label.is_file() and label.name == (image.name if fmt == "npy" else f"{image.stem}_segmentation.mhd")


def test_full_setting_is_every_non_test_case(tmp_path):
    make_dataset(tmp_path, "npy")
    dl = promise12_datalist(tmp_path, "promise12_full")
    train = [Path(d["image"]).stem for d in dl["training"]]
    test = [Path(d["image"]).stem for d in dl["testing"]]
    assert len(train) == 40 and len(test) == 10
    assert set(train).isdisjoint(test) and set(train) | set(test) == set(PROMISE12_CASES)
    assert all("slices" not in d for d in dl["training"])


def test_missing_files_and_bad_settings(tmp_path):
    make_dataset(tmp_path, "mhd", [c for c in PROMISE12_CASES if c != "Case14"])
    with pytest.raises(FileNotFoundError, match=r"missing: \['Case14'\]"):
        promise12_datalist(tmp_path, "promise12_3scans")
    next(tmp_path.glob("*/Case05_segmentation.mhd")).unlink()
    make_dataset(tmp_path, "mhd", ["Case14"])
    with pytest.raises(FileNotFoundError, match="Case05_segmentation.mhd"):
        promise12_datalist(tmp_path, "promise12_3scans")
    with pytest.raises(FileNotFoundError, match="no PROMISE12 files"):
        promise12_datalist(tmp_path / "TrainingData_Part1" / "nothing", "promise12_full")
    (tmp_path / "TestData").mkdir()
    (tmp_path / "TestData" / "Case14.mhd").write_text("")  # the challenge's unlabelled test set reuses names
    with pytest.raises(ValueError, match=r"Case14 found twice: .*TestData/Case14\.mhd"):
        promise12_datalist(tmp_path, "promise12_3scans")
    with pytest.raises(ValueError, match="promise12_10scans"):
        promise12_datalist(tmp_path, "promise12_10scans")
    with pytest.raises(ValueError, match="promise12_full"):
        named_datalist("promise_3", tmp_path)


def test_three_scan_slices_reach_the_training_dataset(tmp_path):
    """The published foreground slices of real .npy dicts end up, and only they, in the stage-2 slice dataset."""
    from samora_monai.data import VolumeSliceDataset, volume_transforms

    rng = np.random.default_rng(0)
    listed = {c: s for c, s in (("Case05", range(7, 33)), ("Case14", range(2, 18)), ("Case29", range(2, 18)))}
    for case in PROMISE12_CASES:
        img = rng.random((36, 20, 14), dtype=np.float32) * 500
        lab = np.zeros((36, 20, 14), np.uint8)
        lab[list(listed.get(case, [5])), 6:12, 4:9] = 1  # foreground exactly on the listed slices
        write_npy_dict(tmp_path / "all_data_prepro" / f"{case}.npy", img, lab)
    dl = named_datalist("promise12_3scans", tmp_path)
    ds = VolumeSliceDataset(dl["training"], volume_transforms("mr", num_classes=1), spatial_size=16, progress=False)
    assert len(ds) == 58
    assert [(Path(r["source"]).stem, r["slice"]) for r in ds.data] == [
        (c, z) for c in ("Case05", "Case14", "Case29") for z in listed[c]
    ]
    assert all(ds[i]["label"].sum() > 0 for i in range(len(ds)))  # every listed slice has the prostate
    assert ds[0]["image"].shape == (1, 16, 16) and float(ds.images.min()) >= 0.0 and float(ds.images.max()) <= 1.0
