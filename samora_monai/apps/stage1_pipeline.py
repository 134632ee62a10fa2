"""SAMora stage 1 through the real MONAI bundle CLI: the two teachers, then the three LoRA experts.

Each step is ``python -m monai.bundle run training --config_file "['<configs>/pretrain.yaml',
'<configs>/<workflow>.yaml']" --bundle_root <out_dir>`` (the stage-1 base and the step's overlay) in a subprocess
whose output streams to the terminal and to ``<log_dir>/<step>.log``. Used by the demo
(:mod:`samora_monai.apps.demo`) and by the Auto3DSeg algorithm's ``ssl: run`` (:mod:`samora_monai.auto3dseg.workflow`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import samora_monai
from samora_monai.networks import DEFAULT_LEVELS

__all__ = [
    "STAGE1_BASE", "STAGE1_STEPS", "Stage1Error", "bundle_command", "check_step", "pipeline_env", "run_logged",
    "run_stage1",
    "stage1_configs",
]

LEVELS = DEFAULT_LEVELS  # the expert levels, in the order stage 1 trains them
# (step name, title, workflow config, level, output sub-folder of <out_dir>/models), in the order they must run
STAGE1_STEPS = (
    ("teacher_image", "stage 1: image-level teacher, ResNet contrastive (SimCLR)", "pretrain_teacher_image", "image",
     "teachers"),
    ("teacher_patch", "stage 1: patch-level teacher, masked auto-encoder", "pretrain_teacher_patch", "patch",
     "teachers"),
    *((f"expert_{lv}", f"stage 1: {lv} expert (LoRA on the frozen SAM encoder)", f"pretrain_{lv}", lv, "experts")
      for lv in LEVELS),
)

STAGE1_BASE = "pretrain"  # the config every stage-1 workflow overlays


def stage1_configs(configs_dir: str | os.PathLike, workflow: str) -> list[Path]:
    """The config files of a stage-1 workflow, in the order ``--config_file`` takes them: base, then overlay."""
    return [Path(configs_dir) / f"{STAGE1_BASE}.yaml", Path(configs_dir) / f"{workflow}.yaml"]


StepRunner = Callable[[str, str, Sequence[str], Sequence[Path]], object]


class Stage1Error(RuntimeError):
    """A stage-1 step exited with an error or did not write its output; the message names the step and its log."""


def pipeline_env(num_threads: int | None = None, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of a step: ``env`` (default ``os.environ``) with unbuffered output, this package importable and,
    when given, ``num_threads`` as ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``."""
    env = dict(os.environ if env is None else env)
    root = str(Path(samora_monai.__file__).resolve().parent.parent)  # the folder samora_monai is imported from
    env["PYTHONPATH"] = os.pathsep.join([root, env["PYTHONPATH"]]) if env.get("PYTHONPATH") else root
    env["PYTHONUNBUFFERED"] = "1"
    if num_threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(num_threads)
    return env


def bundle_command(workflow: str, configs: Sequence[Path], bundle_root: Path, overrides: Sequence[str]) -> list[str]:
    """``python -m monai.bundle run <workflow> --config_file <configs> --bundle_root <bundle_root> <overrides>``."""
    config_arg = str(configs[0]) if len(configs) == 1 else repr([str(c) for c in configs])
    return [sys.executable, "-m", "monai.bundle", "run", workflow, "--config_file", config_arg,
            "--bundle_root", str(bundle_root), *overrides]


