"""The bundle command line says what it does and a failure ends with its reason (real ``python -m monai.bundle`` and
``python -m samora_monai run`` subprocesses; tiny SAM at 32 px, 1 epoch):

- what reaches a config for ``--key None`` (dropped by MONAI), ``null``, ``'$None'`` and ``{}``; ``guard_run()``
  refuses the dropped form; the wrapper passes it as None;
- a NaN voxel stops training with the file named on the last line, and no model.pt, checkpoint or TensorBoard file;
- a dataset swap to labels 5 and 7 (which the BTCV mapping would turn into 0 and 6) with ``--label_mapping null``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigParser

pytestmark = pytest.mark.slow

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "samora_synapse"
TINY = {"variant": "tiny", "img_size": 32, "random_init": True, "epochs": 1, "batch_size": 4, "num_workers": 0,
        "slice_batch_size": 8, "allow_missing_experts": True}  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
AFFINE = np.array([[-0.8, 0, 0, 20.0], [0, 0.9, 0, -15.0], [0, 0, 2.5, 30.0], [0, 0, 0, 1]])
PROBE = """
imports: ['$import samora_monai', '$import samora_monai.apps.bundle_run']
label_mapping: {1: 1, 6: 5}
resume_checkpoint: /models/checkpoints/latest.pt
initialize: []
run: ["$print('REACHED', repr(@label_mapping), repr(@resume_checkpoint))"]
"""


def _run(module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", module, *args]
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=400)


def _args(overrides: dict) -> list[str]:
    return [a for k, v in overrides.items() for a in (f"--{k}", v if isinstance(v, str) else repr(v))]


def _reached(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr[-2000:]
    return next(line for line in result.stdout.splitlines() if line.startswith("REACHED"))


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("probe") / "probe.yaml"
    path.write_text(PROBE)
    return path


@pytest.mark.parametrize(
    ("value", "reached"),
    [("None", "{1: 1, 6: 5} '/models/checkpoints/latest.pt'"),  # MONAI drops it: the config keeps its value
     ("null", "'null' 'null'"), ("$None", "None None"), ("{}", "{} {}")],
)  # fmt: skip
def test_what_reaches_the_config(probe, value, reached):
    args = ["run", "--config_file", str(probe), "--label_mapping", value, "--resume_checkpoint", value]
    assert _reached(_run("monai.bundle", args, probe.parent)) == f"REACHED {reached}"


def test_guard_refuses_dropped_none_and_wrapper_passes_it(probe):
    overlay = probe.parent / "guarded.yaml"
    overlay.write_text("initialize: ['$samora_monai.apps.bundle_run.guard_run()']\n")
    configs = repr([str(probe), str(overlay)])
    refused = _run("monai.bundle", ["run", "--config_file", configs, "--label_mapping", "None"], probe.parent)
    assert refused.returncode != 0 and "REACHED" not in refused.stdout
    assert refused.stderr.strip().splitlines()[-1] == (
        "samora_monai: run failed: ValueError: --label_mapping None: MONAI's bundle command line drops overrides "
        "whose value is None, so the config would keep its value; write --label_mapping null (or '$None') to turn "
        "the value off"
    )
    wrapped = _run("samora_monai", ["run", "--config_file", configs, "--label_mapping", "None",
                                    "--resume_checkpoint=None"], probe.parent)  # fmt: skip
    assert _reached(wrapped) == "REACHED None None"


def _case(folder: Path, name: str, ids: tuple[int, int], seed: int, nan: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    label = np.zeros((24, 20, 3), np.uint8)
    label[3:10, 3:9], label[13:21, 10:17] = ids
    image = (rng.normal(0, 20, label.shape) + 60.0 * (label > 0)).astype(np.float32)
    if nan:
        image[5, 5, 1] = np.nan
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image, AFFINE), folder / f"img_{name}.nii.gz")
    nib.save(nib.Nifti1Image(label, AFFINE), folder / f"lab_{name}.nii.gz")
    return {"image": str(folder / f"img_{name}.nii.gz"), "label": str(folder / f"lab_{name}.nii.gz")}


def _datalist(path: Path, **sections) -> str:
    path.write_text(json.dumps(sections))
    return str(path)


def test_nan_voxel_stops_training_with_file_on_last_line(tmp_path):
    good, bad = _case(tmp_path / "d", "a", (1, 2), 0), _case(tmp_path / "d", "b", (1, 2), 1, nan=True)
    datalist = _datalist(tmp_path / "dl.json", training=[good, bad], validation=[good])
    root = tmp_path / "bundle"
    args = ["training", "--config_file", str(BUNDLE / "configs" / "train.yaml"),
            *_args({**TINY, "bundle_root": str(root), "datalist": datalist, "label_mapping": "null"})]  # fmt: skip
    result = _run("samora_monai", ["run", *args], tmp_path)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"samora_monai: run failed: ValueError: {bad['image']}: image has 1 non-finite voxels")
    assert not [p for p in root.rglob("*") if p.is_file()]  # no model.pt, no checkpoint, no TensorBoard file


SWAP = {"class_names": ["a", "b", "c", "d", "e", "f", "g"], "modality": "mr"}


def test_dataset_swap_labels_5_and_7_with_mapping_off(tmp_path):
    items = [_case(tmp_path / "d", c, (5, 7), i) for i, c in enumerate("abc")]
    datalist = _datalist(tmp_path / "dl.json", training=items[:2], validation=items[2:])
    # in-process: what the documented override does to the labels, and what the default mapping would have done
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.yaml"))
    parser.update({**TINY, **SWAP, "datalist": datalist, "label_mapping": "null"})
    label = parser.get_parsed_content("train#preprocessing")(items[0])["label"]
    assert sorted(np.unique(label.numpy()).tolist()) == [0, 5, 7]
    parser.update({"label_mapping": {1: 1, 2: 2, 3: 3, 4: 4, 6: 5, 7: 6, 8: 7, 11: 8}})
    label = parser.get_parsed_content("train#preprocessing", lazy=False)(items[0])["label"]
    assert sorted(np.unique(label.numpy()).tolist()) == [0, 6]
    # the real command line, written as the README writes it
    root = tmp_path / "bundle"
    overrides = {**TINY, **SWAP, "bundle_root": str(root), "datalist": datalist}
    args = ["run", "training", "--config_file", str(BUNDLE / "configs" / "train.yaml"), *_args(overrides),
            "--label_mapping", "null"]  # fmt: skip
    result = _run("monai.bundle", args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "label values not in label_mapping" not in log and "Epoch: 1/1" in log
    assert (root / "models" / "model.pt").is_file()
