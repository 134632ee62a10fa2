"""The leakage guard (data/leakage.py): published test splits, a datalist's own testing/validation items, excludes
given as case id, file name or path, a warning for an exclude that matches nothing; stage-1 preparation refuses its
datalist's test cases and writes nothing. Also the labelled evaluation items (data/labelled.py)."""

from __future__ import annotations

import json
import logging

import nibabel as nib
import numpy as np
import pytest

from samora_monai.data import check_unlabeled_datalist, exclude_test_cases, labelled_items, prepare_unlabeled
from samora_monai.data.leakage import check_leakage

# case 35 is one of the 12 Synapse test cases, case 5 is a training case
VOLUMES = ["/data/x/img0005.nii.gz", "/data/x/img0035.nii.gz", "/data/x/img0040.nii.gz"]


@pytest.mark.parametrize("exclude", ["img0035.nii.gz", "/data/x/img0035.nii.gz", "0035", "35", "case0035",
                                     "synapse_test", ["img0035.nii.gz"], "la_test,0035"])  # fmt: skip
def test_exclude_forms_match_the_case(exclude):
    with pytest.raises(ValueError, match=r"1 volume\(s\).*/data/x/img0035\.nii\.gz") as info:
        check_leakage(VOLUMES, exclude)
    assert "img0005" not in str(info.value) and "img0040" not in str(info.value)


def test_training_cases_pass_and_unmatched_exclude_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="samora_monai.data.leakage"):
        check_leakage(VOLUMES[:1], ["synapse_test", "la_test", "img0099.nii.gz"])
    lines = [r.getMessage() for r in caplog.records if r.name == "samora_monai.data.leakage"]
    assert lines == ["leakage guard: the exclude 'img0099.nii.gz' matches none of the 1 volumes"]


def test_datalist_testing_and_validation_items_are_excluded():
    datalist = {"training": [{"image": VOLUMES[0]}], "testing": [{"image": "/other/img0040.nii.gz"}],
                "validation": [{"image": "/data/x/img0005.nii.gz", "label": "/data/x/label0005.nii.gz"}]}  # fmt: skip
    items = [{"image": v} for v in VOLUMES]
    with pytest.raises(ValueError, match=r"3 volume\(s\)") as info:
        exclude_test_cases(items, datalist)
    assert "img0040.nii.gz of the datalist's testing/validation" in str(info.value)
    assert exclude_test_cases(items[:1], {"testing": datalist["testing"]}) == items[:1]
    assert exclude_test_cases(items, datalist, exclude=[], sections=()) == items  # the guard can be turned off


def test_one_held_out_file_in_testing_and_validation_stays_a_case():
    """The demo's datalist lists each held-out file under testing and validation: that file is one case (its stem
    names it), not a stem shared by several files, so the training cases of the same folder pass."""
    held_out = [{"image": "/d/imagesTr/img0001.nii.gz"}]
    datalist = {"testing": held_out, "validation": held_out}
    train = ["/d/imagesTr/img0005.nii.gz", "/d/imagesTr/img0006.nii.gz"]
    check_leakage(train, exclude=[], datalist=datalist)
    check_leakage(train, exclude=["synapse_test", "img0001"], datalist=datalist)  # the demo's exclude: same case
    with pytest.raises(ValueError, match=r"1 volume\(s\).*img0001.nii.gz \(/d/imagesTr/img0001.nii.gz of the data"):
        check_leakage([*train, "/d/imagesTr/img0001.nii.gz"], exclude=[], datalist=datalist)