def run_logged(cmd: Sequence[str], log: Path, cwd: Path, env: Mapping[str, str]) -> int:
    """Run ``cmd`` streaming its bytes (progress bars included) to stdout and to ``log``; returns the exit code."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as f:
        f.write((" ".join(cmd) + "\n").encode())
        print("$ " + " ".join(cmd), flush=True)
        proc = subprocess.Popen(list(cmd), cwd=cwd, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        while chunk := os.read(proc.stdout.fileno(), 65536):
            f.write(chunk)
            f.flush()
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
        return proc.wait()


def run_checked(
    label: str,
    cmd: Sequence[str],
    log: Path,
    cwd: Path,
    env: Mapping[str, str],
    expect: Sequence[Path] = (),
    error: type[Exception] = Stage1Error,
) -> None:
    """:func:`run_logged`, then :func:`check_step`."""
    check_step(label, run_logged(cmd, log, cwd, env), log, expect, error)


def check_step(
    label: str, code: int, log: Path, expect: Sequence[Path] = (), error: type[Exception] = Stage1Error
) -> None:
    """Raise ``error`` naming ``label`` and the log when a step's exit ``code`` is not 0 or a file of ``expect`` is
    missing."""
    if code != 0:
        raise error(f"{label} failed (exit code {code}); its full output is in {log}")
    absent = [str(p) for p in expect if not p.exists()]
    if absent:
        raise error(f"{label} finished but did not write {absent}; see {log}")


def run_stage1(
    bundle_configs_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    unlabeled_datalist: str | os.PathLike,
    overrides: Sequence[str] = (),
    teacher_overrides: Mapping[str, Sequence[str]] | None = None,
    expert_overrides: Mapping[str, Sequence[str]] | None = None,
    log_dir: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    run_step: StepRunner | None = None,
) -> dict[str, str]:
    """Train the image and patch teachers and the image, patch and pixel experts, in that order.

    Args:
        bundle_configs_dir: folder with the stage-1 base ``pretrain.yaml`` and its overlays
            ``pretrain_teacher_{image,patch}.yaml`` and ``pretrain_{image,patch,pixel}.yaml``.
        out_dir: the ``bundle_root`` of every step: teachers go to ``<out_dir>/models/teachers/<level>.pt``, experts
            to ``<out_dir>/models/experts/<level>.pt``.
        unlabeled_datalist: the slice datalist written by :func:`samora_monai.data.prepare_unlabeled`.
        overrides: bundle CLI overrides of every step, e.g. ``["--img_size", "64", "--epochs", "1"]``.
        teacher_overrides, expert_overrides: further overrides per level (e.g. the backbone for the experts).
        log_dir: where ``<step>.log`` files go (default ``<out_dir>/logs``); unused when ``run_step`` is given.
        env: environment of the steps (default: :func:`pipeline_env` of ``os.environ``).
        run_step: ``run_step(name, title, cmd, expect)`` runs one step instead of the default (logged subprocess in
            ``out_dir``, :class:`Stage1Error` when it fails or a file of ``expect`` is missing).

    Returns:
        ``{step name: written file}``, e.g. ``{"teacher_image": ".../models/teachers/image.pt", ...,
        "expert_pixel": ".../models/experts/pixel.pt"}``.
    """
    configs, root = Path(bundle_configs_dir), Path(out_dir).resolve()
    missing = sorted({str(f) for s in STAGE1_STEPS for f in stage1_configs(configs, s[2]) if not f.is_file()})
    if missing:
        raise FileNotFoundError(f"stage-1 bundle configs not found: {missing}")
    if not Path(unlabeled_datalist).is_file():
        raise FileNotFoundError(f"unlabeled datalist not found: {unlabeled_datalist}")
    logs = Path(log_dir) if log_dir is not None else root / "logs"
    step_env = pipeline_env(env=env)

    def default_step(name: str, title: str, cmd: Sequence[str], expect: Sequence[Path]) -> None:
        print(f"\n{'=' * 100}\n{title}\n{'=' * 100}", flush=True)
        run_checked(f"stage-1 step {title!r}", cmd, logs / f"{name}.log", root, step_env, expect)

    run_step = run_step or default_step
    per_kind = {"teachers": dict(teacher_overrides or {}), "experts": dict(expert_overrides or {})}
    written = {}
    root.mkdir(parents=True, exist_ok=True)
    for name, title, workflow, level, kind in STAGE1_STEPS:
        target = root / "models" / kind / f"{level}.pt"
        args = ["--unlabeled_datalist", str(unlabeled_datalist), *overrides, *per_kind[kind].get(level, [])]
        run_step(name, title, bundle_command("training", stage1_configs(configs, workflow), root, args), [target])
        written[name] = str(target)
    return written
