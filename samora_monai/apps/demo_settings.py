"""The sizes and lengths of a demo run: full CPU, quick (the test) or the real ViT-B."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DemoSettings", "demo_settings"]


@dataclass
class DemoSettings:
    """Sizes and lengths of one demo run (see :func:`demo_settings`)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    num_train: int
    num_test: int
    num_unlabeled: int
    img_size: int
    min_body_fraction: float
    teacher_epochs: int
    expert_epochs: int
    finetune_epochs: int
    batch_size: int
    finetune_batch_size: int
    learning_rate: float
    backbone: list[str]  # bundle overrides selecting the SAM backbone
    teacher_overrides: dict[str, list[str]] = field(default_factory=dict)
    head_overrides: dict[str, list[str]] = field(default_factory=dict)


def demo_settings(quick: bool = False, sam_checkpoint: str | None = None) -> DemoSettings:
    """The demo's sizes: full (default), ``quick`` (the test) or the real ViT-B (``sam_checkpoint`` given).

    The CPU settings use small teachers (a ResNet-18 contrastive teacher and a 4-layer MAE) and small heads; with a
    SAM checkpoint the bundle's defaults (ResNet-50, ViT-B MAE, SAMora heads) are kept.
    """
    if sam_checkpoint is not None:
        backbone = ["--variant", "vit_b", "--random_init", "false", "--sam_checkpoint", str(sam_checkpoint)]
        return DemoSettings(
            shape=(160, 160, 48), spacing=(0.8, 0.8, 2.5), num_train=6, num_test=3, num_unlabeled=6, img_size=224,
            min_body_fraction=0.05, teacher_epochs=10, expert_epochs=5, finetune_epochs=20, batch_size=16,
            finetune_batch_size=16, learning_rate=0.005, backbone=backbone,
        )
    backbone = ["--variant", "tiny", "--random_init", "true"]
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
    if quick:
        return DemoSettings(
            shape=(64, 64, 12), spacing=(1.6, 1.6, 5.0), num_train=2, num_test=1, num_unlabeled=1, img_size=64,
            min_body_fraction=0.05, teacher_epochs=1, expert_epochs=1, finetune_epochs=1, batch_size=8,
            finetune_batch_size=8, learning_rate=0.005, backbone=backbone, teacher_overrides=teachers,
            head_overrides=heads,
        )
    return DemoSettings(
        shape=(128, 128, 40), spacing=(2.4, 2.4, 6.0), num_train=6, num_test=3, num_unlabeled=2, img_size=128,
        min_body_fraction=0.05, teacher_epochs=2, expert_epochs=2, finetune_epochs=20, batch_size=16,
        finetune_batch_size=8, learning_rate=0.005, backbone=backbone, teacher_overrides=teachers,
        head_overrides=heads,
    )