def test_la_generic_file_names_match_by_folder():
    volumes = [f"/la/{case}/mri_norm2.h5" for case in ("UPT6DX9IQY9JAZ7HJKA7", "TRAINCASE0000000001")]
    with pytest.raises(ValueError, match=r"1 volume\(s\).*UPT6DX9IQY9JAZ7HJKA7.*la_test") as info:
        check_leakage(volumes, "la_test")
    assert "TRAINCASE" not in str(info.value)
    check_leakage(volumes[1:], ["/la/OTHER/mri_norm2.h5", "/la/UPT6DX9IQY9JAZ7HJKA7/mri_norm2.h5"])  # by folder
    check_leakage(volumes[1:], ["/la/UPT6DX9IQY9JAZ7HJKA7/mri_norm2.h5"])
    with pytest.raises(ValueError, match="UPT6DX9IQY9JAZ7HJKA7"):
        check_leakage(volumes, ["/la/UPT6DX9IQY9JAZ7HJKA7/mri_norm2.h5"])


def test_prepare_unlabeled_refuses_its_datalist_test_case(tmp_path):
    for c in (40, 41):
        image = np.random.default_rng(c).normal(0, 50, (16, 16, 3)).astype(np.float32)
        nib.save(nib.Nifti1Image(image, np.eye(4)), tmp_path / f"img{c:04d}.nii.gz")
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": [{"image": "img0040.nii.gz"}, {"image": "img0041.nii.gz"}],
                                    "testing": [{"image": "img0041.nii.gz"}]}))  # fmt: skip
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"img0041\.nii\.gz of the datalist's testing"):
        prepare_unlabeled(str(out), datalist=str(datalist), exclude=[], spatial_size=32, progress=False)
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]
    holdout = tmp_path / "stage2.json"
    holdout.write_text(json.dumps({"validation": [{"image": "/elsewhere/img0040.nii.gz", "label": "x.nii.gz"}]}))
    glob = str(tmp_path / "img004*.nii.gz")
    with pytest.raises(ValueError, match=r"img0040\.nii\.gz of the datalist's .*validation"):
        prepare_unlabeled(str(out), glob=glob, exclude=[], holdout_datalist=str(holdout), progress=False)
    result = prepare_unlabeled(str(out), glob=glob, exclude="", spatial_size=32, progress=False)
    assert len(json.loads(open(result).read())["training"]) == 2
    # the stage-1 workflows check a prepared corpus against the held-out cases of the labelled datalist
    assert check_unlabeled_datalist(result, exclude=[]) == result
    with pytest.raises(ValueError, match=r"unlabeled_datalist\.json: leakage guard: 1 volume.*img0041\.nii\.gz"):
        check_unlabeled_datalist(result, exclude=["img0041.nii.gz"])
    with pytest.raises(ValueError, match=r"img0040\.nii\.gz of the datalist's testing"):
        check_unlabeled_datalist(result, exclude=[], datalist={"testing": [{"image": "/x/img0040.nii.gz"}]})


# ------------------------------------------------------------------------------------- labelled evaluation items


def test_labelled_items_skip_unlabeled_testing(caplog):
    datalist = {"testing": [{"image": "t1.nii.gz"}, {"image": "t2.nii.gz"}],
                "validation": [{"image": "v1.nii.gz", "label": "l1.nii.gz", "slices": [1]}]}  # fmt: skip
    with caplog.at_level(logging.INFO, logger="samora_monai.data.labelled"):
        items = labelled_items(datalist, ["testing", "validation"])
    assert items == [{"image": "v1.nii.gz", "label": "l1.nii.gz"}]
    lines = [r.getMessage() for r in caplog.records if r.name == "samora_monai.data.labelled"]
    assert lines[0] == "datalist 'testing': skipped 2 of 2 items without 'image' and 'label'"
    mixed = {"testing": [{"image": "t1.nii.gz"}, {"image": "t2.nii.gz", "label": "l2.nii.gz"}]}
    assert labelled_items(mixed, "testing") == [{"image": "t2.nii.gz", "label": "l2.nii.gz"}]


def test_labelled_items_none_names_searched_sections():
    datalist = {"training": [{"image": "a", "label": "b"}], "testing": [{"image": "t1.nii.gz"}]}
    with pytest.raises(ValueError, match=r"'testing': 0 labelled of 1; 'validation': 0 labelled of 0") as info:
        labelled_items(datalist, ["testing", "validation"])
    assert "sections present: ['testing', 'training']" in str(info.value)
