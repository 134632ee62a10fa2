"""Train several bundle overlays on the same data and budget, evaluate each on the same test cases, and tabulate.

``python -m samora_monai compare --bundle bundles/samora_synapse --overlays "['train','samed','hsamora']"
--output_dir runs/cmp --epochs 20 --datalist data.json`` runs, for every overlay, through the real MONAI CLI:

1. ``python -m monai.bundle run training`` with ``configs/train.yaml`` + the overlay + a layer that appends a
   :class:`~samora_monai.handlers.LearningCurveWriter` (``<run>/train/learning_curve.csv``, ``run_info.json``);
2. ``python -m monai.bundle run evaluating`` with the same configs + ``configs/evaluate.yaml`` on the saved
   ``<run>/models/model.pt`` (``<run>/test/metrics_<mode>.json``).

Then writes ``comparison.csv``, ``comparison.md`` (per-class and mean Dice/HD95, trainable parameters, epochs,
training wall time per epoch) and ``dice_vs_epoch.png`` (validation Dice per epoch, one curve per run), and reports
when each run first reaches the baseline's final validation Dice, as a percentage of the baseline's epochs.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import subprocess
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from samora_monai.apps.stage1_pipeline import bundle_command
from samora_monai.handlers.learning_curve import CURVE_FILE, INFO_FILE

__all__ = ["PlannedRun", "compare", "epochs_to_reach", "load_run", "overlay_files", "plan_runs", "run_bundle_command",
           "tabulate"]

logger = logging.getLogger(__name__)

_ERROR = re.compile(r"^[\w.]+(Error|Exception|Interrupt)\b")


def overlay_files(bundle: Path, overlay: str) -> tuple[str, list[Path]]:
    """``(run name, config files)``: ``"train"`` is train.yaml alone; a name is ``configs/<name>.yaml`` of the
    bundle; anything else is a path to an overlay file. Raises ``FileNotFoundError`` naming the missing file."""
    train = bundle / "configs" / "train.yaml"
    if overlay == "train":
        files = [train]
    else:
        path = Path(overlay) if overlay.endswith((".yaml", ".yml", ".json")) else bundle / "configs" / f"{overlay}.yaml"
        files = [train, path]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"overlay {overlay!r}: config file not found: {f}")
    return Path(files[-1]).stem, files


@dataclass
class PlannedRun:
    """One compared run: its folder and its two bundle commands, each ``(workflow, command, log file)``; the
    training writes ``<run_dir>/models/model.pt``, the evaluation ``<run_dir>/test``."""

    name: str
    run_dir: Path
    commands: list[tuple[str, list[str], Path]]


def _override_args(overrides: Mapping[str, Any]) -> list[str]:
    """``{"key": value}`` -> ``["--key", "value", ...]``; a value that is not a string is given as its ``repr``."""
    args = []
    for key, value in overrides.items():
        args += [f"--{key}", value if isinstance(value, str) else repr(value)]
    return args


def run_bundle_command(
    workflow: str, cmd: Sequence[str], log: Path, cwd: Path, env: Mapping[str, str] | None = None
) -> None:
    """Run a bundle command with its output in ``log``; a failure raises ``RuntimeError`` naming the log and quoting
    the exception chain."""
    with open(log, "w") as f:
        result = subprocess.run(list(cmd), cwd=cwd, stdout=f, stderr=subprocess.STDOUT, text=True,
                                env=None if env is None else dict(env))
    if result.returncode != 0:
        errors = [line for line in log.read_text().splitlines() if _ERROR.match(line)]  # the exception chain
        raise RuntimeError(f"{workflow} failed (exit {result.returncode}); full log: {log}\n" + "\n".join(errors))


def _plan_run(
    name: str, files: Sequence[Path], run_dir: Path, bundle_dir: Path, common: Mapping[str, Any]
) -> PlannedRun:
    """Create ``run_dir`` with the layer that appends the learning-curve writer, and the run's two commands."""
    run_dir.mkdir(parents=True)
    layer = run_dir / "learning_curve.yaml"
    layer.write_text(
        "+train#handlers:\n  - _target_: samora_monai.handlers.LearningCurveWriter\n"
        "    output_dir: '@output_dir'\n    evaluator: '@validate#evaluator'\n"
    )
    paths = {**common, "ckpt_dir": str(run_dir / "models"), "resume_checkpoint": "$None"}
    train = bundle_command("training", [*files, layer], bundle_dir,
                           _override_args({**paths, "output_dir": str(run_dir / "train")}))
    evaluate = bundle_command("evaluating", [*files, bundle_dir / "configs" / "evaluate.yaml"], bundle_dir,
                              _override_args({**paths, "output_dir": str(run_dir / "test")}))
    return PlannedRun(name, run_dir, [("training", train, run_dir / "train.log"),
                                      ("evaluating", evaluate, run_dir / "evaluate.log")])


