"""The CT phantom: determinism, BTCV files and dataset.json, anatomy (labels, HU, sides) and inter-case variation."""

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from samora_monai.apps.phantom import SYNAPSE_TEST_IDS, make_demo_data, make_phantom_case

SHAPE, SPACING = (64, 64, 24), (0.8, 0.8, 2.5)
SYNAPSE_BTCV_IDS = (1, 2, 3, 4, 6, 7, 8, 11)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom")
    result = make_demo_data(str(out), num_train=2, num_test=2, num_unlabeled=2, shape=SHAPE, spacing=SPACING, seed=3)
    return out, result


def _centroid_mm(label: np.ndarray, organ: int, affine: np.ndarray) -> np.ndarray:
    return affine[:3, :3] @ np.argwhere(label == organ).mean(0) + affine[:3, 3]


def test_same_seed_same_arrays_other_seed_differs():
    a_img, a_lab, a_aff, _ = make_phantom_case(5, SHAPE, SPACING, seed=0)
    b_img, b_lab, b_aff, _ = make_phantom_case(5, SHAPE, SPACING, seed=0)
    assert a_img.tobytes() == b_img.tobytes() and a_lab.tobytes() == b_lab.tobytes()
    np.testing.assert_array_equal(a_aff, b_aff)
    c_img, c_lab, _, _ = make_phantom_case(5, SHAPE, SPACING, seed=1)
    assert not np.array_equal(a_lab, c_lab) and np.abs(a_img.astype(int) - c_img).mean() > 5


def test_files_dtypes_spacing_and_affine(demo):
    out, result = demo
    assert len(result["images"]) == 6 and len(result["labels"]) == 4
    for path in result["images"] + result["labels"]:
        img = nib.load(path)
        assert img.shape == SHAPE
        np.testing.assert_allclose(img.header.get_zooms(), SPACING, rtol=1e-6)
        np.testing.assert_allclose(np.abs(np.diag(img.affine))[:3], SPACING, rtol=1e-6)
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        expected = np.uint8 if os.path.basename(path).startswith("label") else np.int16
        assert img.get_data_dtype() == expected
    hu = np.asarray(nib.load(result["images"][0]).dataobj)
    assert hu.dtype == np.int16 and hu.min() <= -900 and hu.max() >= 300  # air outside, bone inside
    leftovers = [f for sub in ("imagesTr", "labelsTr", "imagesTs") for f in os.listdir(out / sub) if f.startswith(".")]
    assert leftovers == [] and not any(f.startswith(".") for f in os.listdir(out))


def test_dataset_json_layout_and_no_leakage(demo):
    out, result = demo
    with open(result["dataset_json"]) as f:
        data = json.load(f)
    assert data["labels"]["6"] == "liver" and data["labels"]["11"] == "pancreas" and data["modality"] == {"0": "CT"}
    train = [d["image"] for d in data["training"]]
    test = [d["image"] for d in data["testing"]]
    assert train == ["./imagesTr/img0005.nii.gz", "./imagesTr/img0006.nii.gz"]
    assert test == ["./imagesTr/img0001.nii.gz", "./imagesTr/img0002.nii.gz"]
    assert data["validation"] == data["testing"] and data["numTraining"] == 2 and data["numTest"] == 2
    for item in data["training"] + data["testing"]:
        assert item["label"] == item["image"].replace("imagesTr/img", "labelsTr/label")
        assert (out / item["image"]).is_file() and (out / item["label"]).is_file()
    unlabeled = [d["image"] for d in data["unlabeled"]]
    assert unlabeled[:2] == ["./imagesTs/img0061.nii.gz", "./imagesTs/img0062.nii.gz"]
    assert set(train) <= set(unlabeled) and not set(test) & set(unlabeled)
    assert all((out / p).is_file() for p in unlabeled)
    assert not os.path.exists(out / "labelsTr" / "label0061.nii.gz")
    assert all(int(p[-11:-7]) not in SYNAPSE_TEST_IDS for p in unlabeled)


def test_anatomy_labels_hu_and_sides(demo):
    _, result = demo
    for image_path, label_path in zip(result["images"], result["labels"], strict=False):
        assert os.path.basename(image_path)[3:] == os.path.basename(label_path)[5:]
        hu = np.asarray(nib.load(image_path).dataobj).astype(float)
        lab_img = nib.load(label_path)
        lab, affine = np.asarray(lab_img.dataobj), lab_img.affine
        present = set(np.unique(lab).tolist())
        assert set(SYNAPSE_BTCV_IDS) <= present, f"{label_path}: missing {set(SYNAPSE_BTCV_IDS) - present}"
        assert present <= set(range(14))
        counts = {k: int((lab == k).sum()) for k in SYNAPSE_BTCV_IDS}
        assert max(counts, key=counts.get) == 6 and counts[4] < counts[1] < counts[6]  # liver largest, gb small
        assert 40 <= hu[lab == 6].mean() <= 80
        assert 25 <= hu[lab == 1].mean() <= 75
        assert hu[lab == 8].mean() > 120 and hu[lab == 4].mean() < 40
        assert (hu[lab == 7] < -500).sum() >= 10  # gas in the stomach
        kidney = np.isin(lab, (2, 3))
        cortex = kidney & ~ndimage.binary_erosion(kidney)
        medulla = ndimage.binary_erosion(kidney, iterations=2)
        assert hu[cortex].mean() > hu[medulla].mean() + 30
        assert np.all(hu[lab == 0].min() >= -1024)
        # RAS world: +x is the patient's right, so the patient's left organs have the smaller x
        assert _centroid_mm(lab, 1, affine)[0] < 0 < _centroid_mm(lab, 6, affine)[0]
        assert _centroid_mm(lab, 3, affine)[0] < _centroid_mm(lab, 2, affine)[0]
        # organs do not fill every slice; the aorta runs through nearly all of them
        slices_with = {k: np.any(lab == k, axis=(0, 1)) for k in (4, 6, 8)}
        assert slices_with[8].mean() > 0.9 and slices_with[4].mean() < 0.6 and not slices_with[6].all()


def test_cases_vary(demo):
    _, result = demo
    centroids = []
    for path in result["labels"]:
        img = nib.load(path)
        lab = np.asarray(img.dataobj)
        centroids.append(np.concatenate([_centroid_mm(lab, k, img.affine) for k in SYNAPSE_BTCV_IDS]))
    centroids = np.stack(centroids)
    for i in range(len(centroids)):
        for j in range(i):
            assert np.abs(centroids[i] - centroids[j]).max() > 1.0  # mm


@pytest.mark.parametrize(
    "kwargs, message",
    [({"shape": (64, 64)}, "shape"), ({"spacing": (1, 0, 1)}, "spacing"), ({"num_test": 13}, "num_test"),
     ({"num_train": 0, "num_test": 0}, "labelled")],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_demo_data(str(tmp_path / "x"), **kwargs)


@pytest.mark.slow
def test_cli_writes_demo_data(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "samora_monai", "make_demo_data", "--out", str(out), "--num_train", "1",
           "--num_test", "1", "--num_unlabeled", "1", "--shape", "40,40,12"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "phantom cases" in proc.stderr  # tqdm progress
    assert str(out / "dataset.json") in proc.stdout
    data = json.loads((out / "dataset.json").read_text())
    assert [d["image"] for d in data["testing"]] == ["./imagesTr/img0001.nii.gz"]
    assert nib.load(out / "imagesTs" / "img0061.nii.gz").shape == (40, 40, 12)
