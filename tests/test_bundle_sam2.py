"""The SAM 2 overlay through the real MONAI CLI on the tiny SAM 2 configuration at 32 px: the three stage-1 student
workflows (pretrain.yaml + pretrain_<level>.yaml + sam2.yaml, untrained tiny teachers) write SAM 2 expert files,
stage 2 (train.yaml + sam2.yaml) loads them and writes model.pt, and inference (inference.yaml + sam2.yaml) writes
a NIfTI in the input's geometry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from samora_monai.data import prepare_unlabeled
from samora_monai.networks import DEFAULT_LEVELS, read_expert_file
from samora_monai.utils import bundle_dir

pytestmark = pytest.mark.slow

CONFIGS = bundle_dir("samora_synapse") / "configs"
TINY = {"variant": "tiny", "img_size": 32, "random_init": True, "epochs": 1, "batch_size": 4, "num_workers": 0}
TEACHERS = {
    "image": {"arch": "resnet18", "proj_hidden_dim": 32, "proj_dim": 16},
    "patch": {"hidden_size": 32, "mlp_dim": 64, "num_layers": 2, "num_heads": 4, "decoder_hidden_size": 32,
              "decoder_mlp_dim": 64, "decoder_num_layers": 1, "decoder_num_heads": 4},
}
HEADS = {"image": {"head#hidden_dim": 32}, "patch": {"head#hidden_dim": 32}, "pixel": {"head#channels": [8, 8, 8, 8]}}


def bundle_run(workflow: str, configs: list[str], root: Path, **overrides) -> str:
    """``python -m monai.bundle run <workflow> --config_file [configs..., sam2.yaml]`` with the tiny overrides."""
    files = [str(CONFIGS / c) for c in [*configs, "sam2.yaml"]]
    cmd = [sys.executable, "-m", "monai.bundle", "run", workflow, "--config_file", repr(files)]
    for key, value in {**TINY, "bundle_root": str(root), **overrides}.items():
        cmd += [f"--{key}", value if isinstance(value, str) else repr(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=root.parent, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{workflow} {configs} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-6000:]}"
    return proc.stdout + proc.stderr


def test_sam2_stage1_stage2_and_inference_through_the_cli(tmp_path, write_nifti_cases, write_nifti, phantom):
    items = write_nifti_cases(tmp_path / "data")
    for case in (61, 62):  # unlabeled volumes: not test cases (leakage guard)
        write_nifti(tmp_path / "unlabeled" / f"img00{case}.nii.gz", phantom(case, (1, 6))[0])
    root = tmp_path / "bundle"
    prepare_unlabeled(str(root / "data/unlabeled"), glob=str(tmp_path / "unlabeled/*.nii.gz"), spatial_size=32,
                      progress=False)
    for level in DEFAULT_LEVELS:
        teacher = {"allow_untrained_teacher": True, "teacher_args": TEACHERS[level]} if level in TEACHERS else {}
        bundle_run("training", ["pretrain.yaml", f"pretrain_{level}.yaml"], root, log_interval=1, **teacher,
                   **HEADS[level])
        record = read_expert_file(str(root / "models/experts" / f"{level}.pt"))
        got = (record["level"], record["backbone"], record["variant"], record["img_size"])
        assert got == (level, "sam2", "tiny", 32)
        assert any(".trunk." in k for k in record["state_dict"]), "not a Hiera (SAM 2) expert"

    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": items[:2], "testing": items[2:]}))  # no validation: last-epoch model
    log = bundle_run("training", ["train.yaml"], root, datalist=str(datalist), slice_batch_size=8)
    assert "stage-1 experts" in log  # the three files were found and loaded
    model = root / "models" / "model.pt"
    state = torch.load(model, map_location="cpu", weights_only=True)
    assert any(k.startswith("image_encoder.trunk.") for k in state) and any(".fusion." in k for k in state)

    image = Path(items[2]["image"])
    bundle_run("run", ["inference.yaml"], root, input_images=str(image), output_dir=str(tmp_path / "pred"))
    pred, ref = nib.load(str(tmp_path / "pred" / image.name.replace(".nii.gz", "_seg.nii.gz"))), nib.load(str(image))
    assert pred.shape == ref.shape and np.allclose(pred.affine, ref.affine)
    assert set(np.unique(np.asarray(pred.dataobj))) <= set(range(9))
