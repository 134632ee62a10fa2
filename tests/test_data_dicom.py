"""DICOM input: a generated 3-slice CT series (pydicom; non-square, rotated in-plane, anisotropic pixels) and a single
DICOM file load with the series' geometry; a folder mixing two series is refused naming both SeriesInstanceUIDs; the
bundle's inference.yaml (real CLI) writes a label NIfTI with the series' shape and affine."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from samora_monai.apps.bundle_run import failure_reason
from samora_monai.data import LoadVolumed, is_dicom_input

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import FileDataset, FileMetaDataset  # noqa: E402
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid  # noqa: E402

ROWS, COLS, SLICES = 10, 12, 3
PIXEL_SPACING = (0.7, 0.9)  # (between rows, between columns) in mm
SLICE_STEP, ORIGIN = 2.5, (-30.0, 20.0, 50.0)
# rotated 30 degrees in-plane; DICOM decimal strings hold at most 16 characters
ROW_COS = (0.866025, 0.5, 0.0)  # direction of increasing column index (LPS)
COL_COS = (-0.5, 0.866025, 0.0)  # direction of increasing row index (LPS)
BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "samora_synapse"


def write_series(folder: Path, seed: int = 0, uid: str | None = None, geometry: bool = True) -> tuple[np.ndarray, str]:
    """A CT series of ``SLICES`` files; returns the stored pixels [slice, row, column] and the SeriesInstanceUID."""
    folder.mkdir(parents=True, exist_ok=True)
    uid = uid or generate_uid()
    pixels = np.random.default_rng(seed).integers(0, 1400, (SLICES, ROWS, COLS)).astype(np.int16)
    study = generate_uid()
    for k in range(SLICES):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"{seed}_{k}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, uid, "CT"
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = ROWS, COLS, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelSpacing, ds.SliceThickness = list(PIXEL_SPACING), SLICE_STEP
        if geometry:
            ds.ImageOrientationPatient = [*ROW_COS, *COL_COS]
            ds.ImagePositionPatient = [ORIGIN[0], ORIGIN[1], ORIGIN[2] + k * SLICE_STEP]
        ds.InstanceNumber = k + 1
        ds.PixelData = pixels[k].tobytes()
        ds.save_as(str(folder / f"{seed}_{k}.dcm"), write_like_original=False)
    return pixels, uid


def expected_affine() -> np.ndarray:
    """Voxel (column, row, slice) -> RAS mm, from the DICOM tags (LPS) by the DICOM formula."""
    lps = np.eye(4)
    lps[:3, 0] = np.asarray(ROW_COS) * PIXEL_SPACING[1]
    lps[:3, 1] = np.asarray(COL_COS) * PIXEL_SPACING[0]
    lps[:3, 2] = (0, 0, SLICE_STEP)
    lps[:3, 3] = ORIGIN
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def test_series_folder_loads_with_its_geometry(tmp_path):
    pixels, _ = write_series(tmp_path / "series")
    (tmp_path / "series" / "notes.txt").write_text("not DICOM")  # ignored
    assert is_dicom_input(tmp_path / "series") and not is_dicom_input(tmp_path)
    image = LoadVolumed("image")({"image": str(tmp_path / "series")})["image"]
    assert tuple(image.shape) == (1, COLS, ROWS, SLICES)
    np.testing.assert_allclose(image.affine.numpy(), expected_affine(), atol=1e-4)
    # voxel [c, r, k] is the stored pixel [k, r, c], rescaled to HU
    np.testing.assert_array_equal(image[0].numpy(), pixels.transpose(2, 1, 0).astype(np.float32) - 1024)


def test_single_dicom_file_is_a_one_slice_volume(tmp_path):
    pixels, _ = write_series(tmp_path / "series")
    image = LoadVolumed("image")({"image": str(tmp_path / "series" / "0_1.dcm")})["image"]
    assert tuple(image.shape) == (1, COLS, ROWS, 1)
    np.testing.assert_array_equal(image[0, ..., 0].numpy(), pixels[1].T.astype(np.float32) - 1024)
    np.testing.assert_allclose(image.affine.numpy()[:3, :2], expected_affine()[:3, :2], atol=1e-4)


def test_folder_mixing_two_series_is_refused_naming_both(tmp_path):
    _, uid_a = write_series(tmp_path / "mixed", seed=0)
    _, uid_b = write_series(tmp_path / "mixed", seed=1)
    with pytest.raises(RuntimeError) as info:
        LoadVolumed("image")({"image": str(tmp_path / "mixed")})
    reason = failure_reason(info.value)
    assert f"{tmp_path / 'mixed'}: the folder mixes 2 DICOM series" in reason
    assert f"{uid_a} (3 files)" in reason and f"{uid_b} (3 files)" in reason


def test_series_without_geometry_is_refused(tmp_path):
    write_series(tmp_path / "nogeo", geometry=False)
    with pytest.raises(RuntimeError) as info:
        LoadVolumed("image")({"image": str(tmp_path / "nogeo")})
    assert "without ImageOrientationPatient and ImagePositionPatient" in failure_reason(info.value)


TINY = {"variant": "tiny", "img_size": 32, "random_init": True, "num_workers": 0, "slice_batch_size": 4}


@pytest.mark.slow
def test_dicom_series_through_inference_bundle(tmp_path):
    write_series(tmp_path / "series_a")
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.yaml"))
    parser.update({**TINY, "bundle_root": str(tmp_path)})
    torch.save(parser.get_parsed_content("network_def").state_dict(), tmp_path / "model.pt")
    out = tmp_path / "pred"
    overrides = {**TINY, "bundle_root": str(tmp_path), "checkpoint": str(tmp_path / "model.pt"),
                 "output_dir": str(out), "input_images": [str(tmp_path / "series_a")]}  # fmt: skip
    args = [a for k, v in overrides.items() for a in (f"--{k}", v if isinstance(v, str) else repr(v))]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(BUNDLE / "configs" / "inference.yaml")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*cmd, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["series_a_seg.nii.gz"]
    pred = nib.load(out / "series_a_seg.nii.gz")
    assert pred.shape == (COLS, ROWS, SLICES)
    np.testing.assert_allclose(pred.affine, expected_affine(), atol=1e-4)
    assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= set(range(9))
    shutil.rmtree(out)
