"""CSV/JSON reports from NIfTI pairs, the datalist entry point, and bad input."""

from __future__ import annotations

import csv
import json
import math

import nibabel as nib
import numpy as np
import pytest

from samora_monai.inferers import prediction_path
from samora_monai.metrics import SegmentationReport, case_metrics, evaluate_folder, evaluate_pairs

CLASSES = ["liver", "kidney"]
AFFINE = np.diag([1.0, 1.0, 5.0, 1.0])


def save(path, arr, affine=AFFINE):
    nib.save(nib.Nifti1Image(np.asarray(arr, dtype=np.uint8), affine), str(path))
    return path


def make_case(shift: int) -> tuple[np.ndarray, np.ndarray]:
    gt = np.zeros((12, 10, 8), np.uint8)
    gt[2:8, 2:8, 2:3] = 1
    gt[9:11, 1:4, 4:7] = 2
    pred = np.zeros_like(gt)
    pred[2:8, 2:8, 2 + shift : 3 + shift] = 1  # class 1 shifted by `shift` slices (5 mm each)
    return pred, gt  # class 2 missed


@pytest.fixture
def pairs(tmp_path):
    out = []
    for i, shift in enumerate((0, 1)):
        pred, gt = make_case(shift)
        out.append((save(tmp_path / f"pred{i}.nii.gz", pred), save(tmp_path / f"label{i}.nii.gz", gt)))
    return out


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_evaluate_pairs_writes_csv_and_json(pairs, tmp_path):
    out_dir = tmp_path / "eval"
    summaries = evaluate_pairs(pairs, CLASSES, out_dir, provenance={"split": "test"})
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "metrics_monai.csv",
        "metrics_monai.json",
        "metrics_transunet.csv",
        "metrics_transunet.json",
    ]
    rows = read_csv(out_dir / "metrics_transunet.csv")
    assert [(r["case"], r["class_name"]) for r in rows] == [
        ("label0", "liver"),
        ("label0", "kidney"),
        ("label1", "liver"),
        ("label1", "kidney"),
    ]
    assert [(float(r["dice"]), float(r["hd95"])) for r in rows] == [(1.0, 0.0), (0.0, 0.0), (0.0, 1.0), (0.0, 0.0)]
    assert [(float(r["jaccard"]), float(r["asd"])) for r in rows] == [(1.0, 0.0), (0.0, 0.0), (0.0, 1.0), (0.0, 0.0)]
    assert {(r["mode"], r["units"]) for r in rows} == {("transunet", "voxel")}
    monai_rows = read_csv(out_dir / "metrics_monai.csv")
    assert float(monai_rows[2]["hd95"]) == pytest.approx(5.0)  # one 5 mm slice
    assert float(monai_rows[2]["asd"]) == pytest.approx(5.0) and float(monai_rows[2]["jaccard"]) == 0.0
    assert {(r["mode"], r["units"]) for r in monai_rows} == {("monai", "mm")}
    diagonal = math.sqrt(12**2 + 10**2 + 40**2)
    assert float(monai_rows[1]["hd95"]) == pytest.approx(diagonal)  # missed kidney: worst case

    summary = json.loads((out_dir / "metrics_transunet.json").read_text())
    assert summary == summaries["transunet"]
    assert summary["mode"] == "transunet" and summary["hd95_units"] == "voxel"
    assert summary["num_cases"] == 2 and summary["cases"] == ["label0", "label1"]
    assert summary["class_names"] == CLASSES
    assert summary["per_class"]["liver"] == {
        "dice": 0.5, "hd95": 0.5, "jaccard": 0.5, "asd": 0.5, "n_dice": 2, "n_hd95": 2, "n_jaccard": 2, "n_asd": 2
    }
    assert summary["asd_units"] == "voxel" and summary["mean_jaccard"] == pytest.approx(0.25)
    assert summary["per_class"]["kidney"]["dice"] == 0.0
    assert summary["mean_dice"] == pytest.approx(0.25) and summary["mean_hd95"] == pytest.approx(0.25)
    assert summary["provenance"] == {"split": "test"}
    monai = json.loads((out_dir / "metrics_monai.json").read_text())
    assert monai["hd95_units"] == "mm"
    assert monai["per_class"]["liver"]["hd95"] == pytest.approx(2.5)
    assert monai["mean_hd95"] == pytest.approx((2.5 + diagonal) / 2)
    assert monai["asd_units"] == "mm" and monai["mean_asd"] == pytest.approx((2.5 + diagonal) / 2)
    for s in (summary, monai):
        assert all(0.0 <= v["dice"] <= 1.0 for v in s["per_class"].values())


