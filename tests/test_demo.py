"""The shortened demo end to end (tiny phantom, one epoch per stage, every workflow through the bundle CLI), plus
the pieces of the demo that can be checked without it (loss-log parsing, slice choice, failure reporting)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from samora_monai.apps.demo import DemoStepError, demo_settings, run_demo
from samora_monai.apps.demo_steps import DemoRunner
from samora_monai.apps.figures import pick_slices, read_loss_log

ORGANS = ["spleen", "right_kidney", "left_kidney", "gallbladder", "liver", "stomach", "aorta", "pancreas"]


@pytest.mark.slow
def test_quick_demo_writes_every_stage_output(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("SAM_CHECKPOINT", raising=False)
    out = tmp_path / "demo"
    summary_path = Path(run_demo(out=str(out), quick=True))
    printed = capsys.readouterr().out

    bundle = out / "bundle"
    expected = [
        bundle / "models/teachers/image.pt", bundle / "models/teachers/patch.pt",
        *(bundle / f"models/experts/{level}.pt" for level in ("image", "patch", "pixel")),
        bundle / "models/model.pt", out / "predictions/img0001_seg.nii.gz",
        *(out / f"evaluation/metrics_{m}.{e}" for m in ("transunet", "monai") for e in ("json", "csv")),
        out / "baseline/model.pt", out / "baseline/evaluation/metrics_transunet.json",
        out / "baseline/evaluation/metrics_monai.json",
        out / "demo_summary.png", summary_path,
    ]
    assert [str(p) for p in expected if not p.is_file()] == []
    assert not (out / "evaluation/predictions").exists()  # the inference step wrote them once, under predictions/
    assert summary_path == out / "demo_summary.json"
    assert (out / "demo_summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    for mode, units in (("transunet", "voxel"), ("monai", "mm")):
        report = json.loads((out / f"evaluation/metrics_{mode}.json").read_text())
        assert report["mode"] == mode and report["hd95_units"] == units
        assert report["cases"] == ["img0001"]  # the held-out case only
        assert list(report["per_class"]) == ORGANS
        for organ in ORGANS:
            dice = report["per_class"][organ]["dice"]
            assert dice is not None and 0.0 <= dice <= 1.0, (mode, organ, dice)

    # stage 2 ran on the three experts stage 1 wrote; no validation section, so model.pt is the last-epoch network
    assert "validation" not in json.loads((out / "data/demo_datalist.json").read_text())
    training = json.loads((bundle / "models/model_meta.json").read_text())["training"]
    assert {lv: Path(f).name for lv, f in training["stage1_experts"].items()} == {
        lv: f"{lv}.pt" for lv in ("image", "patch", "pixel")}
    assert training["ablation"] is None and training["model_selection"] == "last epoch"

    # the held-out case never reached stage 1; the unlabeled pool is the training and unlabeled cases
    slices = json.loads((bundle / "data/unlabeled/unlabeled_datalist.json").read_text())["training"]
    assert sorted(Path(item["source"]).name for item in slices) == [
        "img0005.nii.gz", "img0006.nii.gz", "img0061.nii.gz"]

    summary = json.loads(summary_path.read_text())
    assert summary["backbone"] == "tiny, RANDOM SAM weights" and summary["quick"] is True
    assert set(summary["mean_dice"]) == set(summary["baseline_mean_dice"]) == {"transunet", "monai"}
    assert set(summary["step_seconds"]) >= {"teacher_image", "teacher_patch", "expert_image", "expert_patch",
                                           "expert_pixel", "finetune", "inference", "evaluate", "baseline_evaluate"}
    assert "RANDOM" in printed and "[13/13] summary figure" in printed and "[7/13] stage 1: pixel expert" in printed
    assert "liver" in printed and "total run time" in printed
    # every stage logged its losses, and the figure reads them back
    for name in ("teacher_image", "teacher_patch", "expert_image", "expert_patch", "expert_pixel", "finetune"):
        its, losses = read_loss_log(out / "logs" / f"{name}.log")
        assert len(its) >= 1 and np.all(np.isfinite(losses)), name


def test_read_loss_log_handles_progress_bars_and_epochs(tmp_path):
    log = tmp_path / "train.log"
    log.write_text(
        "2026-01-01 - INFO - Epoch: 1/2, Iter: 1/3 -- train_loss: 1.5000 \n"
        "Iteration: [1/3] 33%|###, loss=1.5\rIteration: [2/3]\r"
        "2026-01-01 - INFO - Epoch: 1/2, Iter: 3/3 -- train_loss: 1.2500 \r"
        "2026-01-01 - INFO - Epoch[1] Metrics -- val_mean_dice: 0.5000\n"
        "2026-01-01 - INFO - Epoch: 2/2, Iter: 2/3 -- train_loss: 8.0e-01 \n"
    )
    its, losses = read_loss_log(log)
    assert its.tolist() == [1, 3, 5]
    np.testing.assert_allclose(losses, [1.5, 1.25, 0.8])
    empty = tmp_path / "empty.log"
    empty.write_text("nothing here\n")
    assert read_loss_log(empty)[0].size == 0


def test_pick_slices_prefers_organ_rich_slices_spread_over_cases():
    a = np.zeros((8, 8, 10), np.uint8)
    a[..., 4] = 1
    a[:4, :4, 4] = 2  # slice 4: two organs
    a[..., 5] = 1  # next to 4: skipped (closer than 3 slices)
    a[..., 8] = 3
    b = np.zeros((8, 8, 6), np.uint8)
    b[..., 2] = 5
    assert pick_slices([a, b], 3) == [(0, 4), (1, 2), (0, 8)]


def test_failed_step_names_the_step_and_its_log(tmp_path, capsys):
    runner = DemoRunner(tmp_path, total=2)
    with pytest.raises(DemoStepError) as err:
        runner.command("broken", "stage 1: a failing step",
                       [sys.executable, "-c", "print('working...'); raise SystemExit(3)"])
    log = tmp_path / "logs" / "broken.log"
    assert "[1/2] 'stage 1: a failing step' failed (exit code 3)" in str(err.value) and str(log) in str(err.value)
    assert "working..." in log.read_text() and "working..." in capsys.readouterr().out


def test_missing_output_is_a_step_failure(tmp_path):
    runner = DemoRunner(tmp_path, total=1)
    with pytest.raises(DemoStepError, match="did not write"):
        runner.command("silent", "a step", [sys.executable, "-c", "pass"], expect=[tmp_path / "model.pt"])


def test_settings_and_checkpoint_selection(tmp_path, monkeypatch):
    quick, full = demo_settings(quick=True), demo_settings()
    assert quick.backbone == full.backbone == ["--variant", "tiny", "--random_init", "true"]
    assert np.prod(quick.shape) < np.prod(full.shape) and quick.finetune_epochs < full.finetune_epochs
    real = demo_settings(sam_checkpoint="/ckpt/sam_vit_b_01ec64.pth")
    assert real.backbone[:2] == ["--variant", "vit_b"] and real.img_size == 224 and not real.teacher_overrides
    monkeypatch.setenv("SAM_CHECKPOINT", str(tmp_path / "missing.pth"))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        run_demo(out=str(tmp_path / "out"))
