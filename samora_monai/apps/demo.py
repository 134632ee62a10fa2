"""``make demo`` / ``python -m samora_monai demo``: the whole SAMora pipeline on the built-in CT phantom.

The demo generates the phantom (:func:`~samora_monai.apps.phantom.make_demo_data`), cuts the stage-1 slices with the
leakage guard, and then runs every workflow of the ``samora_synapse`` bundle through the real MONAI bundle CLI
(``python -m monai.bundle run <workflow> --config_file ...`` in a subprocess), in order: the two teachers, the three
stage-1 experts, stage-2 fine-tuning, inference on the held-out cases and their evaluation. A baseline (the same
stage-2 network with the three experts loaded but untrained HL-Attn and decoder) is evaluated the same way, and a
summary figure is drawn. Each step streams its output to the terminal and to ``<out>/logs/<step>.log``.

Without a SAM checkpoint the demo runs the ``tiny`` backbone with RANDOM SAM weights on the CPU (under 15 minutes on
2 cores); with ``sam_checkpoint`` (or the ``SAM_CHECKPOINT`` environment variable) it runs the real ViT-B at 224 px
with the paper's teacher architectures (ResNet-50, ViT-B MAE), which needs a CUDA GPU.

Layout of ``<out>``: ``data/`` (phantom, ``demo_datalist.json``), ``bundle/`` (a copy of the bundle's configs,
``data/unlabeled`` slices, ``models/`` with teachers, experts and ``model.pt``, ``eval/`` TensorBoard files),
``predictions/``, ``evaluation/``, ``baseline/``, ``logs/``, ``demo_summary.png`` and ``demo_summary.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from samora_monai.apps.demo_settings import DemoSettings, demo_settings
from samora_monai.apps.demo_steps import DemoRunner, DemoStepError, write_baseline, write_split
from samora_monai.apps.stage1_pipeline import LEVELS, bundle_command, run_stage1
from samora_monai.inferers.io import prediction_path
from samora_monai.utils import as_bool, bundle_dir, case_name

__all__ = ["DemoSettings", "DemoStepError", "demo_settings", "run_demo"]

BUNDLE_NAME = "samora_synapse"
_OWNED = ("data", "bundle", "predictions", "evaluation", "baseline", "logs")  # replaced on every run


def bundle_source() -> Path:
    """The shipped ``samora_synapse`` bundle folder (:func:`~samora_monai.utils.bundle_dir`)."""
    return bundle_dir(BUNDLE_NAME)


def _table(summaries: dict[str, dict]) -> str:
    """Per-organ Dice / HD95 for each metric mode, side by side."""
    modes = list(summaries)
    names = summaries[modes[0]]["class_names"]
    head = f"{'organ':<14}" + "".join(
        f"{'Dice (' + m + ')':>18}{'HD95 (' + summaries[m]['hd95_units'] + ')':>14}" for m in modes
    )
    lines = [head, "-" * len(head)]

    def fmt(v: float | None, digits: int) -> str:
        return "n/a" if v is None else f"{v:.{digits}f}"

    for name in names:
        cells = [summaries[m]["per_class"][name] for m in modes]
        lines.append(f"{name:<14}" + "".join(f"{fmt(c['dice'], 4):>18}{fmt(c['hd95'], 2):>14}" for c in cells))
    lines.append("-" * len(head))
    lines.append(f"{'mean':<14}" + "".join(
        f"{fmt(summaries[m]['mean_dice'], 4):>18}{fmt(summaries[m]['mean_hd95'], 2):>14}" for m in modes
    ))
    return "\n".join(lines)


def _clear(out: Path) -> None:
    for name in _OWNED:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def run_demo(
    out: str = "demo_output",
    quick: bool = False,
    sam_checkpoint: str | None = None,
    seed: int = 0,
    figure_slices: int = 3,
    num_threads: int = 1,
) -> str:
    """Run the whole SAMora pipeline on the phantom through the bundle CLI and print the results.

    Args:
        out: output folder; its sub-folders ``data bundle predictions evaluation baseline logs`` are replaced.
        quick: the shortened variant (tiny phantom, one epoch per stage; used by the test); ignored when a SAM
            checkpoint is given.
        sam_checkpoint: a local SAM ViT-B checkpoint (``sam_vit_b_01ec64.pth``); default: ``$SAM_CHECKPOINT`` or,
            when unset, the tiny backbone with RANDOM weights.
        seed: phantom seed.
        figure_slices: held-out slices shown in the figure.
        num_threads: PyTorch CPU threads of each step (``OMP_NUM_THREADS``). The steps run one after another; 1 is
            the robust default on a shared machine, where more threads than free cores slowed a training
            iteration down 30-fold in our measurement (0.39 s with 1 thread, 13 s with 2 next to a busy process).

    Returns:
        the path of ``<out>/demo_summary.json``: mean Dice / HD95 of the fine-tuned model and of the baseline per
        metric mode, the settings, timings and the paths of everything written.

    Raises:
        DemoStepError: a step failed (the message names the step and its log file).
    """
    from samora_monai.apps.figures import demo_figure
    from samora_monai.apps.phantom import make_demo_data
    from samora_monai.data import prepare_unlabeled
    from samora_monai.data.datalists import TEST_SPLITS

    quick = as_bool(quick)  # the command line may pass "true"/"false" as text
    sam_checkpoint = sam_checkpoint or os.environ.get("SAM_CHECKPOINT") or None
    if sam_checkpoint is not None and not os.path.isfile(sam_checkpoint):
        raise FileNotFoundError(f"SAM checkpoint not found: {sam_checkpoint} (from sam_checkpoint / $SAM_CHECKPOINT)")
    settings = demo_settings(quick, sam_checkpoint)
    source = bundle_source()
    out_dir = Path(out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    _clear(out_dir)
    bundle_root, data_dir = out_dir / "bundle", out_dir / "data"
    configs = bundle_root / "configs"
    shutil.copytree(source / "configs", configs)
    models = bundle_root / "models"
    runner = DemoRunner(out_dir, total=13, num_threads=num_threads)
    start = time.perf_counter()

    if sam_checkpoint is None:
        backbone_note = ("SAM backbone: 'tiny' ViT with RANDOM weights (no SAM checkpoint given; set SAM_CHECKPOINT="
                         "/path/sam_vit_b_01ec64.pth for the real ViT-B). Runs on the CPU.")
    else:
        backbone_note = (f"SAM backbone: ViT-B with the pretrained weights of {sam_checkpoint}, 224 px; expects a "
                         "CUDA GPU (about 10 GB of memory), CPU would take hours.")
    print(f"SAMora demo -> {out_dir}\n{backbone_note}\nsettings: {settings}", flush=True)

    # ---- data
    runner.header("phantom", f"phantom CT: {settings.num_train} training, {settings.num_test} held-out, "
                             f"{settings.num_unlabeled} unlabeled cases, {list(settings.shape)} voxels")
    t = time.perf_counter()
    phantom = make_demo_data(str(data_dir), settings.num_train, settings.num_test, settings.num_unlabeled,
                             settings.shape, settings.spacing, seed)
    datalist, held_out = write_split(data_dir, phantom)
    held_out_images = [str((data_dir / item["image"]).resolve()) for item in held_out]
    runner.done("phantom", time.perf_counter() - t)

    runner.header("slices", "stage-1 unlabeled slices (leakage guard: held-out cases excluded)")
    t = time.perf_counter()
    exclude = [*TEST_SPLITS, *(case_name(p) for p in held_out_images)]
    print(f"excluded from stage 1: {', '.join(Path(p).name for p in held_out_images)} and the splits "
          f"{', '.join(TEST_SPLITS)}", flush=True)
    unlabeled = prepare_unlabeled(str(bundle_root / "data" / "unlabeled"), datalist=phantom["dataset_json"],
                                  data_list_key="unlabeled", spatial_size=settings.img_size,
                                  min_body_fraction=settings.min_body_fraction, exclude=exclude)
    runner.done("slices", time.perf_counter() - t)

    # ---- stage 1
    common = ["--img_size", str(settings.img_size), "--num_workers", "0", "--log_interval", "1"]
    run_stage1(
        configs, bundle_root, unlabeled, overrides=["--batch_size", str(settings.batch_size), *common],
        teacher_overrides={lv: ["--epochs", str(settings.teacher_epochs), *settings.teacher_overrides.get(lv, [])]
                           for lv in ("image", "patch")},
        expert_overrides={lv: ["--epochs", str(settings.expert_epochs), *settings.backbone,
                               *settings.head_overrides.get(lv, [])] for lv in LEVELS},
        run_step=runner.command,
    )

    # ---- stage 2, inference, evaluation
    stage2 = ["--datalist", str(datalist), *settings.backbone, "--img_size", str(settings.img_size),
              "--num_workers", "0"]
    runner.command(
        "finetune", f"stage 2: fine-tuning HL-Attn + decoder on {settings.num_train} labelled volumes",
        bundle_command("training", [configs / "train.yaml"], bundle_root,
                    [*stage2, "--epochs", str(settings.finetune_epochs), "--val_interval",
                     str(max(1, settings.finetune_epochs // 4)), "--batch_size", str(settings.finetune_batch_size),
                     "--learning_rate", str(settings.learning_rate)]),
        expect=[models / "model.pt"],
    )
    predictions = out_dir / "predictions"
    runner.command(
        "inference", f"inference on the {len(held_out_images)} held-out cases",
        [*bundle_command("run", [configs / "inference.yaml"], bundle_root,
                      [*settings.backbone, "--img_size", str(settings.img_size), "--num_workers", "0"]),
         "--input_images", repr(held_out_images), "--output_dir", str(predictions)],
        expect=[prediction_path(p, predictions) for p in held_out_images],
    )
    evaluation = out_dir / "evaluation"
    eval_files = [evaluation / f"metrics_{m}.{e}" for m in ("transunet", "monai") for e in ("json", "csv")]
    runner.command(
        "evaluate", "evaluation of the fine-tuned model on the held-out cases (Dice, HD95; both metric modes)",
        bundle_command("evaluating", [configs / "train.yaml", configs / "evaluate.yaml"], bundle_root,
                    [*stage2, "--output_dir", str(evaluation), "--save_predictions", "False"]),
        expect=eval_files,
    )

    # ---- baseline: the same network before fine-tuning
    baseline_model = out_dir / "baseline" / "model.pt"
    baseline_eval = out_dir / "baseline" / "evaluation"
    runner.header("baseline_model", "baseline: stage-2 network with the three experts, untrained HL-Attn + decoder")
    t = time.perf_counter()
    write_baseline(configs, bundle_root, stage2[2:], baseline_model)
    print(f"wrote {baseline_model}", flush=True)
    runner.done("baseline_model", time.perf_counter() - t)
    runner.command(
        "baseline_evaluate", "baseline: evaluation on the same held-out cases",
        bundle_command("evaluating", [configs / "train.yaml", configs / "evaluate.yaml"], bundle_root,
                    [*stage2, "--output_dir", str(baseline_eval), "--save_predictions", "False",
                     "--checkpoint", str(baseline_model)]),
        expect=[baseline_eval / "metrics_transunet.json"],
    )

    # ---- figure and summary
    runner.header("figure", "summary figure")
    t = time.perf_counter()
    figure = out_dir / "demo_summary.png"
    losses = {title: runner.logs / f"{name}.log" for name, title in (
        ("teacher_image", "teacher: image (contrastive)"), ("teacher_patch", "teacher: patch (MAE)"),
        ("expert_image", "stage 1: image expert"), ("expert_patch", "stage 1: patch expert"),
        ("expert_pixel", "stage 1: pixel expert"), ("finetune", "stage 2: fine-tuning"))}
    demo_figure(figure, held_out_images, [str((data_dir / i["label"]).resolve()) for i in held_out],
                predictions, losses, num_slices=figure_slices)
    runner.done("figure", time.perf_counter() - t)

    summaries = {m: json.loads((evaluation / f"metrics_{m}.json").read_text()) for m in ("transunet", "monai")}
    baseline = {m: json.loads((baseline_eval / f"metrics_{m}.json").read_text()) for m in ("transunet", "monai")}
    total = time.perf_counter() - start
    written = {
        "phantom": str(data_dir), "datalist": str(datalist), "unlabeled_slices": unlabeled,
        "teachers": [str(models / "teachers" / f"{lv}.pt") for lv in ("image", "patch")],
        "experts": [str(models / "experts" / f"{lv}.pt") for lv in LEVELS],
        "model": str(models / "model.pt"), "predictions": str(predictions),
        "evaluation": [str(p) for p in eval_files], "baseline": str(baseline_eval), "figure": str(figure),
        "logs": str(runner.logs), "tensorboard": str(bundle_root / "eval"),
    }
    result = {
        "backbone": "vit_b (" + sam_checkpoint + ")" if sam_checkpoint else "tiny, RANDOM SAM weights",
        "quick": quick,
        "settings": {k: v for k, v in settings.__dict__.items() if k not in ("teacher_overrides", "head_overrides")},
        "mean_dice": {m: summaries[m]["mean_dice"] for m in summaries},
        "baseline_mean_dice": {m: baseline[m]["mean_dice"] for m in baseline},
        "mean_hd95": {m: summaries[m]["mean_hd95"] for m in summaries},
        "baseline_mean_hd95": {m: baseline[m]["mean_hd95"] for m in baseline},
        "seconds": round(total, 1),
        "step_seconds": runner.timings,
        "written": written,
    }
    summary_path = out_dir / "demo_summary.json"
    summary_path.write_text(json.dumps(result, indent=2))

    print(f"\n{'=' * 100}\nResults on the {len(held_out_images)} held-out phantom cases "
          f"({', '.join(summaries['transunet']['cases'])}); {backbone_note}")
    print("transunet mode: HD95 in voxels with the published empty-mask rules; "
          "monai mode: spacing-aware HD95 in mm.\n")
    print(_table(summaries))
    print("\nBaseline (same network, experts loaded, untrained HL-Attn + decoder) vs fine-tuned, mean Dice:")
    for m in summaries:
        print(f"  {m:<10} baseline {baseline[m]['mean_dice'] or 0:.4f}  ->  "
              f"fine-tuned {summaries[m]['mean_dice'] or 0:.4f}")
    print(f"\ntotal run time: {total / 60:.1f} min ({total:.0f} s); per step: "
          + ", ".join(f"{k} {v:.0f} s" for k, v in runner.timings.items()))
    print("\nwritten:")
    for key, value in {**written, "summary": str(summary_path)}.items():
        for v in value if isinstance(value, list) else [value]:
            print(f"  {key:<17} {v}")
    return str(summary_path)
