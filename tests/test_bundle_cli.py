"""The bundles through the real MONAI CLI (subprocesses): training for every supported file format, resume,
evaluation (CSV + JSON, both metric modes), inference (NIfTI in the input geometry), verify_net_in_out,
torchrun DDP on CPU (gloo), a corrupt input, and a config-only dataset swap. Tiny SAM, 64 px, 1 epoch."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from samora_monai.utils import bundle_dir

pytestmark = pytest.mark.slow

def read_report(folder: Path, mode: str, num_classes: int) -> tuple[list[dict], dict]:
    rows = list(csv.DictReader(open(folder / f"metrics_{mode}.csv")))
    summary = json.loads((folder / f"metrics_{mode}.json").read_text())
    assert summary["mode"] == mode and summary["hd95_units"] == {"transunet": "voxel", "monai": "mm"}[mode]
    assert len(rows) == summary["num_cases"] * num_classes and len(summary["per_class"]) == num_classes
    dice = [float(r["dice"]) for r in rows if r["dice"] != "nan"]
    assert dice and all(0.0 <= d <= 1.0 for d in dice)
    return rows, summary


def assert_same_geometry(image: Path, pred: Path, num_classes: int) -> None:
    src, out = nib.load(image), nib.load(pred)
    assert out.shape == src.shape
    np.testing.assert_allclose(out.affine, src.affine, atol=1e-5)
    values = np.unique(np.asarray(out.dataobj))
    assert values.min() >= 0 and values.max() <= num_classes


# ------------------------------------------------------------------------------------------------ samora_synapse


@pytest.fixture(scope="module")
def btcv(tmp_path_factory, bundle_cli, write_json_datalist, write_nifti_cases):
    """Raw BTCV NIfTI (13 ids, mapped to 8 by the default config) trained for 1 epoch through the CLI."""
    work = tmp_path_factory.mktemp("btcv")
    items = write_nifti_cases(work / "data", n=4)  # validation and test cases disjoint from training and each other
    datalist = write_json_datalist(work / "datalist.json", training=items[:2], validation=items[2:3],
                                   testing=items[3:])
    root = work / "bundle"
    result = bundle_cli("synapse", ["run", "training"], ["train.yaml"],
                        {"bundle_root": str(root), "datalist": datalist}, cwd=work)  # fmt: skip
    return work, root, items, datalist, result


def test_synapse_btcv_trains_and_resumes(btcv, assert_model_loads, bundle_cli):
    work, root, items, datalist, result = btcv
    assert "RANDOM SAM weights" in result.stdout + result.stderr
    # resume state in models/checkpoints/, apart from the model files MONAI Label lists (models/*.pt)
    assert sorted(p.name for p in (root / "models").glob("*.pt")) == ["model.pt"]
    assert (root / "models" / "checkpoints" / "latest_checkpoint_epoch=1.pt").is_file()
    assert_model_loads("synapse", root)
    again = bundle_cli("synapse", ["run", "training"], ["train.yaml"],
                       {"bundle_root": str(root), "datalist": datalist, "epochs": 2}, cwd=work)  # fmt: skip
    log = again.stdout + again.stderr
    assert "Restored all variables from" in log and "latest_checkpoint_epoch=1.pt" in log
    assert "Epoch: 2/2, Iter: 1/" in log and "Epoch: 1/2" not in log  # resumed at epoch 2
    state = torch.load(root / "models" / "checkpoints" / "latest_checkpoint_epoch=2.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 2 * state["trainer"]["epoch_length"]


def test_synapse_btcv_evaluate_writes_both_modes(btcv, bundle_cli):
    work, root, items, datalist, _ = btcv
    out = work / "eval"
    bundle_cli("synapse", ["run", "evaluating"], ["train.yaml", "evaluate.yaml"],
               {"bundle_root": str(root), "datalist": datalist, "output_dir": str(out)}, cwd=work)  # fmt: skip
    for mode in ("transunet", "monai"):
        rows, summary = read_report(out, mode, 8)
        assert summary["cases"] == ["img0004"] and rows[0]["class_name"] == "spleen"
    assert_same_geometry(Path(items[3]["image"]), out / "predictions" / "img0004_seg.nii.gz", 8)


def test_synapse_inference_keeps_geometry(btcv, tmp_path, bundle_cli):
    work, root, items, _, _ = btcv
    out = tmp_path / "pred"
    bundle_cli("synapse", ["run"], ["inference.yaml"],
               {"bundle_root": str(root), "input_images": str(work / "data" / "imagesTr"), "output_dir": str(out)},
               cwd=tmp_path)  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == [f"img000{i}_seg.nii.gz" for i in (1, 2, 3, 4)]
    for i, item in enumerate(items):
        assert_same_geometry(Path(item["image"]), out / f"img000{i + 1}_seg.nii.gz", 8)


def test_synapse_corrupt_input_stops_with_file_name(btcv, tmp_path, bundle_cli):
    work, root, items, _, _ = btcv
    bad = tmp_path / "img0099.nii.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00truncated")
    out = tmp_path / "pred"
    result = bundle_cli("synapse", ["run"], ["inference.yaml"],
                        {"bundle_root": str(root), "input_images": repr([items[0]["image"], str(bad)]),
                         "output_dir": str(out)}, cwd=tmp_path, ok=False)  # fmt: skip
    assert result.returncode != 0
    assert f"cannot read image file {bad}" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["img0001_seg.nii.gz"]  # the good case, complete; nothing else


@pytest.mark.parametrize("bundle", ["synapse", "la"])
def test_verify_net_in_out(bundle, tmp_path, bundle_cli):
    configs = bundle_dir(f"samora_{bundle}") / "configs"
    result = bundle_cli(bundle, ["verify_net_in_out", "network_def"], ["inference.yaml"],
                        {"meta_file": str(configs / "metadata.json"), "bundle_root": str(tmp_path)}, cwd=tmp_path)
    assert "data shape of network is verified with no error" in result.stdout + result.stderr


def test_synapse_transunet_npz_h5(tmp_path, assert_model_loads, bundle_cli, write_json_datalist, write_transunet_cases):
    """TransUNet files: npz training slices, h5 validation/test volumes, images already in [0, 1], labels 0..8."""
    train, test = write_transunet_cases(tmp_path / "data")
    datalist = write_json_datalist(tmp_path / "dl.json", training=train, validation=test[1:], testing=test[:1])
    root, out = tmp_path / "bundle", tmp_path / "eval"
    common = {"bundle_root": str(root), "datalist": datalist, "modality": "none", "label_mapping": "null"}
    bundle_cli("synapse", ["run", "training"], ["train.yaml"], common, cwd=tmp_path)
    assert_model_loads("synapse", root)
    bundle_cli("synapse", ["run", "evaluating"], ["train.yaml", "evaluate.yaml"],
               {**common, "output_dir": str(out)}, cwd=tmp_path)  # fmt: skip
    rows, summary = read_report(out, "transunet", 8)
    assert summary["cases"] == ["case0001"]  # case0001.npy.h5: the name without the volume suffix


def test_synapse_multi_gpu_overlay_gloo(
    tmp_path, assert_model_loads, bundle_cli, write_json_datalist, write_nifti_cases
):
    items = write_nifti_cases(tmp_path / "data", n=4)  # 2 validation volumes: one per rank
    datalist = write_json_datalist(tmp_path / "dl.json", training=items[:2], validation=items[2:])
    root = tmp_path / "bundle"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2"]
    result = bundle_cli("synapse", ["run", "training"], ["train.yaml", "multi_gpu_train.yaml"],
                        {"bundle_root": str(root), "datalist": datalist, "batch_size": 2}, cwd=tmp_path,
                        launcher=launcher)  # fmt: skip
    log = result.stdout + result.stderr
    assert "Epoch: 1/1, Iter: 3/3" in log  # 12 slices / 2 ranks / batch 2
    assert log.count("Saved checkpoint at epoch: 1") == 1  # rank 0 only
    assert len(list((root / "eval").glob("events.out.tfevents.*"))) == 2  # one train + one val writer, rank 0
    assert_model_loads("synapse", root)


def test_config_only_dataset_swap(tmp_path, assert_model_loads, bundle_cli, write_json_datalist, write_nifti_cases):
    """Three classes with new names, MR percentile intensity, labels already 0..3: CLI values only."""
    items = write_nifti_cases(tmp_path / "data", ids=(1, 2, 3), n=2, dtype=np.float32)
    datalist = write_json_datalist(tmp_path / "dl.json", training=items[:1], validation=items[1:])
    root = tmp_path / "bundle"
    swap = {"class_names": ["liver", "tumour", "vessel"], "label_mapping": "null", "modality": "mr"}
    bundle_cli("synapse", ["run", "training"], ["train.yaml"],
               {"bundle_root": str(root), "datalist": datalist, **swap}, cwd=tmp_path)  # fmt: skip
    assert_model_loads("synapse", root, class_names=swap["class_names"])
    assert torch.load(root / "models" / "model.pt", weights_only=True)["mask_decoder.mask_tokens.weight"].shape[0] == 4
    out = tmp_path / "pred"
    bundle_cli("synapse", ["run"], ["inference.yaml"],
               {"bundle_root": str(root), "input_images": items[1]["image"], "output_dir": str(out),
                "class_names": swap["class_names"], "modality": "mr"}, cwd=tmp_path)  # fmt: skip
    assert_same_geometry(Path(items[1]["image"]), out / "img0002_seg.nii.gz", 3)


# ---------------------------------------------------------------------------------------------------- samora_la


def test_la_h5_trains_and_evaluates(tmp_path, assert_model_loads, bundle_cli, write_json_datalist, write_la_cases):
    items = write_la_cases(tmp_path / "LA", n=5)
    datalist = write_json_datalist(tmp_path / "dl.json", training=items[:2], validation=items[2:3], testing=items[3:])
    root, out = tmp_path / "bundle", tmp_path / "eval"
    bundle_cli("la", ["run", "training"], ["train.yaml"], {"bundle_root": str(root), "datalist": datalist},
               cwd=tmp_path)  # fmt: skip
    assert_model_loads("la", root)
    bundle_cli("la", ["run", "evaluating"], ["train.yaml", "evaluate.yaml"],
               {"bundle_root": str(root), "datalist": datalist, "output_dir": str(out)}, cwd=tmp_path)  # fmt: skip
    _, summary = read_report(out, "monai", 1)
    assert summary["cases"] == ["mri_norm2", "CASE04LA/mri_norm2"] and summary["class_names"] == ["left_atrium"]


def test_la_msd_heart_named_setting_trains_and_infers(tmp_path, assert_model_loads, bundle_cli, write_msd_heart):
    items = write_msd_heart(tmp_path / "Task02_Heart", n=3)
    root, out = tmp_path / "bundle", tmp_path / "pred"
    setting = {"dataset_dir": str(tmp_path / "Task02_Heart"), "setting": "msd_heart",
               "setting_args": {"num_labeled": 2, "num_validation": 1}}  # fmt: skip
    result = bundle_cli("la", ["run", "training"], ["train.yaml"], {"bundle_root": str(root), **setting}, cwd=tmp_path)
    assert "12 slices of 2 volumes" in result.stdout + result.stderr
    assert_model_loads("la", root)
    bundle_cli("la", ["run"], ["inference.yaml"],
               {"bundle_root": str(root), "input_images": items[2]["image"], "output_dir": str(out)},
               cwd=tmp_path)  # fmt: skip
    assert_same_geometry(Path(items[2]["image"]), out / "la_003_seg.nii.gz", 1)
