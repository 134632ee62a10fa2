"""The sizes and lengths of a demo run: full CPU, quick (the test) or the real ViT-B."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from monai.utils import look_up_option

__all__ = ["BACKBONES", "BASELINE_RUN", "RUNS", "ComparedRun", "DemoSettings", "demo_settings"]

BACKBONES = ("standin", "random")  # the CPU backbones: the stand-in pre-trained here, or random SAM weights


class ComparedRun(NamedTuple):
    """One run the demo compares at the same label budget."""

    overlay: str  # given to the comparison runner
    title: str
    description: str
    uses_stage1: bool  # loads the stage-1 experts, so it starts after stage 1


RUNS = {
    "train": ComparedRun("train", "SAMora", "SAMora: three stage-1 experts fused by HL-Attn, HL-Attn + decoder trained",
                         True),
    "samed": ComparedRun("samed", "SAMed", "SAMed baseline: one LoRA + decoder trained, no stage 1", False),
    "no_stage1": ComparedRun("ablations/no_stage1", "no stage 1",
                             "ablation: SAMora without stage 1 (zero-initialised experts)", False),
}
BASELINE_RUN = "samed"


@dataclass
class DemoSettings:
    """Sizes and lengths of one demo run (see :func:`demo_settings`)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    num_train: int  # labelled training cases
    num_val: int  # labelled validation cases: the Dice-versus-epoch curves (the model is the last-epoch one)
    num_test: int  # held-out cases
    num_unlabeled: int
    labelled_slices: int | None  # label budget: annotated slices per training case (None: all with foreground)
    img_size: int
    min_body_fraction: float
    teacher_epochs: int
    expert_epochs: int
    batch_size: int  # stage 1
    finetune_epochs: int
    finetune_batch_size: int
    learning_rate: float
    warmup_iters: int
    val_interval: int
    backbone: list[str]  # bundle overrides selecting the SAM backbone (the stand-in's path is added at run time)
    standin_quick: bool = False  # the few-second stand-in recipe (tests)
    finetune_overrides: list[str] = field(default_factory=list)
    teacher_overrides: dict[str, list[str]] = field(default_factory=dict)
    head_overrides: dict[str, list[str]] = field(default_factory=dict)


def demo_settings(quick: bool = False, sam_checkpoint: str | None = None, backbone: str = "standin") -> DemoSettings:
    """The demo's sizes: full (default), ``quick`` (the test) or the real ViT-B (``sam_checkpoint`` given).

    ``backbone`` (CPU runs): ``"standin"``, the tiny SAM pre-trained once here by
    :func:`~samora_monai.apps.standin.pretrain_standin`, or ``"random"``, the tiny SAM with random weights. The CPU
    settings use small teachers (a ResNet-18 contrastive teacher and a 4-layer MAE) and small heads; with a SAM
    checkpoint the bundle's defaults (ResNet-50, ViT-B MAE, SAMora heads) are kept.
    """
    if sam_checkpoint is not None:
        return DemoSettings(
            shape=(160, 160, 48), spacing=(0.8, 0.8, 2.5), num_train=6, num_val=2, num_test=3, num_unlabeled=6,
            labelled_slices=10, img_size=224, min_body_fraction=0.05, teacher_epochs=10, expert_epochs=5,
            batch_size=16, finetune_epochs=60, finetune_batch_size=16, learning_rate=0.005, warmup_iters=25,
            val_interval=5,
            backbone=["--variant", "vit_b", "--random_init", "false", "--sam_checkpoint", str(sam_checkpoint)],
        )
    look_up_option(backbone, BACKBONES)
    random = ["--variant", "tiny", "--random_init", "true"]
    standin = ["--variant", "tiny", "--random_init", "false"]
    teachers = {
        "image": ["--network_def#arch", "resnet18", "--network_def#proj_hidden_dim", "128",
                  "--network_def#proj_dim", "64"],
        "patch": ["--network_def#hidden_size", "64", "--network_def#mlp_dim", "128", "--network_def#num_layers", "4",
                  "--network_def#num_heads", "4", "--network_def#decoder_hidden_size", "64",
                  "--network_def#decoder_mlp_dim", "128", "--network_def#decoder_num_layers", "2",
                  "--network_def#decoder_num_heads", "4"],
    }
    heads = {"image": ["--head#hidden_dim", "128"], "patch": ["--head#hidden_dim", "128"],
             "pixel": ["--head#channels", "[32,16,16,8]"]}
    flips_only = ["--train#augmentation#rotate_degrees", "0", "--train#augmentation#zoom", "[1.0,1.0]"]
    common = dict(backbone=standin if backbone == "standin" else random, finetune_overrides=flips_only,
                  teacher_overrides=teachers, head_overrides=heads, min_body_fraction=0.05)
    if quick:
        return DemoSettings(
            shape=(64, 64, 12), spacing=(1.6, 1.6, 5.0), num_train=2, num_val=1, num_test=1, num_unlabeled=1,
            labelled_slices=4, img_size=64, teacher_epochs=1, expert_epochs=1, batch_size=8, finetune_epochs=2,
            finetune_batch_size=4, learning_rate=0.005, warmup_iters=1, val_interval=1, standin_quick=True,
            **common,
        )
    return DemoSettings(
        shape=(128, 128, 40), spacing=(2.4, 2.4, 6.0), num_train=6, num_val=2, num_test=3, num_unlabeled=2,
        labelled_slices=10, img_size=128, teacher_epochs=2, expert_epochs=2, batch_size=16, finetune_epochs=150,
        finetune_batch_size=16, learning_rate=0.005, warmup_iters=20, val_interval=10, **common,
    )
