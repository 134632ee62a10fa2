"""Stage-1 bundle workflows end to end: each ``pretrain_*`` config runs through ``python -m monai.bundle run training``
in a subprocess on a tiny SAM, tiny teachers and a few generated CT volumes; teachers and experts are written as
self-describing files, a rerun resumes from the latest checkpoint, and stage 2 loads the experts (or refuses a
mismatched one)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from samora_monai.apps.stage1_pipeline import stage1_configs
from samora_monai.data import prepare_unlabeled
from samora_monai.networks import SamoraNet, read_expert_file
from samora_monai.teachers import read_teacher_metadata

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = {"samora_synapse": ROOT / "bundles/samora_synapse", "samora_la": ROOT / "bundles/samora_la"}
from samora_monai.networks import DEFAULT_LEVELS as LEVELS  # noqa: E402

IMG = 64
COMMON = ["--img_size", str(IMG), "--batch_size", "4", "--epochs", "1", "--num_workers", "0", "--log_interval", "1"]
TINY_TEACHER = {
    "pretrain_teacher_image": {"arch": "resnet18", "proj_hidden_dim": 32, "proj_dim": 16},
    "pretrain_teacher_patch": {
        "hidden_size": 32, "mlp_dim": 64, "num_layers": 2, "num_heads": 4, "decoder_hidden_size": 32,
        "decoder_mlp_dim": 64, "decoder_num_layers": 1, "decoder_num_heads": 4,
    },
}
TINY_STUDENT = ["--variant", "tiny", "--random_init", "true"]
TINY_HEAD = {"image": ["--head#hidden_dim", "32"], "patch": ["--head#hidden_dim", "32"],
             "pixel": ["--head#channels", "[8,8,8,8]"]}
SLICES = 12  # 2 volumes x 6 axial slices
ITERS = SLICES // 4  # batch 4, drop_last


def run_bundle(workflow: str, bundle_root: Path, *overrides: str, bundle: str = "samora_synapse") -> str:
    """Run one workflow from an unrelated cwd; return its log (stdout + stderr); fail with the log on error."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training",
           "--config_file", repr([str(f) for f in stage1_configs(BUNDLES[bundle] / "configs", workflow)]),
           "--bundle_root", str(bundle_root), *COMMON, *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=bundle_root.parent, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{workflow} failed:\n{log[-4000:]}"
    return log


def teacher_overrides(workflow: str) -> list[str]:
    return [a for k, v in TINY_TEACHER[workflow].items() for a in (f"--network_def#{k}", str(v))]


@pytest.fixture(scope="module")
def bundle_root(tmp_path_factory) -> Path:
    """A bundle root with data/unlabeled prepared from 2 generated CT volumes (not test cases) at 64 px."""
    tmp = tmp_path_factory.mktemp("stage1")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    for case in (61, 62):
        body = [np.exp(-((xx - 16 - 3 * np.sin(z + case)) ** 2 + (yy - 16) ** 2) / (60 + 10 * z)) for z in range(6)]
        vol = np.stack(body, -1) * 1200 - 1000 + 50 * rng.standard_normal((32, 32, 6))
        (tmp / "volumes").mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(vol.astype(np.float32), np.eye(4)), str(tmp / "volumes" / f"img00{case}.nii.gz"))
    root = tmp / "bundle"
    prepare_unlabeled(str(root / "data/unlabeled"), glob=str(tmp / "volumes/*.nii.gz"), spatial_size=IMG,
                      progress=False)
    return root


@pytest.fixture(scope="module")
def teachers(bundle_root) -> dict[str, Path]:
    for workflow in TINY_TEACHER:
        run_bundle(workflow, bundle_root, *teacher_overrides(workflow))
    return {level: bundle_root / "models/teachers" / f"{level}.pt" for level in ("image", "patch")}


@pytest.fixture(scope="module")
def experts(bundle_root, teachers) -> dict[str, Path]:
    for level in LEVELS:
        run_bundle(f"pretrain_{level}", bundle_root, *TINY_STUDENT, *TINY_HEAD[level])
    return {level: bundle_root / "models/experts" / f"{level}.pt" for level in LEVELS}


