"""The samora Auto3DSeg algorithm runs the bundle's own configs: a recipe change in the bundle reaches it, the
template's overrides reach the bundle, the warm-up is clamped, outputs have normal permissions (fast tests)."""

from __future__ import annotations

import os
import re
import shutil

import pytest
import yaml

from samora_monai.auto3dseg import ALGO_NAME, get_template_path, load_settings
from samora_monai.auto3dseg.bundle_run import bundle_overrides, bundle_workflow, clamp_warmup
from samora_monai.auto3dseg.progress import TrainingProgress
from samora_monai.utils import bundle_dir


def _settings(tmp_path, **values):
    cfg_file = tmp_path / "hyper_parameters.yaml"
    shutil.copy(os.path.join(get_template_path(), ALGO_NAME, "configs", "hyper_parameters.yaml"), cfg_file)
    cfg = yaml.safe_load(cfg_file.read_text())
    # these tests build the bundle's objects without stage-1 files: the "no stage 1" ablation
    cfg.update(bundle_root=str(tmp_path / "algo"), variant="tiny", random_init=True, img_size=32, device="cpu",
               allow_missing_experts=True)
    cfg.update(values)
    cfg_file.write_text(yaml.safe_dump(cfg))
    return str(cfg_file)


def _copied_bundle(tmp_path, learning_rate: float) -> str:
    """A copy of samora_synapse whose train.yaml sets ``learning_rate``."""
    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir("samora_synapse") / "configs", copy / "configs")
    train = copy / "configs" / "train.yaml"
    text, n = re.subn(r"(?m)^learning_rate: .*$", f"learning_rate: {learning_rate}", train.read_text())
    assert n == 1
    train.write_text(text)
    return str(copy)


def _optimizer_lr(settings) -> float:
    wf = bundle_workflow(settings, "train", os.path.join(settings.ckpt_path, "none"))
    return wf.parser.get_parsed_content("optimizer").defaults["lr"]


def test_bundle_learning_rate_reaches_the_algorithm(tmp_path):
    shipped = yaml.safe_load((bundle_dir("samora_synapse") / "configs" / "train.yaml").read_text())["learning_rate"]
    assert shipped != 0.0123
    cfg_file = _settings(tmp_path, bundle=_copied_bundle(tmp_path, 0.0123))
    assert _optimizer_lr(load_settings(cfg_file)) == pytest.approx(0.0123)  # the recipe is the bundle's, not a copy
    # a user's value of a train.yaml key goes through bundle_overrides and wins
    override = load_settings(cfg_file, {"learning_rate": 0.02})
    assert _optimizer_lr(override) == pytest.approx(0.02)


def test_overrides_carry_the_template_settings(tmp_path):
    settings = load_settings(_settings(tmp_path, output_classes=3, slice_axis=0, num_epochs=2, lora_rank=2))
    out = bundle_overrides(settings, "train", "/experts")
    assert out["class_names"] == ["class_1", "class_2"] and out["label_mapping"] is None
    assert out["epochs"] == 2 and out["expert_dir"] == "/experts" and out["network_def#lora_rank"] == 2
    assert out["allow_missing_experts"] is True
    required = load_settings(_settings(tmp_path, allow_missing_experts=False))
    assert bundle_overrides(required, "train", "/e")["allow_missing_experts"] is False
    assert out["validate#inferer#spatial_dim"] == 0 and "[0, 2, 3, 1]" in out["train#dataset#transform"]
    assert out["ckpt_dir"] == settings.ckpt_path and out["resume_checkpoint"] is None
    assert "batch_size" not in out  # null num_images_per_batch: the bundle's batch_size
    assert bundle_overrides(settings, "inference", "/e")["inferer#spatial_dim"] == 0
    wf = bundle_workflow(settings, "train", "/experts")
    net = wf.parser.get_parsed_content("network_def")
    assert (net.num_classes, net.variant, net.img_size, net.lora_rank) == (2, "tiny", 32, 2)
    with pytest.raises(ValueError, match="pretrain"):
        bundle_overrides(settings, "pretrain", "/e")


def test_warmup_clamped_to_a_tenth_of_the_run(caplog):
    assert clamp_warmup(25, 1000) == 25
    with caplog.at_level("WARNING"):
        assert clamp_warmup(25, 60) == 6
    assert "warm-up clamped from 25 to 6" in caplog.text
    assert clamp_warmup(1, 6) == 0


def test_progress_files_have_normal_permissions(tmp_path):
    from types import SimpleNamespace

    progress = TrainingProgress(tmp_path, ["header"])
    state = SimpleNamespace(epoch=1, iteration=3, max_epochs=1, epoch_length=3, output=[{"loss": 0.5}])
    engine = SimpleNamespace(state=state)
    progress.started(engine)
    progress.epoch_started(engine)
    progress.iteration_completed(engine)
    progress.validated(SimpleNamespace(state=SimpleNamespace(metrics={"val_mean_dice": float("nan")})))
    progress.epoch_completed(engine)
    mask = os.umask(0)
    os.umask(mask)
    for name in ("training.log", "progress.yaml"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o666 & ~mask, name
    record = yaml.safe_load((tmp_path / "progress.yaml").read_text())
    assert record[0]["val_mean_dice"] == 0.0 and record[0]["best_avg_dice_score_epoch"] == 1  # NaN counts as 0
    assert (tmp_path / "training.log").read_text().splitlines()[-1].startswith("epoch 1/1 loss 0.5000")


@pytest.mark.parametrize("axis, n_slices", [(2, 6), (0, 10)])
def test_slice_axis_reaches_the_bundle_dataset_and_inferer(tmp_path, axis, n_slices):
    import json

    import nibabel as nib
    import numpy as np

    image = np.random.RandomState(0).rand(10, 12, 6).astype(np.float32) * 300
    label = np.zeros((10, 12, 6), np.uint8)
    label[2:5, 3:8, 1:4] = 1
    for name, arr in (("img.nii.gz", image), ("lab.nii.gz", label)):
        nib.save(nib.Nifti1Image(arr, np.eye(4)), str(tmp_path / name))
    item = {"image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "lab.nii.gz")}
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": [item], "validation": [item]}))
    settings = load_settings(_settings(tmp_path, slice_axis=axis, img_size=16))
    wf = bundle_workflow(settings, "train", "/none", {"datalist": str(datalist)})
    dataset = wf.parser.get_parsed_content("train#dataset")
    assert len(dataset) == n_slices and tuple(dataset[0]["image"].shape) == (1, 16, 16)
    assert wf.parser.get_parsed_content("validate#inferer").spatial_dim == axis
