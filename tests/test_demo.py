"""The shortened demo end to end (tiny phantom, stand-in backbone, every workflow through the bundle CLI, the three
compared runs) twice, plus the pieces of the demo that can be checked without it (label budget, loss-log parsing,
slice choice, failure reporting, parallel steps)."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from samora_monai.apps.demo import DemoStepError, demo_settings, run_demo
from samora_monai.apps.demo_steps import DemoRunner, DemoStep, few_shot_slices
from samora_monai.apps.figures import pick_slices, read_loss_log

ORGANS = ["spleen", "right_kidney", "left_kidney", "gallbladder", "liver", "stomach", "aorta", "pancreas"]


RUNS = ["train", "samed", "no_stage1"]


def _numbers(summary: dict) -> dict:
    """Every figure of a demo summary that training and evaluation produce."""
    keys = ("mean_dice", "mean_hd95", "dice", "hd95", "validation_dice", "epoch_reaching_baseline")
    return {name: {k: run[k] for k in keys} for name, run in summary["runs"].items()}


@pytest.mark.slow
def test_quick_demo_compares_the_runs_and_a_rerun_gives_identical_numbers(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("SAMORA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SAM_CHECKPOINT", raising=False)
    out = tmp_path / "demo"
    summary_path = Path(run_demo(out=str(out), quick=True))
    printed = capsys.readouterr().out

    (standin_file,) = (tmp_path / "cache").glob("standin_tiny_64_*.pth")  # pre-trained once, into the cache
    bundle, compare = out / "bundle", out / "compare"
    expected = [
        bundle / "models/teachers/image.pt", bundle / "models/teachers/patch.pt",
        *(bundle / f"models/experts/{level}.pt" for level in ("image", "patch", "pixel")),
        compare / "comparison.csv", compare / "comparison.md", compare / "dice_vs_epoch.png",
        *(compare / run / f for run in RUNS for f in ("models/model.pt", "models/model_meta.json",
                                                      "train/learning_curve.csv", "test/metrics_transunet.json",
                                                      "test/predictions/img0001_seg.nii.gz")),
        bundle / "models/model.pt", out / "demo_summary.png", summary_path,
    ]
    assert [str(p) for p in expected if not p.is_file()] == []
    assert (out / "demo_summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (bundle / "models/model.pt").read_bytes() == (compare / "train/models/model.pt").read_bytes()

    # the label budget: 4 annotated slices per training case, all with foreground; one validation case that never
    # reaches stage 1; the held-out case only in `testing`
    split = json.loads((out / "data/demo_datalist.json").read_text())
    assert [len(item["slices"]) for item in split["training"]] == [4, 4]
    assert [Path(i["image"]).name for i in split["validation"]] == ["img0007.nii.gz"]
    assert [Path(i["image"]).name for i in split["testing"]] == ["img0001.nii.gz"]
    slices = json.loads((bundle / "data/unlabeled/unlabeled_datalist.json").read_text())["training"]
    assert sorted({Path(item["source"]).name for item in slices}) == ["img0005.nii.gz", "img0006.nii.gz",
                                                                      "img0061.nii.gz"]

    # every run trained on the stand-in backbone, with the same budget; SAMora on the three experts stage 1 wrote,
    # the ablation without them, SAMed with one LoRA and no HL-Attn
    rows = {r["run"]: r for r in csv.DictReader(open(compare / "comparison.csv"))}
    assert list(rows) == RUNS and len({r["epochs"] for r in rows.values()}) == 1
    metas = {run: json.loads((compare / run / "models/model_meta.json").read_text()) for run in RUNS}
    assert {m["sam_checkpoint"] for m in metas.values()} == {standin_file.name}
    assert (bundle / "models" / standin_file.name).read_bytes() == standin_file.read_bytes()  # a complete bundle
    assert {lv: Path(f).name for lv, f in metas["train"]["training"]["stage1_experts"].items()} == {
        lv: f"{lv}.pt" for lv in ("image", "patch", "pixel")}
    assert metas["train"]["training"]["ablation"] is None and metas["no_stage1"]["training"]["ablation"]
    assert metas["no_stage1"]["training"]["stage1_experts"] == {}
    assert int(rows["train"]["trainable_params"]) == int(rows["no_stage1"]["trainable_params"])
    assert int(rows["train"]["trainable_params"]) > int(rows["samed"]["trainable_params"])
    assert {m["training"]["model_selection"] for m in metas.values()} == {"last epoch"}

    summary = json.loads(summary_path.read_text())
    assert "stand-in" in summary["backbone"] and "NOT SAM" in summary["backbone"] and summary["quick"] is True
    assert list(summary["runs"]) == RUNS and summary["baseline"] == "samed"
    for name, run in summary["runs"].items():
        test = json.loads((compare / name / "test/metrics_transunet.json").read_text())
        assert run["mean_dice"] == test["mean_dice"] and list(run["dice"]) == ORGANS
        assert all(0.0 <= run["dice"][o] <= 1.0 for o in ORGANS)
        assert [e for e, _ in run["validation_dice"]] == [1, 2]
    assert "NOT Segment Anything" in printed and "stand-in" in printed
    assert "Epochs to reach the SAMed baseline's final validation Dice" in printed and "no stage 1" in printed
    assert "total run time" in printed
    for name in ("teacher_image", "teacher_patch", "expert_image", "expert_patch", "expert_pixel"):
        its, losses = read_loss_log(out / "logs" / f"{name}.log")
        assert len(its) >= 1 and np.all(np.isfinite(losses)), name

    # a rerun (stand-in now cached) gives the same numbers
    again = json.loads(Path(run_demo(out=str(tmp_path / "again"), quick=True)).read_text())
    assert "cached: " + str(standin_file) in capsys.readouterr().out
    assert _numbers(again) == _numbers(summary)


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
    assert quick.backbone == full.backbone == ["--variant", "tiny", "--random_init", "false"]  # + the stand-in
    assert demo_settings(backbone="random").backbone == ["--variant", "tiny", "--random_init", "true"]
    assert np.prod(quick.shape) < np.prod(full.shape) and quick.finetune_epochs < full.finetune_epochs
    real = demo_settings(sam_checkpoint="/ckpt/sam_vit_b_01ec64.pth")
    assert real.backbone[:2] == ["--variant", "vit_b"] and real.img_size == 224 and not real.teacher_overrides
    with pytest.raises(ValueError, match="random"):
        demo_settings(backbone="sam")
    monkeypatch.setenv("SAM_CHECKPOINT", str(tmp_path / "missing.pth"))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        run_demo(out=str(tmp_path / "out"))


def test_few_shot_slices_spread_over_the_foreground(tmp_path):
    label = np.zeros((4, 4, 20), np.uint8)
    label[1, 1, 3:15] = 1  # foreground on slices 3..14
    path = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(label, np.eye(4)), path)
    assert few_shot_slices(path, 4) == [3, 7, 10, 14]
    assert few_shot_slices(path, None) == list(range(3, 15)) == few_shot_slices(path, 50)


def test_parallel_steps_start_by_priority_with_their_own_log_and_folder(tmp_path):
    order = tmp_path / "order.txt"
    sub = tmp_path / "sub"
    sub.mkdir()

    def append(tag):
        code = f"import os; open({str(order)!r}, 'a').write({tag!r} + ' ' + os.getcwd() + '\\n')"
        return [sys.executable, "-c", code]

    runner = DemoRunner(tmp_path, total=3)
    own_log = tmp_path / "runs" / "b" / "train.log"
    runner.run_parallel([DemoStep("a", "first ready", append("a")),
                         DemoStep("b", "second ready", append("b"), log=own_log, cwd=sub),
                         DemoStep("c", "after a", append("c"), after=["a"])], parallel=1)  # fmt: skip
    # one at a time, the ready steps in list order: c waits for a but is listed after b
    assert order.read_text().splitlines() == [f"a {tmp_path}", f"b {sub}", f"c {tmp_path}"]
    assert own_log.read_text().startswith(sys.executable) and not (tmp_path / "logs" / "b.log").exists()
    assert (tmp_path / "logs" / "a.log").is_file()


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="CPU priority (nice) is POSIX only")
def test_background_step_runs_at_lower_cpu_priority(tmp_path):
    seen = tmp_path / "nice.txt"
    own = os.getpriority(os.PRIO_PROCESS, 0)
    # the step waits (up to 10 s) until its parent has lowered its priority, then records it
    code = (f"import os, time\nend = time.time() + 10\nwhile os.getpriority(os.PRIO_PROCESS, 0) == {own} and "
            f"time.time() < end:\n    time.sleep(0.01)\n"
            f"open({str(seen)!r}, 'w').write(str(os.getpriority(os.PRIO_PROCESS, 0)))")
    runner = DemoRunner(tmp_path, total=2)
    runner.run_parallel([DemoStep("background", "niced", [sys.executable, "-c", code], nice=5),
                         DemoStep("foreground", "not niced", [sys.executable, "-c", "pass"])], parallel=2)
    assert int(seen.read_text()) == min(own + 5, 19)


def test_parallel_steps_respect_their_order_and_stop_on_failure(tmp_path, capsys):
    marker = tmp_path / "first.txt"
    write = [sys.executable, "-c", f"import time; time.sleep(0.5); open({str(marker)!r}, 'w').write('x')"]
    check = [sys.executable, "-c", f"import os; assert os.path.exists({str(marker)!r})"]
    runner = DemoRunner(tmp_path, total=3)
    runner.run_parallel([DemoStep("second", "needs first", check, after=["first"]),
                         DemoStep("first", "writes", write, expect=[marker])], parallel=2)
    assert set(runner.timings) == {"first", "second"}
    slow = [sys.executable, "-c", "import time; time.sleep(60)"]
    fail = [sys.executable, "-c", "raise SystemExit(4)"]
    with pytest.raises(DemoStepError, match="failed .exit code 4.") as err:
        runner.run_parallel([DemoStep("slow", "slow", slow), DemoStep("fail", "fails", fail)], parallel=2)
    assert str(tmp_path / "logs" / "fail.log") in str(err.value)
    assert "slow" not in runner.timings  # stopped, not waited for
    with pytest.raises(ValueError, match="never run"):
        runner.run_parallel([DemoStep("orphan", "waits", check, after=["missing"])])