def plan_runs(
    bundle: str, overlays: Sequence[str], output_dir: str, baseline: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[str, dict[str, PlannedRun]]:
    """``(baseline, runs)``: check the overlays and the output folder and create one folder per run with its
    commands, every run with the same bundle ``overrides`` (see :func:`compare`); nothing runs yet."""
    bundle_dir, out = Path(bundle).resolve(), Path(output_dir).resolve()
    overlays = [overlays] if isinstance(overlays, str) else list(overlays)
    resolved = dict(overlay_files(bundle_dir, o) for o in overlays)
    if len(resolved) != len(overlays):
        raise ValueError(f"overlays {list(overlays)} repeat a run name")
    baseline = baseline or next(iter(resolved))
    if baseline not in resolved:
        raise ValueError(f"baseline {baseline!r} is not one of the runs {list(resolved)}")
    taken = [name for name in resolved if (out / name).exists()]
    if taken:
        raise FileExistsError(f"{out} already holds runs {taken}; choose another output_dir")
    common = {"expert_dir": str(bundle_dir / "models" / "experts"), **(overrides or {})}
    return baseline, {name: _plan_run(name, files, out / name, bundle_dir, common) for name, files in resolved.items()}


def _execute(run: PlannedRun, cwd: Path, env: Mapping[str, str] | None) -> None:
    """Train, then evaluate, one planned run."""
    start = time.perf_counter()
    for workflow, cmd, log in run.commands:
        print(f"compare: {workflow} {run.name} (log: {log})", flush=True)
        run_bundle_command(workflow, cmd, log, cwd, env)
    print(f"compare: {run.name} done in {time.perf_counter() - start:.0f} s", flush=True)


def load_run(run_dir: Path, mode: str = "transunet") -> dict[str, Any]:
    """A finished run's numbers from its files: ``info`` (run_info.json), ``curve`` ([(epoch, val Dice or None,
    train seconds)]) and ``metrics`` (the evaluation's ``metrics_<mode>.json``)."""
    train, test = run_dir / "train", run_dir / "test"
    for path in (train / INFO_FILE, train / CURVE_FILE, test / f"metrics_{mode}.json"):
        if not path.is_file():
            raise FileNotFoundError(f"run {run_dir.name}: missing {path}")
    with open(train / CURVE_FILE, newline="") as f:
        curve = [
            (int(r["epoch"]), float(r["val_metric"]) if r["val_metric"] else None, float(r["train_time_s"]))
            for r in csv.DictReader(f)
        ]
    return {
        "info": json.loads((train / INFO_FILE).read_text()),
        "curve": curve,
        "metrics": json.loads((test / f"metrics_{mode}.json").read_text()),
    }


def epochs_to_reach(curve: Sequence[tuple[int, float | None, float]], target: float) -> int | None:
    """The first epoch whose validation Dice is >= ``target`` (None if never)."""
    return next((e for e, dice, _ in curve if dice is not None and dice >= target), None)


def _fmt(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def _rows(runs: Mapping[str, dict], baseline: str) -> list[dict[str, Any]]:
    base_curve = runs[baseline]["curve"]
    base_dice = [d for _, d, _ in base_curve if d is not None]
    target = base_dice[-1] if base_dice else None
    rows = []
    for name, run in runs.items():
        metrics, curve = run["metrics"], run["curve"]
        reach = epochs_to_reach(curve, target) if target is not None else None
        row = {
            "run": name,
            "epochs": len(curve),
            "trainable_params": run["info"]["trainable"],
            "wall_s_per_epoch": sum(t for _, _, t in curve) / max(len(curve), 1),
            "mean_dice": metrics["mean_dice"],
            "mean_hd95": metrics["mean_hd95"],
        }
        for cls, values in metrics["per_class"].items():
            row[f"dice_{cls}"], row[f"hd95_{cls}"] = values["dice"], values["hd95"]
        row["final_val_dice"] = next((d for _, d, _ in reversed(curve) if d is not None), None)
        row["epoch_reaching_baseline"] = reach
        row["pct_of_baseline_epochs"] = None if reach is None else 100.0 * reach / len(base_curve)
        rows.append(row)
    return rows


def _write_tables(rows: list[dict[str, Any]], output_dir: Path, baseline: str) -> tuple[Path, Path]:
    fields = list(rows[0])
    csv_path, md_path = output_dir / "comparison.csv", output_dir / "comparison.md"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)
    lines = [
        f"Baseline: `{baseline}`; `epoch_reaching_baseline`: first epoch whose validation Dice reaches the baseline's "
        "final validation Dice; test Dice/HD95 from each run's evaluation.",
        "",
        "| " + " | ".join(fields) + " |",
        "|" + "---|" * len(fields),
    ]
    lines += ["| " + " | ".join(_fmt(r[k]) for k in fields) + " |" for r in rows]
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def _plot(runs: Mapping[str, dict], baseline: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, run in runs.items():
        points = [(e, d) for e, d, _ in run["curve"] if d is not None]
        ax.plot([e for e, _ in points], [d for _, d in points], marker="o", label=name)
    final = [d for _, d, _ in runs[baseline]["curve"] if d is not None]
    if final:
        ax.axhline(final[-1], color="grey", linestyle="--", label=f"{baseline} final")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel="validation mean Dice", title="Dice versus epoch")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def tabulate(runs: Mapping[str, PlannedRun], baseline: str, output_dir: str, metric_mode: str = "transunet") -> dict:
    """Read the finished ``runs``, write ``comparison.csv|md`` and ``dice_vs_epoch.png`` into ``output_dir`` and print
    when each run reaches the ``baseline``'s final validation Dice. Returns what :func:`compare` returns."""
    out = Path(output_dir).resolve()
    loaded = {name: load_run(run.run_dir, metric_mode) for name, run in runs.items()}
    rows = _rows(loaded, baseline)
    csv_path, md_path = _write_tables(rows, out, baseline)
    plot = _plot(loaded, baseline, out / "dice_vs_epoch.png")
    for row in rows:
        pct = row["pct_of_baseline_epochs"]
        print(
            f"{row['run']}: reaches {baseline}'s final validation Dice "
            + ("never" if pct is None else f"at epoch {row['epoch_reaching_baseline']} ({pct:.1f}% of its epochs)")
        )
    print(f"table: {csv_path}, {md_path}; plot: {plot}")
    return {"rows": rows, "csv": str(csv_path), "markdown": str(md_path), "plot": str(plot),
            "runs": {name: {**loaded[name], "dir": str(run.run_dir)} for name, run in runs.items()}}


def compare(
    bundle: str,
    overlays: Sequence[str],
    output_dir: str,
    epochs: int | None = None,
    datalist: str | None = None,
    dataset_dir: str | None = None,
    baseline: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    metric_mode: str = "transunet",
    parallel: int = 1,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Train and evaluate every overlay of ``bundle`` with the same ``datalist``/``dataset_dir``, ``epochs`` (None:
    each overlay's own recipe) and ``overrides`` (e.g. ``{"variant": "tiny"}``), one folder per run under
    ``output_dir`` (which must not hold these runs yet); then write the table and the plot.

    ``baseline`` (default: the first overlay) sets the target Dice; ``parallel`` runs that many overlays at once
    (each a process of its own; give each ``OMP_NUM_THREADS`` cores through ``env``, the environment of the runs).
    Returns the table rows, the output paths and ``runs`` (each run's curve, metrics and folder).
    """
    shared = {k: v for k, v in {"epochs": epochs, "datalist": datalist, "dataset_dir": dataset_dir}.items() if v}
    baseline, runs = plan_runs(bundle, overlays, output_dir, baseline, {**shared, **(overrides or {})})
    cwd = Path(bundle).resolve()
    with ThreadPoolExecutor(max_workers=max(1, int(parallel))) as pool:  # each run is its own process
        futures = [pool.submit(_execute, run, cwd, env) for run in runs.values()]
        for future in futures:
            future.result()  # the first failure, in run order
    return tabulate(runs, baseline, output_dir, metric_mode)
