"""The demo's results: one record per compared run and the printed summary (per-organ table, epochs to the
baseline's Dice, timings, files)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from samora_monai.apps.demo_settings import RUNS

__all__ = ["format_table", "print_summary", "run_summary"]


def run_summary(comparison: dict[str, Any], name: str) -> dict[str, Any]:
    """The figures of run ``name`` of a :func:`~samora_monai.apps.compare.compare` result: test Dice / HD95 (mean
    and per organ, TransUNet convention), the validation curve, trainable parameters and epochs to reach the
    baseline's final validation Dice."""
    row = next(r for r in comparison["rows"] if r["run"] == name)
    run = comparison["runs"][name]
    per_class = run["metrics"]["per_class"]
    return {
        "title": RUNS[name].title if name in RUNS else name,
        "mean_dice": row["mean_dice"],
        "mean_hd95": row["mean_hd95"],
        "dice": {organ: values["dice"] for organ, values in per_class.items()},
        "hd95": {organ: values["hd95"] for organ, values in per_class.items()},
        "hd95_units": run["metrics"]["hd95_units"],
        "validation_dice": [[epoch, dice] for epoch, dice, _ in run["curve"] if dice is not None],
        "final_val_dice": row["final_val_dice"],
        "epoch_reaching_baseline": row["epoch_reaching_baseline"],
        "epochs": row["epochs"],
        "trainable_params": row["trainable_params"],
        "wall_s_per_epoch": round(row["wall_s_per_epoch"], 2),
        "folder": run["dir"],
    }


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_table(runs: dict[str, dict[str, Any]]) -> str:
    """Per-organ test Dice, one column per run, then mean Dice, mean HD95 and trainable parameters."""
    titles = [r["title"] for r in runs.values()]
    width = max(14, *(len(t) + 2 for t in titles))
    head = f"{'organ':<16}" + "".join(f"{t:>{width}}" for t in titles)
    organs = list(next(iter(runs.values()))["dice"])
    lines = [head, "-" * len(head)]
    lines += [f"{o:<16}" + "".join(f"{_fmt(r['dice'][o]):>{width}}" for r in runs.values()) for o in organs]
    lines.append("-" * len(head))
    lines.append(f"{'mean Dice':<16}" + "".join(f"{_fmt(r['mean_dice']):>{width}}" for r in runs.values()))
    units = next(iter(runs.values()))["hd95_units"]
    lines.append(f"{'mean HD95 (' + units + ')':<16}" + "".join(f"{_fmt(r['mean_hd95'], 2):>{width}}"
                                                               for r in runs.values()))
    lines.append(f"{'trainable':<16}" + "".join(f"{r['trainable_params']:>{width},}" for r in runs.values()))
    return "\n".join(lines)


def print_summary(result: dict[str, Any], held_out: Sequence[str], summary_path: Path) -> None:
    """Print the demo's results (``result`` is the content of ``demo_summary.json``)."""
    runs, baseline = result["runs"], result["runs"][result["baseline"]]
    print(f"\n{'=' * 100}\nResults on the {len(held_out)} held-out phantom cases ({', '.join(held_out)}), test Dice "
          f"per organ (TransUNet/SAMed convention); backbone: {result['backbone']}\n{result['backbone_note']}\n")
    print(format_table(runs))
    target = baseline["final_val_dice"]
    print(f"\nEpochs to reach the {baseline['title']} baseline's final validation Dice ({_fmt(target)} after "
          f"{baseline['epochs']} epochs; validation every {result['settings']['val_interval']} epochs):")
    for r in runs.values():
        reach = r["epoch_reaching_baseline"]
        when = "never" if reach is None else f"epoch {reach} ({100 * reach / baseline['epochs']:.0f}% of its epochs)"
        print(f"  {r['title']:<12} {when}; final validation Dice {_fmt(r['final_val_dice'])}")
    print("\nThe same data, label budget, epochs and optimiser settings for every run; the phantom is not real CT "
          "and the backbone is not real SAM: these figures check the pipeline, not the paper's numbers.")
    total = result["seconds"]
    print(f"\ntotal run time: {total / 60:.1f} min ({total:.0f} s); per step: "
          + ", ".join(f"{k} {v:.0f} s" for k, v in result["step_seconds"].items()))
    print("\nwritten:")
    for key, value in {**result["written"], "summary": str(summary_path)}.items():
        for v in value if isinstance(value, list) else [value]:
            print(f"  {key:<17} {v}")