def test_teacher_workflows_write_teacher_files(teachers, bundle_root):
    for level, kind in (("image", "contrastive"), ("patch", "mae")):
        record = read_teacher_metadata(teachers[level])
        assert (record["kind"], record["level"], record["img_size"]) == (kind, level, IMG)
        summary = record["summary"]
        print(f"teacher {level}: first loss {summary['first_loss']:.4f} (it 1), last {summary['last_loss']:.4f} "
              f"(it {summary['last_iteration']})")
        assert summary["iterations"] == ITERS and summary["epochs"] == 1 and summary["data_size"] == SLICES
        assert [h[0] for h in summary["loss_history"]] == list(range(1, ITERS + 1))
        assert all(np.isfinite(h[1]) and h[1] > 0 for h in summary["loss_history"])
        assert (bundle_root / f"models/pretrain/teacher_{level}/latest_checkpoint_epoch=1.pt").is_file()
        assert list((bundle_root / f"eval/pretrain_teacher_{level}").glob("events.out.tfevents.*"))  # TensorBoard
    assert read_teacher_metadata(teachers["image"])["config"]["arch"] == "resnet18"  # the override reached the net


def test_student_workflows_write_experts(experts, teachers, bundle_root):
    for level in LEVELS:
        record = read_expert_file(str(experts[level]))
        assert (record["level"], record["rank"], record["variant"], record["img_size"]) == (level, 4, "tiny", IMG)
        b = {k: v for k, v in record["state_dict"].items() if k.rsplit(".", 2)[-2] in ("b_q", "b_v")}
        assert len(b) == 2 * 4 and all(v.abs().sum() > 0 for v in b.values()), "B matrices still zero after training"
        assert all(f".experts.{level}." in k for k in record["state_dict"])
        summary = record["summary"]
        print(f"expert {level}: first loss {summary['first_loss']:.5f} (it 1), last {summary['last_loss']:.5f} "
              f"(it {summary['last_iteration']})")
        assert summary["iterations"] == ITERS and summary["data_size"] == SLICES and summary["batch_size"] == 4
        assert np.isfinite(summary["first_loss"]) and np.isfinite(summary["last_loss"])
        assert summary["sam_checkpoint"] == "random_init"
        if level == "pixel":
            assert "teacher_checkpoint" not in summary
        else:
            assert os.path.realpath(summary["teacher_checkpoint"]) == os.path.realpath(teachers[level])


def test_rerun_resumes_from_latest_checkpoint(experts, bundle_root, tmp_path):
    """Rerunning the pixel workflow with 2 epochs continues from its epoch-1 checkpoint (iterations 4-6)."""
    resumed = tmp_path / "pixel_resumed.pt"
    log = run_bundle("pretrain_pixel", bundle_root, *TINY_STUDENT, *TINY_HEAD["pixel"], "--epochs", "2",
                     "--expert_file", str(resumed))
    assert "Restored all variables from" in log and "latest_checkpoint_epoch=1.pt" in log
    summary = read_expert_file(str(resumed))["summary"]
    print("resumed pixel loss history:", [(int(i), round(v, 5)) for i, v in summary["loss_history"]])
    assert summary["iterations"] == 2 * ITERS and summary["epochs"] == 2
    assert [r["start_iteration"] for r in summary["runs"]] == [0, ITERS]
    assert summary["runs"][-1]["end_iteration"] == 2 * ITERS
    assert [h[0] for h in summary["loss_history"]] == list(range(1, 2 * ITERS + 1))
    first = read_expert_file(str(experts["pixel"]))["summary"]
    assert summary["loss_history"][:ITERS] == first["loss_history"]  # the first run's log was restored
    state = torch.load(bundle_root / "models/pretrain/pixel/latest_checkpoint_epoch=2.pt", weights_only=False)
    assert state["trainer"]["iteration"] == 2 * ITERS  # ignite keeps the iteration; the epoch follows from it


def stage2_net(bundle_root: Path, **overrides) -> SamoraNet:
    parser = ConfigParser()
    parser.read_config(str(BUNDLES["samora_synapse"] / "configs/train.yaml"))
    parser.update({"bundle_root": str(bundle_root), "variant": "tiny", "img_size": IMG, "random_init": True,
                   **overrides})
    return parser.get_parsed_content("network_def")


def test_stage2_loads_experts_and_refuses_mismatch(experts, bundle_root):
    net = stage2_net(bundle_root)
    state = net.state_dict()
    for path in experts.values():
        for key, value in read_expert_file(str(path))["state_dict"].items():
            torch.testing.assert_close(state[key], value)
    with pytest.raises(RuntimeError) as err:  # ConfigParser wraps the network's error
        stage2_net(bundle_root, **{"network_def#lora_rank": 2})
    cause = err.value.__cause__
    assert isinstance(cause, ValueError) and "rank: file has 4, network needs 2" in str(cause), cause
