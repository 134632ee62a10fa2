"""The machinery of the demo's steps: numbered, logged subprocess steps (one at a time or in parallel) and the demo's
few-shot datalist."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from samora_monai.apps.stage1_pipeline import check_step, pipeline_env, run_checked
from samora_monai.utils import atomic_output

__all__ = ["DemoRunner", "DemoStep", "DemoStepError", "few_shot_slices", "write_split"]


class DemoStepError(RuntimeError):
    """A demo step exited with an error; the message names the step and its log file."""


_PROGRESS = re.compile(rb"Epoch: \d+/\d+, Iter: \d+/\d+")


@dataclass
class DemoStep:
    """One subprocess step: it starts once the steps named in ``after`` have finished; its output goes to ``log``
    (default ``<out>/logs/<name>.log``), it runs in ``cwd`` (default ``<out>``) and, with ``nice`` > 0 (POSIX), at a
    lower CPU priority: a background step that uses the cores the others leave idle."""

    name: str
    title: str
    cmd: Sequence[str]
    expect: Sequence[Path] = ()
    after: Sequence[str] = ()
    log: Path | None = None
    cwd: Path | None = None
    nice: int = 0


class DemoRunner:
    """Numbered step headers, subprocess streaming to the terminal and a per-step log file, timings."""

    def __init__(self, out: Path, total: int, num_threads: int = 1):
        self.out, self.total, self.index, self.num_threads = out, total, 0, num_threads
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.timings: dict[str, float] = {}

    def header(self, name: str, title: str) -> None:
        self.index += 1
        print(f"\n{'=' * 100}\n[{self.index}/{self.total}] {title}\n{'=' * 100}", flush=True)
        self.current = name

    def done(self, name: str, seconds: float) -> None:
        self.timings[name] = round(seconds, 1)
        print(f"[{self.index}/{self.total}] done in {seconds:.1f} s", flush=True)

    def command(
        self, name: str, title: str, cmd: Sequence[str], expect: Sequence[Path] = (), num_threads: int | None = None
    ) -> Path:
        """Run ``cmd`` streaming its bytes (progress bars included) to stdout and ``logs/<name>.log``, with
        ``num_threads`` PyTorch threads (default: the runner's)."""
        self.header(name, title)
        log = self.logs / f"{name}.log"
        start = time.perf_counter()
        label = f"demo step [{self.index}/{self.total}] {title!r}"
        env = pipeline_env(num_threads or self.num_threads)
        run_checked(label, cmd, log, self.out, env, expect, DemoStepError)
        self.done(name, time.perf_counter() - start)
        return log

    def log_file(self, step: DemoStep) -> Path:
        """Where ``step`` writes its output."""
        return step.log or self.logs / f"{step.name}.log"

    def run_parallel(self, steps: Sequence[DemoStep], parallel: int = 2, report_every: float = 30.0) -> None:
        """Run ``steps``, at most ``parallel`` at once, each after its ``after`` steps, the first ready ones first
        (list them in order of priority); their output goes to their log files only, the terminal gets a line when a
        step starts or ends and, every ``report_every`` seconds, the last progress line of each running step. A
        failure stops the others and raises :class:`DemoStepError` naming the step and its log."""
        pending, running, finished = list(steps), {}, set()
        env, last_report = pipeline_env(self.num_threads), time.perf_counter()
        try:
            while pending or running:
                ready = [s for s in pending if set(s.after) <= finished]
                if not ready and not running:
                    raise ValueError(f"steps {[s.name for s in pending]} wait for steps that never run")
                for step in ready[: max(1, parallel) - len(running)]:
                    pending.remove(step)
                    path = self.log_file(step)
                    self.header(step.name, f"{step.title} (log: {path})")
                    path.parent.mkdir(parents=True, exist_ok=True)
                    log = open(path, "wb")
                    log.write((" ".join(step.cmd) + "\n").encode())
                    log.flush()
                    proc = subprocess.Popen(list(step.cmd), cwd=step.cwd or self.out, env=env, stdout=log,
                                            stderr=subprocess.STDOUT)
                    if step.nice and hasattr(os, "setpriority"):
                        with contextlib.suppress(ProcessLookupError):  # a step that has already ended
                            niceness = os.getpriority(os.PRIO_PROCESS, proc.pid) + step.nice
                            os.setpriority(os.PRIO_PROCESS, proc.pid, min(niceness, 19))
                    running[step.name] = (step, proc, log, self.index, time.perf_counter())
                time.sleep(0.2)
                for name, (step, proc, log, index, start) in list(running.items()):
                    if proc.poll() is None:
                        continue
                    log.close()
                    del running[name]
                    label = f"demo step [{index}/{self.total}] {step.title!r}"
                    check_step(label, proc.returncode, self.log_file(step), step.expect, DemoStepError)
                    finished.add(name)
                    self.timings[name] = round(time.perf_counter() - start, 1)
                    print(f"[{index}/{self.total}] {step.title}: done in {self.timings[name]:.1f} s", flush=True)
                if running and time.perf_counter() - last_report > report_every:
                    last_report = time.perf_counter()
                    for name, (step, *_) in running.items():
                        found = _PROGRESS.findall(self.log_file(step).read_bytes())
                        print(f"  ... {name}: " + (found[-1].decode() if found else "starting"), flush=True)
        finally:
            for _, proc, log, _, _ in running.values():
                proc.kill()
                proc.wait()
                log.close()


def few_shot_slices(label: str | Path, count: int | None) -> list[int]:
    """``count`` axial slice indices spread evenly over the slices of ``label`` (a NIfTI label volume) that hold
    foreground: the demo's label budget per training case. ``None``: every foreground slice."""
    import nibabel as nib
    import numpy as np

    from samora_monai.data.slices import select_slices

    volume = np.asarray(nib.load(str(label)).dataobj)[None]  # [1, X, Y, Z]
    indices = np.asarray(select_slices(volume, volume, foreground_only=True), dtype=int)
    if count is None or count >= len(indices):
        return indices.tolist()
    return indices[np.linspace(0, len(indices) - 1, count).round().astype(int)].tolist()


def write_split(data_dir: Path, phantom: dict, num_val: int, labelled_slices: int | None) -> Path:
    """``demo_datalist.json``: ``training`` = the labelled training cases, each with the ``slices`` of the label
    budget (:func:`few_shot_slices`), ``validation`` = the last ``num_val`` of them (whole volumes, for the
    Dice-versus-epoch curves only: the demo keeps the last-epoch model), ``testing`` = the held-out cases,
    ``unlabeled`` = the phantom's unlabeled images (training and unlabeled cases) less the validation cases."""
    source = json.loads(Path(phantom["dataset_json"]).read_text())
    labelled = source["training"]
    train, val = labelled[: len(labelled) - num_val], labelled[len(labelled) - num_val:]
    train = [{**item, "slices": few_shot_slices(data_dir / item["label"], labelled_slices)} for item in train]
    path = data_dir / "demo_datalist.json"
    with atomic_output(path) as tmp:
        unlabeled = [item for item in source["unlabeled"] if item["image"] not in {v["image"] for v in val}]
        split = {"training": train, "validation": val, "testing": source["testing"], "unlabeled": unlabeled}
        tmp.write_text(json.dumps(split, indent=2))
    return path
