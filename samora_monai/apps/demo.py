"""``make demo`` / ``python -m samora_monai demo``: the whole SAMora pipeline on the built-in CT phantom, compared
with the SAMed baseline and the "no stage 1" ablation at the same label budget.

On the CPU the backbone is the ``tiny`` SAM configuration, by default a stand-in pre-trained once here
(:mod:`samora_monai.apps.standin`, cached; NOT Segment Anything, it never sees a demo case or an organ label), else
random weights (``backbone="random"``); with ``sam_checkpoint`` (or ``$SAM_CHECKPOINT``) the real ViT-B at 224 px,
which needs a CUDA GPU. The demo generates the phantom (:func:`~samora_monai.apps.phantom.make_demo_data`) with a
few-shot label budget (``labelled_slices`` annotated slices per training case), cuts the stage-1 slices with the
leakage guard, and runs every workflow of the ``samora_synapse`` bundle through the real MONAI bundle CLI, each in
its own process: the two teachers and the three stage-1 experts, and the runs the comparison runner plans
(:func:`~samora_monai.apps.compare.plan_runs`): stage-2 training and evaluation on the held-out cases of SAMora
(``train.yaml``, after stage 1), the SAMed baseline (``samed.yaml``) and SAMora without stage 1
(``ablations/no_stage1.yaml``; these two need no stage-1 output and start beside it), all with the same data, budget,
epochs and optimiser settings. Up to ``parallel`` steps run at once, stage 1 and SAMora (the longest chain) first.

Layout of ``<out>``: ``data/`` (phantom, ``demo_datalist.json``), ``bundle/`` (a copy of the bundle's configs,
``data/unlabeled`` slices, ``models/`` with teachers and experts), ``compare/`` (one folder per run: ``models/``,
``train/learning_curve.csv``, ``test/metrics_*.json`` and ``test/predictions/``; ``comparison.csv|md``,
``dice_vs_epoch.png``), ``logs/``, ``demo_summary.png`` and ``demo_summary.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from samora_monai.apps.compare import PlannedRun, plan_runs, tabulate
from samora_monai.apps.demo_report import print_summary, run_summary
from samora_monai.apps.demo_settings import BASELINE_RUN, RUNS, DemoSettings, demo_settings
from samora_monai.apps.demo_steps import DemoRunner, DemoStep, DemoStepError, write_split
from samora_monai.apps.figures import demo_figure
from samora_monai.apps.stage1_pipeline import LEVELS, STAGE1_STEPS, run_stage1
from samora_monai.utils import as_bool, atomic_output, bundle_dir, case_name

__all__ = ["DemoSettings", "DemoStepError", "demo_settings", "run_demo"]

BUNDLE_NAME = "samora_synapse"
LOSS_TITLES = {"teacher_image": "image teacher (NT-Xent)", "teacher_patch": "patch teacher (MAE)",
               "expert_image": "image expert (distillation)", "expert_patch": "patch expert (masked tokens)",
               "expert_pixel": "pixel expert (denoising)"}
_OWNED = ("data", "bundle", "compare", "logs", "demo_summary.json", "demo_summary.png")  # replaced on every run
BACKGROUND_NICE = 10  # CPU priority of the compared runs that start beside stage 1 (POSIX nice)


def bundle_source() -> Path:
    """The shipped ``samora_synapse`` bundle folder (:func:`~samora_monai.utils.bundle_dir`)."""
    return bundle_dir(BUNDLE_NAME)


def _clear(out: Path) -> None:
    for name in _OWNED:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def _as_overrides(args: list[str]) -> dict[str, str]:
    """``["--key", "value", ...]`` -> ``{"key": "value", ...}``."""
    return {k.lstrip("-"): v for k, v in zip(args[::2], args[1::2], strict=True)}


def _data_steps(runner: DemoRunner, out: Path, settings: DemoSettings, seed: int) -> tuple[Path, Path, list, str]:
    """The phantom, the few-shot datalist and the stage-1 slices: ``(data folder, datalist, held-out items, slice
    datalist)``."""
    from samora_monai.apps.phantom import make_demo_data
    from samora_monai.data import prepare_unlabeled
    from samora_monai.data.datalists import TEST_SPLITS

    data_dir = out / "data"
    runner.header("phantom", f"phantom CT: {settings.num_train} training cases ({settings.labelled_slices} labelled "
                             f"slices each), {settings.num_val} validation, {settings.num_test} held-out, "
                             f"{settings.num_unlabeled} unlabeled cases, {list(settings.shape)} voxels")
    t = time.perf_counter()
    phantom = make_demo_data(str(data_dir), settings.num_train + settings.num_val, settings.num_test,
                             settings.num_unlabeled, settings.shape, settings.spacing, seed)
    datalist = write_split(data_dir, phantom, settings.num_val, settings.labelled_slices)
    split = json.loads(datalist.read_text())
    runner.done("phantom", time.perf_counter() - t)

    runner.header("slices", "stage-1 unlabeled slices (leakage guard: held-out and validation cases excluded)")
    t = time.perf_counter()
    exclude = [*TEST_SPLITS, *(case_name(item["image"]) for item in split["testing"] + split["validation"])]
    print(f"excluded from stage 1: {', '.join(exclude)}", flush=True)
    unlabeled = prepare_unlabeled(str(out / "bundle" / "data" / "unlabeled"), datalist=str(datalist),
                                  data_list_key="unlabeled", spatial_size=settings.img_size,
                                  min_body_fraction=settings.min_body_fraction, exclude=exclude)
    runner.done("slices", time.perf_counter() - t)
    return data_dir, datalist, split["testing"], unlabeled


def _stage1_steps(bundle_root: Path, unlabeled: str, settings: DemoSettings) -> list[DemoStep]:
    """The stage-1 bundle runs (teachers, experts), each expert after its own teacher."""
    steps: list[DemoStep] = []
    names = {name for name, *_ in STAGE1_STEPS}

    def record(name: str, title: str, cmd: list[str], expect: list[Path]) -> None:
        teacher = name.replace("expert_", "teacher_")
        after = [teacher] if teacher != name and teacher in names else []
        steps.append(DemoStep(name, title, cmd, expect, after=after))

    common = ["--img_size", str(settings.img_size), "--num_workers", "0", "--log_interval", "1"]
    run_stage1(
        bundle_root / "configs", bundle_root, unlabeled, overrides=["--batch_size", str(settings.batch_size), *common],
        teacher_overrides={lv: ["--epochs", str(settings.teacher_epochs), *settings.teacher_overrides.get(lv, [])]
                           for lv in ("image", "patch")},
        expert_overrides={lv: ["--epochs", str(settings.expert_epochs), *settings.backbone,
                               *settings.head_overrides.get(lv, [])] for lv in LEVELS},
        run_step=record,
    )
    return steps


def _compare_steps(
    bundle_root: Path, out: Path, datalist: Path, settings: DemoSettings, stage1: list[DemoStep]
) -> tuple[str, dict[str, PlannedRun], list[DemoStep]]:
    """Stage 2 of every run of :data:`RUNS` with the same data, budget and recipe, and its evaluation on the held-out
    cases: ``(baseline, planned runs, steps)``. SAMora's steps come first and wait for stage 1; the runs that do not
    load the experts start beside stage 1 at a lower CPU priority (``BACKGROUND_NICE``), so that stage 1 and SAMora,
    the longest chain, keep a full core."""
    overrides = {
        **_as_overrides(settings.backbone), **_as_overrides(settings.finetune_overrides),
        "img_size": settings.img_size, "num_workers": 0, "batch_size": settings.finetune_batch_size,
        "learning_rate": settings.learning_rate, "warmup_iters": settings.warmup_iters,
        "val_interval": settings.val_interval, "select_model": False,  # validation draws the curves only
        "epochs": settings.finetune_epochs, "datalist": str(datalist),
    }
    baseline, planned = plan_runs(str(bundle_root), [run.overlay for run in RUNS.values()], str(out), BASELINE_RUN,
                                  overrides)  # fmt: skip
    steps = []
    for name in sorted(planned, key=lambda n: not RUNS[n].uses_stage1):
        (_, train_cmd, train_log), (_, test_cmd, test_log) = planned[name].commands
        run, run_dir = RUNS[name], planned[name].run_dir
        nice = 0 if run.uses_stage1 else BACKGROUND_NICE
        steps += [
            DemoStep(f"{name}_train", f"stage 2, {run.description}", train_cmd, [run_dir / "models" / "model.pt"],
                     after=[s.name for s in stage1] if run.uses_stage1 else [], log=train_log, cwd=bundle_root,
                     nice=nice),
            DemoStep(f"{name}_evaluate", f"{run.title}: evaluation on the held-out cases", test_cmd,
                     [run_dir / "test" / "metrics_transunet.json"], after=[f"{name}_train"], log=test_log,
                     cwd=bundle_root, nice=nice),
        ]  # fmt: skip
    return baseline, planned, steps


def run_demo(
    out: str = "demo_output",
    quick: bool = False,
    sam_checkpoint: str | None = None,
    backbone: str = "standin",
    seed: int = 0,
    figure_slices: int = 3,
    num_threads: int = 1,
    parallel: int = 3,
    cache_dir: str | None = None,
) -> str:
    """Run the whole SAMora pipeline on the phantom through the bundle CLI, compare it at the same label budget with
    the SAMed baseline and the "no stage 1" ablation, and print the results.

    Args:
        out: output folder; its sub-folders ``data bundle compare logs`` are replaced.
        quick: the shortened variant (tiny phantom, a few iterations per stage; used by the tests); ignored when a
            SAM checkpoint is given.
        sam_checkpoint: a local SAM ViT-B checkpoint (``sam_vit_b_01ec64.pth``); default ``$SAM_CHECKPOINT``; when
            neither is given the ``tiny`` SAM configuration runs with ``backbone``.
        backbone: without a SAM checkpoint: ``"standin"`` (default), the tiny SAM pre-trained once here on data
            disjoint from the demo (:mod:`samora_monai.apps.standin`; NOT Segment Anything) and cached in
            ``cache_dir``, or ``"random"``, random SAM weights.
        seed: phantom seed.
        figure_slices: held-out slices shown in the figure.
        num_threads: PyTorch CPU threads of each step (``OMP_NUM_THREADS``); 1 is the robust default on a shared
            machine, where more threads than free cores slowed a training iteration down 30-fold in our
            measurement (0.39 s with 1 thread, 13 s with 2 next to a busy process).
        parallel: steps that may run at once (stage-1 steps, the compared runs' trainings and evaluations), each
            with ``num_threads`` threads: 3 keeps 2 cores busy until the last run ends; the stand-in pre-training
            uses ``min(parallel, os.cpu_count())`` threads.
        cache_dir: folder of the cached stand-in checkpoint (default ``$SAMORA_CACHE`` or ``~/.cache/samora_monai``).

    Returns:
        the path of ``<out>/demo_summary.json``: backbone, settings, per-run mean and per-organ Dice / HD95,
        epochs to reach the baseline's final validation Dice, timings and the paths of everything written.

    Raises:
        DemoStepError: a step failed (the message names the step and its log file).
    """
    from samora_monai.apps.standin import STANDIN_NOTE, standin_path, standin_settings

    quick, parallel = as_bool(quick), max(1, int(parallel))  # the command line may pass "true"/"false" as text
    sam_checkpoint = sam_checkpoint or os.environ.get("SAM_CHECKPOINT") or None
    if sam_checkpoint is not None and not os.path.isfile(sam_checkpoint):
        raise FileNotFoundError(f"SAM checkpoint not found: {sam_checkpoint} (from sam_checkpoint / $SAM_CHECKPOINT)")
    settings = demo_settings(quick, sam_checkpoint, backbone)
    out_dir = Path(out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    _clear(out_dir)
    bundle_root = out_dir / "bundle"
    shutil.copytree(bundle_source() / "configs", bundle_root / "configs")
    use_standin = sam_checkpoint is None and backbone == "standin"
    steps = 4 + len(STAGE1_STEPS) + 2 * len(RUNS) + use_standin  # phantom, slices, stage 1, runs, table, figure
    runner = DemoRunner(out_dir, total=steps, num_threads=num_threads)
    start = time.perf_counter()

    if sam_checkpoint is not None:
        note = (f"SAM backbone: ViT-B with the pretrained weights of {sam_checkpoint}, 224 px; expects a CUDA GPU "
                "(about 10 GB of memory), CPU would take hours.")
        backbone_name = f"vit_b ({sam_checkpoint})"
    elif use_standin:
        stand_in = standin_path(standin_settings(settings.img_size, settings.standin_quick, seed), cache_dir)
        note, backbone_name = STANDIN_NOTE, f"tiny, stand-in pre-trained here, NOT SAM ({stand_in})"
        settings.backbone = [*settings.backbone, "--sam_checkpoint", str(stand_in)]
    else:
        note, backbone_name = "SAM backbone: 'tiny' ViT with RANDOM weights (no pre-training).", "tiny, RANDOM weights"
    print(f"SAMora demo -> {out_dir}\n{note}\nsettings: {settings}", flush=True)
    if use_standin and stand_in.is_file():
        runner.header("standin", "stand-in SAM backbone (NOT Segment Anything)")
        print(f"cached: {stand_in} (its record: {stand_in}.json)", flush=True)
        runner.done("standin", 0.0)
    elif use_standin:
        runner.command("standin", "stand-in SAM backbone: pre-trained once here, then cached (NOT Segment Anything)",
                       [sys.executable, "-m", "samora_monai", "pretrain_standin", "--img_size", str(settings.img_size),
                        "--quick", str(settings.standin_quick), "--seed", str(seed), "--cache_dir",
                        str(stand_in.parent)],
                       expect=[stand_in], num_threads=min(parallel, os.cpu_count() or 1))  # fmt: skip

    data_dir, datalist, held_out, unlabeled = _data_steps(runner, out_dir, settings, seed)
    stage1 = _stage1_steps(bundle_root, unlabeled, settings)
    baseline, planned, stage2 = _compare_steps(bundle_root, out_dir / "compare", datalist, settings, stage1)
    runner.run_parallel([*stage1, *stage2], parallel)
    runner.header("compare", "the comparison at the same label budget: " + ", ".join(r.title for r in RUNS.values()))
    t = time.perf_counter()
    comparison = tabulate(planned, baseline, str(out_dir / "compare"))
    runner.done("compare", time.perf_counter() - t)
    for file in ("model.pt", "model_meta.json"):  # the demo's bundle carries SAMora's model (MONAI Label installs it)
        shutil.copy2(Path(comparison["runs"]["train"]["dir"]) / "models" / file, bundle_root / "models" / file)
    if use_standin:  # and the backbone file model_meta.json names, as models/<name> like sam_vit_b_01ec64.pth
        shutil.copy2(stand_in, bundle_root / "models" / stand_in.name)

    runner.header("figure", "summary figure")
    t = time.perf_counter()
    figure = out_dir / "demo_summary.png"
    runs = comparison["runs"]
    images = [str((data_dir / item["image"]).resolve()) for item in held_out]
    demo_figure(
        figure, images, [str((data_dir / item["label"]).resolve()) for item in held_out],
        {RUNS[n].title: Path(r["dir"]) / "test" / "predictions" for n, r in runs.items()},
        {LOSS_TITLES[step.name]: runner.logs / f"{step.name}.log" for step in stage1},
        {RUNS[n].title: [(e, d) for e, d, _ in r["curve"] if d is not None] for n, r in runs.items()},
        num_slices=figure_slices,
    )
    runner.done("figure", time.perf_counter() - t)

    total = time.perf_counter() - start
    result = {
        "backbone": backbone_name,
        "backbone_note": note,
        "quick": quick,
        "settings": {k: v for k, v in settings.__dict__.items() if not k.endswith("_overrides")},
        "label_budget": json.loads(datalist.read_text())["training"],
        "runs": {n: run_summary(comparison, n) for n in runs},
        "baseline": BASELINE_RUN,
        "seconds": round(total, 1),
        "step_seconds": runner.timings,
        "written": {"data": str(data_dir), "datalist": str(datalist), "unlabeled_slices": unlabeled,
                    "model": str(bundle_root / "models" / "model.pt"),
                    "bundle": str(bundle_root), "comparison": [comparison["csv"], comparison["markdown"]],
                    "figure": str(figure), "logs": str(runner.logs)},
    }
    summary_path = out_dir / "demo_summary.json"
    with atomic_output(summary_path) as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    print_summary(result, [case_name(item["image"]) for item in held_out], summary_path)
    return str(summary_path)
