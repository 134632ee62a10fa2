"""The comparison runner through the real MONAI bundle CLI: two overlays (SAMed, H-SAMora) on the tiny backbone, two
epochs on generated NIfTI cases; the table and the plot must match the per-run files."""

import csv
import json
import math

import pytest

from samora_monai.apps.compare import compare, epochs_to_reach, overlay_files
from samora_monai.cli import COMMANDS

pytestmark = pytest.mark.slow

TINY = {"variant": "tiny", "img_size": 32, "random_init": True, "batch_size": 4, "num_workers": 0,
        "slice_batch_size": 8, "warmup_iters": 2, "allow_missing_experts": True}  # fmt: skip


def _close(a, b):
    return (a is None and b == "") or math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)


def test_compare_two_overlays(tmp_path, capsys, bundles, write_json_datalist, write_nifti_cases):
    items = write_nifti_cases(tmp_path / "data", n=5)  # validation and test cases disjoint from training and each other
    datalist = write_json_datalist(tmp_path / "dl.json", training=items[:2], validation=items[2:3], testing=items[3:])
    out = tmp_path / "cmp"
    result = compare(str(bundles["synapse"]), ["samed", "hsamora"], str(out), epochs=2, datalist=datalist,
                     overrides=TINY)  # fmt: skip
    printed = capsys.readouterr().out

    rows = list(csv.DictReader(open(out / "comparison.csv")))
    assert [r["run"] for r in rows] == ["samed", "hsamora"]
    md = (out / "comparison.md").read_text().splitlines()
    assert sum(line.startswith(("| samed |", "| hsamora |")) for line in md) == 2
    assert (out / "dice_vs_epoch.png").stat().st_size > 5000

    curves = {}
    for row in rows:
        run = out / row["run"]
        test = json.loads((run / "test" / "metrics_transunet.json").read_text())
        info = json.loads((run / "train" / "run_info.json").read_text())
        curve = list(csv.DictReader(open(run / "train" / "learning_curve.csv")))
        curves[row["run"]] = curve
        assert test["num_cases"] == 2 and info["max_epochs"] == 2 and (run / "models" / "model.pt").is_file()
        assert [int(c["epoch"]) for c in curve] == [1, 2] and all(c["val_metric"] for c in curve)
        assert int(row["epochs"]) == 2 and int(row["trainable_params"]) == info["trainable"] > 0
        assert _close(sum(float(c["train_time_s"]) for c in curve) / 2, row["wall_s_per_epoch"])
        assert _close(test["mean_dice"], row["mean_dice"]) and _close(test["mean_hd95"], row["mean_hd95"])
        for cls, values in test["per_class"].items():
            assert _close(values["dice"], row[f"dice_{cls}"]) and _close(values["hd95"], row[f"hd95_{cls}"])
        assert _close(float(curve[-1]["val_metric"]), row["final_val_dice"])
    # different recipes train different parameter sets: SAMed one LoRA + decoder, H-SAMora HL-Attn + two decoders
    assert rows[0]["trainable_params"] != rows[1]["trainable_params"]
    # "reaches the baseline's final Dice in X% of its epochs", recomputed from the curves
    target = float(curves["samed"][-1]["val_metric"])
    for row in rows:
        curve = [(int(c["epoch"]), float(c["val_metric"]), 0.0) for c in curves[row["run"]]]
        reach = epochs_to_reach(curve, target)
        assert row["epoch_reaching_baseline"] == ("" if reach is None else str(reach))
        assert row["pct_of_baseline_epochs"] == ("" if reach is None else str(100.0 * reach / 2))
    assert rows[0]["epoch_reaching_baseline"] in ("1", "2")  # the baseline always reaches its own final Dice
    assert "samed: reaches samed's final validation Dice at epoch" in printed and "hsamora: reaches" in printed
    assert result["csv"] == str(out / "comparison.csv")

    with pytest.raises(FileExistsError, match="samed"):
        compare(str(bundles["synapse"]), ["samed"], str(out), epochs=1, datalist=datalist, overrides=TINY)


def test_compare_failed_run_names_its_log(tmp_path, bundles, write_json_datalist, write_nifti_cases):
    bad = tmp_path / "bad.yaml"
    bad.write_text("network_def#decoder: nosuch\n")
    items = write_nifti_cases(tmp_path / "data", n=2)
    datalist = write_json_datalist(tmp_path / "dl.json", training=items[:1], validation=items[1:])
    with pytest.raises(RuntimeError, match=r"training failed .*bad[/\\]train.log") as err:
        compare(str(bundles["synapse"]), str(bad), str(tmp_path / "cmp"), epochs=1, datalist=datalist, overrides=TINY)
    assert "nosuch" in str(err.value)


def test_compare_rejects_missing_overlay_and_registers_cli(bundles):
    with pytest.raises(FileNotFoundError, match="nosuch.yaml"):
        overlay_files(bundles["synapse"], "nosuch")
    assert overlay_files(bundles["synapse"], "train")[0] == "train"
    assert COMMANDS["compare"] == "samora_monai.apps.compare:compare"
