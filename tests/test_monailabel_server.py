"""End to end with a real MONAI Label server: train the tiny Synapse bundle (random SAM weights) for one epoch with
the bundle CLI, package it, install it with ``monailabel_install`` and NO overrides (the installed configs follow
``models/model_meta.json``), serve it on 127.0.0.1, infer (one request, then four concurrent ones; uint8 labels),
train one epoch through ``/train/``, then train on a label with out-of-range values and read the cause in the job's
status."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from samora_monai.apps.monailabel import monailabel_install, offline_env, server_command
from samora_monai.apps.packaging import package_bundle, read_bundle_version
from samora_monai.utils import bundle_dir

pytest.importorskip("monailabel", reason="MONAI Label extra not installed (make venv installs it)")
requests = pytest.importorskip("requests")

pytestmark = pytest.mark.slow

BUNDLE = bundle_dir("samora_synapse")
NAME = "samora_synapse"
ORGANS = ["spleen", "right kidney", "left kidney", "gallbladder", "liver", "stomach", "aorta", "pancreas"]
SHAPE = (48, 48, 8)


def _save(array: np.ndarray, path: Path, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(array, np.diag([1.5, 1.5, 3.0, 1.0]) if affine is None else affine), path)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, phantom, tiny):
    """Studies (3 labelled CT volumes), a trained tiny bundle packaged as a zip and installed into a monaibundle app."""
    root = tmp_path_factory.mktemp("monailabel")
    studies = root / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    items = []
    for i in range(3):
        image, label = phantom(i, (1 + i % 8, 5), SHAPE)
        items.append(
            {
                "image": str(_save(image, studies / f"case{i}.nii.gz")),
                "label": str(_save(label, studies / "labels" / "final" / f"case{i}.nii.gz")),
            }
        )
    datalist = root / "datalist.json"
    datalist.write_text(json.dumps({"training": items[:2], "validation": items[2:]}))

    bundle = root / NAME
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("eval", "models", "__pycache__"))
    configs = ["configs/train.yaml"]
    train = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", json.dumps(configs)]
    train += ["--bundle_root", str(bundle), "--datalist", str(datalist), "--epochs", "1", "--batch_size", "4"]
    server_tiny = {k: tiny[k] for k in ("variant", "img_size", "random_init", "num_workers", "allow_missing_experts")}
    for key, value in server_tiny.items():
        train += [f"--{key}", str(value).lower()]
    result = subprocess.run(train, cwd=bundle, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (bundle / "models" / "model.pt").is_file(), result.stderr[-3000:]
    # resume state goes to models/checkpoints/: MONAI Label offers every models/*.pt as a model file
    assert sorted(p.name for p in (bundle / "models").glob("*.pt")) == ["model.pt"]
    assert (bundle / "models" / "checkpoints" / "latest_checkpoint_epoch=1.pt").is_file()
    meta = json.loads((bundle / "models" / "model_meta.json").read_text())
    assert (meta["variant"], meta["img_size"], meta["random_init"], meta["sam_checkpoint"]) == ("tiny", 64, True, None)

    archive = Path(package_bundle(str(bundle), out=str(root / "dist")))
    assert archive.name == f"{NAME}_v{read_bundle_version(BUNDLE)}.zip"
    installed = Path(monailabel_install(str(archive), str(root / "ws")))  # no overrides: read from the sidecar
    assert (installed / "models" / "model.pt").read_bytes() == (bundle / "models" / "model.pt").read_bytes()
    for config in ("inference.yaml", "train.yaml"):
        content = yaml.safe_load((installed / "configs" / config).read_text())
        assert (content["variant"], content["img_size"], content["random_init"]) == ("tiny", 64, True), config
        # MONAI Label trains from model.pt (it holds the experts), not from stage-1 files the archive does not ship
        assert content["expert_checkpoints"] == {} and content.get("allow_missing_experts", False) is False, config
    return {"root": root, "app": root / "ws" / "samora", "studies": studies, "installed": installed}


@pytest.fixture(scope="module")
def server(workspace):
    """A MONAI Label server on a free local port; stopped (whole process group) however the tests end."""
    port = _free_port()
    env = offline_env()
    env.update(OMP_NUM_THREADS="1", MONAI_LABEL_SESSION_PATH=str(workspace["root"] / "sessions"))
    # any HTTP(S) request that leaves the machine goes to a dead proxy and fails
    env.update(HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9", NO_PROXY="127.0.0.1,localhost")
    env.update(http_proxy=env["HTTP_PROXY"], https_proxy=env["HTTPS_PROXY"], no_proxy=env["NO_PROXY"])
    log_path = workspace["root"] / "server.log"
    cmd = server_command(workspace["app"], workspace["studies"], NAME, port=port)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"MONAI Label server exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                info = requests.get(f"{url}/info/", timeout=5)
                if info.status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"MONAI Label server not ready after 180 s:\n{log_path.read_text()[-4000:]}")
            time.sleep(1)
        yield {"url": url, "log": log_path}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=20)


def _infer(url: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """POST ``path`` to /infer/; the label volume as stored in the returned file (dtype included) and its affine."""
    with open(path, "rb") as f:
        res = requests.post(f"{url}/infer/{NAME}", params={"output": "image"}, files={"file": f}, timeout=300)
    assert res.status_code == 200, res.text[:2000]
    out = path.with_name(f"{path.name.split('.')[0]}_{time.monotonic_ns()}_label.nii.gz")
    out.write_bytes(res.content)
    label = nib.load(out)
    assert label.get_data_dtype() == np.uint8  # class indices as the bundle CLI writes them, not float32
    return np.asanyarray(label.dataobj), label.affine


def test_model_pt_holds_whole_network(workspace):
    """MONAI Label loads ``models/model.pt`` with ``strict=False``: check here that it covers the whole network that
    the installed inference config builds, so no weight silently stays at its initial value."""
    import torch
    from monai.bundle import ConfigParser

    installed = workspace["installed"]
    parser = ConfigParser()
    parser.read_config(str(installed / "configs" / "inference.yaml"))
    parser["bundle_root"] = str(installed)
    network = parser.get_parsed_content("network_def")
    state = torch.load(installed / "models" / "model.pt", map_location="cpu", weights_only=True)
    state = state.get("model", state)
    assert set(state) == set(network.state_dict())
    network.load_state_dict(state, strict=True)


def test_info_lists_model_and_labels(server):
    info = requests.get(f"{server['url']}/info/", timeout=30).json()
    model = info["models"][NAME]
    assert model["type"] == "segmentation"
    assert model["labels"] == {organ: i for i, organ in enumerate(ORGANS, start=1)}
    assert model["config"]["model_filename"] == ["model.pt"]
    assert NAME in info["trainers"]
    log = server["log"].read_text()
    assert f"Adding Bundle from Local: {NAME}" in log and "Adding Bundle from NGC" not in log


def _eval_files(workspace) -> set[Path]:
    eval_dir = workspace["installed"] / "eval"
    return {p for p in eval_dir.rglob("*") if p.is_file()} if eval_dir.exists() else set()


def test_infer_volume(server, workspace, tmp_path, phantom):
    image, _ = phantom(5, (6, 5), SHAPE)
    before = _eval_files(workspace)
    pred, _ = _infer(server["url"], _save(image, tmp_path / "new_ct.nii.gz"))
    # MONAI Label drops the bundle's saver (a SaveImaged) and returns the label itself: nothing written in the bundle
    assert _eval_files(workspace) == before
    assert pred.shape == SHAPE and pred.dtype == np.uint8
    assert set(np.unique(pred)) <= set(range(len(ORGANS) + 1))


def test_four_concurrent_infers(server, tmp_path, phantom):
    """Each of 4 concurrent answers equals the sequential answer for the same file (array and affine). The files
    differ in slice count and spacing, so an answer returned for the wrong request cannot pass."""
    paths = [
        _save(
            phantom(10 + i, (1 + (10 + i) % 8, 5), SHAPE)[0][..., : 5 + i],
            tmp_path / f"ct{i}.nii.gz",
            np.diag([1.5, 1.5, 3.0 + 0.5 * i, 1]),
        )
        for i in range(4)
    ]
    sequential = [_infer(server["url"], p) for p in paths]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(lambda p: _infer(server["url"], p), paths))
    for i, ((seq, seq_affine), (con, con_affine)) in enumerate(zip(sequential, concurrent, strict=True)):
        assert seq.shape == SHAPE[:2] + (5 + i,) and np.allclose(seq_affine, np.diag([1.5, 1.5, 3.0 + 0.5 * i, 1]))
        assert set(np.unique(seq)) <= set(range(len(ORGANS) + 1))
        assert np.array_equal(con, seq), f"ct{i}: concurrent answer differs in {np.count_nonzero(con != seq)} voxels"
        assert np.array_equal(con_affine, seq_affine), f"ct{i}: affines differ"


def _train(url: str) -> tuple[dict, str]:
    """Start a one-epoch /train/ job, poll it as the README says until it ends; the task and its output lines."""
    request = {"max_epochs": 1, "multi_gpu": False, "val_split": 0.4, "device": "cpu"}
    res = requests.post(f"{url}/train/{NAME}", json=request, timeout=60)
    assert res.status_code == 200, res.text[:2000]
    task_id = res.json()["id"]
    deadline = time.monotonic() + 240
    while True:
        # 200 with the running task, 404 once none runs (also for a moment before the job's process starts)
        if requests.get(f"{url}/train/", params={"check_if_running": True}, timeout=30).status_code == 404:
            status = requests.get(f"{url}/train/", params={"all": True}, timeout=30).json()
            task = next(t for t in status if t["id"] == task_id)
            if task["status"] not in ("SUBMITTED", "RUNNING"):
                return task, "\n".join(task.get("details", []))
        assert time.monotonic() < deadline, "training did not finish in 240 s"
        time.sleep(1)


def test_train_one_epoch(server, workspace):
    model_pt = workspace["installed"] / "models" / "model.pt"
    before = model_pt.stat().st_mtime_ns
    task, details = _train(server["url"])
    assert task["status"] == "DONE", details[-4000:]
    assert "Epoch: 1/1" in details and "Training Finished" in details, details[-4000:]
    assert "Epoch: 2/" not in details
    assert model_pt.stat().st_mtime_ns > before  # the best-metric checkpoint was rewritten by the run
    models = workspace["installed"] / "models"
    assert sorted(p.name for p in models.glob("*.pt")) == ["model.pt"]  # the only model file MONAI Label lists
    assert (models / "checkpoints" / "latest_checkpoint_epoch=1.pt").is_file()
    # the experts came with model.pt (no stage-1 files read); model.pt was selected on MONAI Label's validation split
    training = json.loads((models / "model_meta.json").read_text())["training"]
    assert training["stage1_experts"] == {} and training["ablation"] is None
    assert training["model_selection"] == "best on the validation section"


def _save_label(url: str, case: str, label: np.ndarray, tmp_path: Path) -> None:
    """Save ``label`` for image ``case`` through the datastore API, as a labelling client does."""
    with open(_save(label, tmp_path / f"{case}.nii.gz"), "rb") as f:
        params = {"image": case, "tag": "final"}
        res = requests.put(f"{url}/datastore/label", params=params, files={"label": f}, timeout=60)
    assert res.status_code == 200, res.text[:2000]


def test_train_error_reaches_the_client(server, workspace, tmp_path, phantom):
    """Labels with values beyond the 8 classes: the job ends in ERROR and the last line of its status names the
    file and the range (the package's message), not only MONAI's 'Failed to instantiate component' or a DataLoader
    worker's 'applying transform'. First one bad label (read by a validation DataLoader worker), then all of them
    (the training dataset fails while the bundle instantiates it)."""
    log_start = len(server["log"].read_text())
    for cases in (["case0"], ["case0", "case1", "case2"]):
        for case in cases:
            _, label = phantom(int(case[-1]), (1 + int(case[-1]) % 8, 5), SHAPE)
            label[0:4, 0:4, 0] = 11
            _save_label(server["url"], case, label, tmp_path)
        task, details = _train(server["url"])
        assert task["status"] == "ERROR", details[-4000:]
        last = details.strip().splitlines()[-1]
        # the bundle's guard_run excepthook ends the job's output with the package's reason (the ValueError itself,
        # or the task's summary of it when a DataLoader worker re-raised it)
        reason = r"samora_monai: run failed: (RuntimeError: training failed: )?ValueError: "
        assert re.match(reason, last), details[-4000:]
        assert "/labels/final/case" in last and "[0, 11]" in last and "expected 0..8" in last, last
    log = server["log"].read_text()[log_start:]
    assert "Failed to instantiate component 'samora_monai.data.VolumeSliceDataset'" in log
    assert "DataLoader worker" in log