def test_nan_values_are_null_in_json_and_excluded(tmp_path):
    report = SegmentationReport(CLASSES, modes="monai")
    gt = np.zeros((6, 6, 6), np.int64)
    gt[1:4, 1:4, 1:4] = 1  # kidney absent from the ground truth: NaN, excluded
    report.add("a", gt, gt, spacing=(1.0, 1.0, 1.0))
    paths = report.write(tmp_path)
    summary = json.loads(paths["monai"]["json"].read_text())
    assert summary["per_class"]["kidney"] == {
        "dice": None, "hd95": None, "jaccard": None, "asd": None, "n_dice": 0, "n_hd95": 0, "n_jaccard": 0, "n_asd": 0
    }
    assert summary["mean_dice"] == 1.0 and summary["mean_hd95"] == 0.0
    assert read_csv(paths["monai"]["csv"])[1]["dice"] == "nan"
    with pytest.raises(ValueError, match="already added"):
        report.add("a", gt, gt, spacing=(1.0, 1.0, 1.0))


def test_report_matches_case_metrics(tmp_path):
    rng = np.random.default_rng(0)
    report = SegmentationReport(CLASSES, modes="transunet")
    expected = []
    for i in range(3):
        gt = rng.integers(0, 3, (8, 8, 6))
        pred = rng.integers(0, 3, (8, 8, 6))
        report.add(f"c{i}", pred, gt)
        expected.append(case_metrics(pred, gt, 2, "transunet"))
    summary = report.summary("transunet")
    means = np.mean(expected, axis=0)
    assert summary["per_class"]["kidney"]["dice"] == pytest.approx(means[1, 0])
    assert summary["mean_hd95"] == pytest.approx(means[:, 1].mean())


def test_evaluate_folder_uses_prediction_naming(tmp_path):
    pred_dir = tmp_path / "preds"
    pred_dir.mkdir()
    data = []
    for i, shift in enumerate((0, 1)):
        pred, gt = make_case(shift)
        image = save(tmp_path / f"img{i:04d}.nii.gz", gt)
        save(prediction_path(image, pred_dir), pred)
        data.append({"image": str(image), "label": str(save(tmp_path / f"label{i:04d}.nii.gz", gt))})
    summaries = evaluate_folder(pred_dir, data, tmp_path / "eval", CLASSES, modes="transunet")
    assert set(summaries) == {"transunet"}
    assert summaries["transunet"]["cases"] == ["img0000", "img0001"]
    assert summaries["transunet"]["per_class"]["liver"]["dice"] == 0.5


def bad_inputs(tmp_path, kind):
    pred, gt = make_case(0)
    label = save(tmp_path / "label.nii.gz", gt)
    pred_path = tmp_path / "pred.nii.gz"
    if kind == "missing":
        return pred_path, label, FileNotFoundError, "pred.nii.gz"
    if kind == "corrupt":
        pred_path.write_bytes(b"\x1f\x8b this is not a NIfTI")
        return pred_path, label, ValueError, "cannot read NIfTI .*pred.nii.gz"
    if kind == "shape":
        save(pred_path, pred[:, :, :5])
        return pred_path, label, ValueError, "pred.nii.gz has shape"
    if kind == "label_value":
        pred[0, 0, 0] = 7
        save(pred_path, pred)
        return pred_path, label, ValueError, "pred.nii.gz has label values .* expected 0..2"
    save(pred_path, pred[:, :, 0])  # 2D
    return pred_path, label, ValueError, "pred.nii.gz must be a 3D label volume"


@pytest.mark.parametrize("kind", ["missing", "corrupt", "shape", "label_value", "2d"])
def test_bad_input_names_file_and_writes_nothing(tmp_path, kind):
    pred_path, label, error, match = bad_inputs(tmp_path, kind)
    good = tuple(save(tmp_path / f"{n}_ok.nii.gz", a) for n, a in zip(("pred", "label"), make_case(1), strict=True))
    out_dir = tmp_path / "eval"
    with pytest.raises(error, match=match):
        evaluate_pairs([good, (pred_path, label)], CLASSES, out_dir)
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_bad_report_arguments():
    with pytest.raises(ValueError, match="unknown metric mode"):
        SegmentationReport(CLASSES, modes=("transunet", "dice"))
    with pytest.raises(ValueError, match="at least one"):
        SegmentationReport([])
    with pytest.raises(ValueError, match="no \\(prediction, label\\) pairs"):
        evaluate_pairs([], CLASSES, "unused")
