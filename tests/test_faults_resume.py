"""Faults survived: a stage-2 (``train.yaml``) and a stage-1 (``pretrain_pixel.yaml``) bundle run SIGKILLed in the
middle of epoch 2 and rerun with the same command continue from the epoch-1 checkpoint.

Each run goes through the real ``python -m monai.bundle run training`` CLI with a test overlay config that appends
:class:`run_probes.FaultProbe` to ``train#handlers`` (both runs use the same command): it records the weights and
the optimizer step counters when a run starts (after the resume loader) and holds the first run at iteration 2 of
epoch 2 (of 6) until the test kills it, so the kill never lands on an epoch boundary. Checked: the rerun restored
the last checkpoint (log line, epoch counter), its starting weights equal that checkpoint's (and differ from the
live weights at the kill), the optimizer step count continues to ``epochs x iterations``, old resume checkpoints are
pruned to the newest, no ``.tmp-*`` file is left (one is planted as if a save had been killed), and the deliverable
(``model.pt`` / ``experts/pixel.pt``) loads.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser
from run_probes import HOLD_MARKER, optimizer_steps
from tiny_settings import BUNDLES

from samora_monai.data import prepare_unlabeled
from samora_monai.handlers import AtomicCheckpointSaver, ResumeCheckpointSaver, atomic_checkpoint
from samora_monai.networks import SamoraNet, read_expert_file

TESTS = Path(__file__).resolve().parent
EPOCHS, ITERS = 3, 6  # 12 slices (2 volumes x 6), batch 2
TINY = ["--variant", "tiny", "--img_size", "32", "--random_init", "true", "--epochs", str(EPOCHS),
        "--allow_missing_experts", "true",
        "--batch_size", "2", "--num_workers", "0"]  # fmt: skip


def write_overlay(path: Path, probe_dir: Path, module: str) -> str:
    path.write_text(
        "+train#handlers:\n"
        "  - _target_: run_probes.FaultProbe\n"
        f"    folder: '{probe_dir}'\n"
        f"    module: '{module}'\n"
        "    optimizer: '@optimizer'\n"
    )
    return str(path)


def bundle_command(configs: list[str], overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", repr(configs), *overrides]


def env() -> dict[str, str]:
    path = os.pathsep.join([str(TESTS.parent), str(TESTS), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_and_kill(cmd: list[str], cwd: Path) -> str:
    """Run ``cmd``; SIGKILL it as soon as the probe holds it mid-epoch; return the log."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(300, proc.kill)
    watchdog.start()
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if HOLD_MARKER in line:
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=60)
    finally:
        watchdog.cancel()
        proc.stdout.close()
    log = "".join(lines)
    assert proc.returncode == -signal.SIGKILL, f"not killed mid-epoch (rc {proc.returncode}):\n{log[-4000:]}"
    return log


