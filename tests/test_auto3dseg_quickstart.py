"""The template README's "Quick start on CPU", run as written: its input.yaml and its shell command, on generated
NIfTI volumes in ./data (slow)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import yaml
from monai.data import create_test_image_3d

from samora_monai.auto3dseg import ALGO_NAME, get_template_path

README = os.path.join(get_template_path(), ALGO_NAME, "docs", "README.md")
SHAPE = (32, 28, 8)


def quick_start_blocks() -> tuple[str, str]:
    """The ``yaml`` (input.yaml) and ``bash`` code blocks of the README section "Quick start on CPU"."""
    with open(README) as f:
        text = f.read()
    section = re.search(r"^## Quick start on CPU\n(.*?)(?=^## )", text, flags=re.S | re.M)
    assert section, f"{README} has no 'Quick start on CPU' section"
    blocks = dict(re.findall(r"^```(yaml|bash)\n(.*?)^```", section.group(1), flags=re.S | re.M))
    assert set(blocks) == {"yaml", "bash"}, f"expected one yaml and one bash block, got {sorted(blocks)}"
    return blocks["yaml"], blocks["bash"]


def _write_data(folder) -> None:
    """5 labelled volumes (2 classes, no fold keys: AutoRunner makes num_fold folds) and 1 test volume."""
    os.makedirs(folder, exist_ok=True)
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    for i in range(6):
        image, label = create_test_image_3d(
            *SHAPE, num_objs=4, rad_max=3, rad_min=2, num_seg_classes=2, noise_max=0.1,
            random_state=np.random.RandomState(i),
        )  # fmt: skip
        nib.save(nib.Nifti1Image(image.astype(np.float32) * 400 - 100, affine), os.path.join(folder, f"img{i}.nii.gz"))
        nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), os.path.join(folder, f"lab{i}.nii.gz"))
    items = [{"image": f"img{i}.nii.gz", "label": f"lab{i}.nii.gz"} for i in range(5)]
    with open(os.path.join(folder, "datalist.json"), "w") as f:
        json.dump({"training": items, "testing": [{"image": "img5.nii.gz"}]}, f)


def test_quick_start_blocks_are_the_tiny_cpu_settings():
    config, command = quick_start_blocks()
    cfg = yaml.safe_load(config)
    assert cfg["num_fold"] == 2 and cfg["samora"]["device"] == "cpu" and cfg["samora"]["variant"] == "tiny"
    assert "AutoRunner run" in command and "--algos=samora" in command


@pytest.mark.slow
def test_readme_quick_start_runs_verbatim_on_cpu(tmp_path):
    config, command = quick_start_blocks()
    _write_data(tmp_path / "data")
    (tmp_path / "input.yaml").write_text(config)
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    # "python" in the README is the interpreter with samora_monai: this one
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    proc = subprocess.run(["bash", "-e", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    work = tmp_path / "work"
    for fold in range(2):
        ckpt = work / f"{ALGO_NAME}_{fold}" / f"model_fold{fold}"
        log = (ckpt / "training.log").read_text()
        assert len([line for line in log.splitlines() if line.startswith("epoch ")]) == 2, log
        assert "ABLATION (allow_missing_experts: true)" in log
        assert [r["epoch"] for r in yaml.safe_load((ckpt / "progress.yaml").read_text())] == [1, 2]
        assert (ckpt / "model.pt").is_file()
    seg = nib.load(str(work / "ensemble_output" / "img5_ensemble.nii.gz"))
    assert seg.shape == SHAPE and set(np.unique(seg.get_fdata()).tolist()) <= {0.0, 1.0, 2.0}
