"""Stage-1 unlabeled slice preparation, its leakage guard, the slice reader and the CLI command."""

from __future__ import annotations

import json

import fire
import numpy as np
import pytest

from samora_monai.cli import COMMANDS, _resolve
from samora_monai.data import UnlabeledSliceDataset, case_ids, check_leakage, load_split, prepare_unlabeled


@pytest.fixture
def write_ct(volume, write_nifti):
    """``write_ct(path)``: a CT NIfTI whose slices 0-2 are air only."""

    def write(path):
        img = volume()
        img[..., :3] = -1000.0
        return write_nifti(path, img)

    return write


def test_case_ids_match_across_formats(tmp_path):
    assert "synapse#1" in case_ids("/d/img0001.nii.gz") and "synapse#1" in case_ids("/d/test_vol_h5/case0001.npy.h5")
    assert "synapse#16" not in case_ids("/d/Case16.nii.gz") and "case16" in case_ids("/d/Case16.nii.gz")
    assert "utbujiwzmkp64e3n73yc" in case_ids("/LA/UTBUJIWZMKP64E3N73YC/mri_norm2.h5")
    assert not any(i.startswith("synapse#") for i in case_ids("/amos/amos_0001.nii.gz"))


def test_leakage_guard_names_test_cases():
    with pytest.raises(ValueError, match=r"img0008.nii.gz \(case0008 of split synapse_test\)"):
        check_leakage(["/x/img0061.nii.gz", "/x/img0008.nii.gz"], ["synapse_test"])
    la_test = load_split("la_test")[0]
    with pytest.raises(ValueError, match=f"{la_test} of split la_test"):
        check_leakage([f"/LA/{la_test}/mri_norm2.h5"])
    with pytest.raises(ValueError, match="excluded case 0061"):
        check_leakage(["/x/img0061.nii.gz"], ["0061"])
    check_leakage(["/x/img0061.nii.gz", "/x/img0005.nii.gz", "/amos/amos_0001.nii.gz"])  # no test case: passes
    check_leakage(["/x/img0001.nii.gz"], [])  # guard disabled


def test_prepare_refuses_test_case_and_writes_nothing(tmp_path, write_ct):
    write_ct(tmp_path / "in" / "img0061.nii.gz")
    write_ct(tmp_path / "in" / "img0002.nii.gz")
    with pytest.raises(ValueError, match=r"img0002.nii.gz \(case0002 of split synapse_test\)"):
        prepare_unlabeled(str(tmp_path / "out"), glob=str(tmp_path / "in/*.nii.gz"), progress=False)
    assert not (tmp_path / "out").exists()


def test_prepare_nifti_slices_and_read_back(tmp_path, write_ct):
    for name in ("img0061.nii.gz", "img0062.nii.gz"):
        write_ct(tmp_path / "in" / name)
    path = prepare_unlabeled(
        str(tmp_path / "out"),
        glob=str(tmp_path / "in/*.nii.gz"),
        spatial_size=16,
        min_body_fraction=0.1,
        progress=False,
    )
    dl = json.loads(open(path).read())
    assert [d["num_slices"] for d in dl["training"]] == [5, 5]  # the 3 air slices dropped
    assert dl["training"][0]["image"] == "slices/img0061.npy" and dl["settings"]["modality"] == "ct"
    arr = np.load(tmp_path / "out/slices/img0061.npy")
    assert arr.shape == (5, 16, 16) and arr.dtype == np.float16
    assert 0.0 <= arr.min() and arr.max() <= 1.0 and arr.max() > 0.5
    assert not list((tmp_path / "out/slices").glob(".*"))  # no temporary files left

    ds = UnlabeledSliceDataset(path)
    assert len(ds) == 10 and ds[0]["image"].shape == (1, 16, 16) and str(ds[0]["image"].dtype) == "torch.float32"
    np.testing.assert_allclose(ds[6]["image"][0].numpy(), np.load(tmp_path / "out/slices/img0062.npy")[1])

    every = prepare_unlabeled(
        str(tmp_path / "all"), glob=str(tmp_path / "in/*.nii.gz"), spatial_size=16, progress=False
    )
    assert [d["num_slices"] for d in json.loads(open(every).read())["training"]] == [8, 8]


def test_prepare_la_h5_from_datalist_mr(tmp_path, labels, volume, write_la_h5):
    ids = load_split("la_train")[:2]
    items = [{"image": str(write_la_h5(tmp_path / c / "mri_norm2.h5", volume(), labels()))} for c in ids]
    (tmp_path / "dl.json").write_text(json.dumps({"unlabeled": items}))
    path = prepare_unlabeled(
        str(tmp_path / "out"), datalist=str(tmp_path / "dl.json"), data_list_key="unlabeled", modality="mr",
        spatial_size=16, progress=False,
    )  # fmt: skip
    names = sorted(p.name for p in (tmp_path / "out/slices").iterdir())
    assert names == sorted(f"{c}_mri_norm2.npy" for c in ids)
    assert len(UnlabeledSliceDataset(path)) == 16


def test_failed_volume_leaves_no_partial_output(tmp_path, write_ct):
    write_ct(tmp_path / "in" / "img0061.nii.gz")
    (tmp_path / "in/img0062.nii.gz").write_bytes(b"\x1f\x8b broken")
    with pytest.raises(Exception) as info:
        prepare_unlabeled(str(tmp_path / "out"), glob=str(tmp_path / "in/*.nii.gz"), progress=False)
    assert "img0062.nii.gz" in repr(info.value) + repr(info.value.__cause__) + repr(info.value.__cause__.__cause__)
    assert list((tmp_path / "out/slices").iterdir()) == [] and not (tmp_path / "out/unlabeled_datalist.json").exists()


def test_cli_command_parses_arguments(tmp_path, write_ct):
    write_ct(tmp_path / "in" / "img0061.nii.gz")
    write_ct(tmp_path / "in" / "img0003.nii.gz")
    command = {"prepare_unlabeled": _resolve(COMMANDS["prepare_unlabeled"])}
    args = ["prepare_unlabeled", "--output_dir", str(tmp_path / "out"), "--glob", str(tmp_path / "in/*.nii.gz")]
    with pytest.raises(ValueError, match="img0003.nii.gz"):
        fire.Fire(command, command=[*args, "--exclude", "synapse_test,la_test", "--progress", "False"])
    fire.Fire(command, command=[*args, "--exclude", "la_test", "--spatial_size", "16", "--progress", "False"])
    assert np.load(tmp_path / "out/slices/img0061.npy").shape == (8, 16, 16)