def run_to_end(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    return log


def assert_no_temporary_files(root: Path) -> None:
    assert not [p for p in root.rglob("*") if p.name.startswith(".tmp-") or p.name.startswith("tmp")]


def assert_resumed(log: str, probe: Path, ckpt: dict, held: dict) -> dict:
    """The rerun restored ``ckpt`` (end of epoch 1): log, counters, weights, optimizer steps; returns its start."""
    assert "Restored all variables from" in log and "latest_checkpoint_epoch=1.pt" in log
    assert f"Epoch: 2/{EPOCHS}, Iter: 1/{ITERS}" in log and f"Epoch: 1/{EPOCHS}" not in log
    start = torch.load(probe / "start_1.pt", weights_only=True)
    assert (start["epoch"], start["iteration"]) == (1, ITERS) and ckpt["trainer"]["iteration"] == ITERS
    assert start["steps"] == optimizer_steps(ckpt["optimizer"]) and set(start["steps"]) == {ITERS}
    # the held (killed) run had trained past the checkpoint: its 2 extra steps are lost, not half-kept
    assert set(held["steps"]) == {ITERS + 2} and held["iteration"] == ITERS + 2
    return start


@pytest.fixture()
def btcv_run(tmp_path, write_json_datalist, write_nifti_cases) -> tuple[list[str], Path, Path]:
    items = write_nifti_cases(tmp_path / "data", n=3)
    datalist = write_json_datalist(tmp_path / "dl.json", training=items[:2], validation=items[2:])
    root, probe = tmp_path / "bundle", tmp_path / "probe"
    configs = [str(BUNDLES["synapse"] / "configs" / "train.yaml"),
               write_overlay(tmp_path / "probe.yaml", probe, "@network")]  # fmt: skip
    cmd = bundle_command(configs, ["--bundle_root", str(root), "--datalist", datalist, *TINY])
    return cmd, root, probe


@pytest.mark.slow
def test_stage2_sigkill_mid_epoch_resumes(btcv_run, tmp_path):
    cmd, root, probe = btcv_run
    ckpt_dir = root / "models" / "checkpoints"
    log = run_and_kill(cmd, tmp_path)
    assert f"Epoch: 2/{EPOCHS}, Iter: 2/{ITERS}" in log and "Saved checkpoint at epoch: 1" in log
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["latest_checkpoint_epoch=1.pt"]  # killed inside epoch 2
    best_after_kill = torch.load(root / "models" / "model.pt", weights_only=True)  # intact, loadable
    ckpt = torch.load(ckpt_dir / "latest_checkpoint_epoch=1.pt", weights_only=False)
    held = torch.load(probe / "held.pt", weights_only=True)
    # a save killed half-way leaves its temporary file: plant one in each folder the run writes to
    for folder in (root / "models", ckpt_dir):
        (folder / ".tmp-0123456789ab-model.pt").write_bytes(b"truncated")

    log = run_to_end(cmd, tmp_path)
    start = assert_resumed(log, probe, ckpt, held)
    assert start["weights"].keys() == ckpt["model"].keys()
    for k, v in ckpt["model"].items():
        assert torch.equal(start["weights"][k], v), k
    trained = [k for k in ckpt["model"] if "mask_decoder" in k and k.endswith("weight")]
    assert any(not torch.equal(held["weights"][k], ckpt["model"][k]) for k in trained)

    assert sorted(p.name for p in ckpt_dir.iterdir()) == [f"latest_checkpoint_epoch={EPOCHS}.pt"]  # pruned
    assert_no_temporary_files(root)
    final = torch.load(ckpt_dir / f"latest_checkpoint_epoch={EPOCHS}.pt", weights_only=False)
    assert final["trainer"]["iteration"] == EPOCHS * ITERS
    assert set(optimizer_steps(final["optimizer"])) == {EPOCHS * ITERS}
    parser = ConfigParser()
    parser.read_config(str(BUNDLES["synapse"] / "configs" / "inference.yaml"))
    parser.update({"variant": "tiny", "img_size": 32, "random_init": True, "bundle_root": str(root)})
    net = parser.get_parsed_content("network_def")
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    net.load_state_dict(state, strict=True)
    assert state.keys() == best_after_kill.keys()


@pytest.fixture()
def unlabeled_root(tmp_path) -> Path:
    """A bundle root with data/unlabeled prepared from 2 generated CT volumes (6 axial slices each) at 32 px."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    (tmp_path / "volumes").mkdir()
    for case in (61, 62):
        body = [np.exp(-((xx - 16 - 3 * np.sin(z + case)) ** 2 + (yy - 16) ** 2) / (60 + 10 * z)) for z in range(6)]
        vol = np.stack(body, -1) * 1200 - 1000 + 50 * rng.standard_normal((32, 32, 6))
        nib.save(nib.Nifti1Image(vol.astype(np.float32), np.eye(4)), str(tmp_path / "volumes" / f"img00{case}.nii.gz"))
    root = tmp_path / "bundle"
    prepare_unlabeled(str(root / "data/unlabeled"), glob=str(tmp_path / "volumes/*.nii.gz"), spatial_size=32,
                      progress=False)  # fmt: skip
    return root


@pytest.mark.slow
def test_stage1_sigkill_mid_epoch_resumes(unlabeled_root, tmp_path):
    root, probe = unlabeled_root, tmp_path / "probe"
    configs = [*(str(BUNDLES["synapse"] / "configs" / f) for f in ("pretrain.yaml", "pretrain_pixel.yaml")),
               write_overlay(tmp_path / "probe.yaml", probe, "@checkpoint_modules#expert")]  # fmt: skip
    cmd = bundle_command(configs, ["--bundle_root", str(root), *TINY, "--log_interval", "1",
                                   "--head#channels", "[8,8,8,8]"])  # fmt: skip
    ckpt_dir = root / "models" / "pretrain" / "pixel"
    log = run_and_kill(cmd, tmp_path)
    assert f"Epoch: 2/{EPOCHS}, Iter: 2/{ITERS}" in log
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["latest_checkpoint_epoch=1.pt"]
    assert not (root / "models" / "experts" / "pixel.pt").exists()  # written when training completes
    ckpt = torch.load(ckpt_dir / "latest_checkpoint_epoch=1.pt", weights_only=False)
    held = torch.load(probe / "held.pt", weights_only=True)
    (ckpt_dir / ".tmp-0123456789ab-final_checkpoint.pt").write_bytes(b"truncated")

    log = run_to_end(cmd, tmp_path)
    start = assert_resumed(log, probe, ckpt, held)
    for k, v in ckpt["expert"].items():
        assert torch.equal(start["weights"][k], v), k
    assert any(not torch.equal(held["weights"][k], v) for k, v in ckpt["expert"].items())

    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["final_checkpoint.pt", f"latest_checkpoint_epoch={EPOCHS}.pt"]
    assert_no_temporary_files(root)
    final = torch.load(ckpt_dir / f"latest_checkpoint_epoch={EPOCHS}.pt", weights_only=False)
    assert final["trainer"]["iteration"] == EPOCHS * ITERS
    assert set(optimizer_steps(final["optimizer"])) == {EPOCHS * ITERS}
    record = read_expert_file(str(root / "models" / "experts" / "pixel.pt"))
    history = record["summary"]["loss_history"]  # epoch 1 from the checkpoint, epochs 2-3 from the rerun
    assert [int(h[0]) for h in history] == list(range(1, EPOCHS * ITERS + 1))
    net = SamoraNet(num_classes=8, variant="tiny", img_size=32, random_init=True,
                    expert_checkpoints={"pixel": str(root / "models" / "experts" / "pixel.pt")})  # fmt: skip
    loaded = {k: v for k, v in net.state_dict().items() if ".experts.pixel." in k}
    assert loaded and all(torch.equal(loaded[k], v) for k, v in record["state_dict"].items() if k in loaded)


# ------------------------------------------------------------------------- the saver itself, in process (fast)


def _engine_with_metric(values: list[float]) -> Engine:
    engine = Engine(lambda e, b: None)

    @engine.on(Events.EPOCH_COMPLETED)
    def _metric(e: Engine) -> None:
        e.state.metrics["dice"] = values[e.state.epoch - 1]

    return engine


def test_atomic_saver_keeps_old_model_when_a_save_fails(tmp_path, monkeypatch):
    net = torch.nn.Linear(2, 2)
    saver = AtomicCheckpointSaver(str(tmp_path), {"model": net}, save_key_metric=True, key_metric_name="dice",
                                  key_metric_filename="model.pt")  # fmt: skip
    engine = _engine_with_metric([0.1, 0.5])
    saver.attach(engine)
    engine.run([0], max_epochs=1)
    first = (tmp_path / "model.pt").read_bytes()

    def killed_mid_write(obj, path, **kwargs):
        Path(path).write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(atomic_checkpoint.torch, "save", killed_mid_write)
    with torch.no_grad():
        net.weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        engine.run([0], max_epochs=2)  # epoch 2 scores better: model.pt is replaced, never deleted first
    assert (tmp_path / "model.pt").read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_resume_saver_prunes_stale_checkpoints_and_temporary_files(tmp_path):
    for name in ("latest_checkpoint_epoch=1.pt", "latest_checkpoint_epoch=2.pt", ".tmp-0123456789ab-model.pt"):
        (tmp_path / name).write_bytes(b"from a killed run")
    (tmp_path / "model.pt").write_bytes(b"kept")
    net = torch.nn.Linear(2, 2)
    saver = ResumeCheckpointSaver(str(tmp_path), {"model": net, "opt": torch.optim.SGD(net.parameters(), lr=0.1)},
                                  save_interval=1, n_saved=1, file_prefix="latest")  # fmt: skip
    engine = Engine(lambda e, b: None)
    saver.attach(engine)
    assert not (tmp_path / ".tmp-0123456789ab-model.pt").exists()
    engine.run([0, 0], max_epochs=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest_checkpoint_epoch=3.pt", "model.pt"]
    assert torch.load(tmp_path / "latest_checkpoint_epoch=3.pt", weights_only=False)["trainer"]["iteration"] == 6
