"""Stage-1 engine pieces in process: the self-supervised trainer on a tiny SAM, its deliverable and resume
handlers, the LR schedule, the teacher rule of student configs, and the ``pretrain_*`` configs' wiring."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.bundle.properties import TrainProperties
from monai.data import DataLoader, Dataset
from monai.utils import BundleProperty, BundlePropertyConfig

from samora_monai.apps.stage1_pipeline import stage1_configs
from samora_monai.engines import (
    SelfSupervisedTrainer,
    StudentLoss,
    expert_modules,
    latest_checkpoint,
    stage1_student,
    stage1_teacher,
    unlabeled_dataset,
)
from samora_monai.handlers import ExpertWriter, ResumeCheckpointLoader, ResumeCheckpointSaver, log_every
from samora_monai.losses import PixelLevelLoss
from samora_monai.networks import SamoraNet, read_expert_file
from samora_monai.networks.ssl_heads import DenoisingDecoder
from samora_monai.optimizers import warmup_lr

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = {"samora_synapse": ROOT / "bundles/samora_synapse", "samora_la": ROOT / "bundles/samora_la"}
WORKFLOWS = ("pretrain_teacher_image", "pretrain_teacher_patch", "pretrain_image", "pretrain_patch", "pretrain_pixel")


def cause(err: BaseException) -> BaseException:
    """The innermost exception (ConfigParser wraps instantiation errors in RuntimeError)."""
    while err.__cause__ is not None:
        err = err.__cause__
    return err


def pixel_student(img_size: int = 32) -> tuple[SamoraNet, StudentLoss]:
    torch.manual_seed(0)
    net = SamoraNet(num_classes=1, variant="tiny", img_size=img_size, random_init=True)
    objective = PixelLevelLoss(DenoisingDecoder(net.embed_dim, channels=(8, 8, 8, 8)), blur_prob=0.0)
    net = stage1_student(net, objective, "pixel")
    return net, StudentLoss(objective, net)


def test_trainer_trains_only_the_expert_and_head_and_writes_the_expert(tmp_path):
    net, loss = pixel_student()
    images = [{"image": torch.rand(1, 32, 32)} for _ in range(4)]
    loader = DataLoader(Dataset(images), batch_size=2)
    params = [p for p in [*net.parameters(), *loss.parameters()] if p.requires_grad]
    before = {k: v.detach().clone() for k, v in net.named_parameters()}
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    writer = ExpertWriter(net, "pixel", tmp_path / "experts/pixel.pt", log_interval=3, info={"note": "unit"})
    trainer = SelfSupervisedTrainer("cpu", 2, loader, net, optimizer, loss, train_handlers=[writer])
    trainer.run()
    assert trainer.state.iteration == 4 and set(trainer.state.output) == {"loss"}
    changed = {k for k, v in net.named_parameters() if not torch.equal(v.detach(), before[k])}
    assert changed and all(".lora.experts.pixel." in k for k in changed), sorted(changed)[:4]
    record = read_expert_file(str(tmp_path / "experts/pixel.pt"))
    summary = record["summary"]
    assert [h[0] for h in summary["loss_history"]] == [1, 3, 4]  # iteration 1, every 3rd, the last
    assert summary["iterations"] == 4 and summary["epochs"] == 2 and summary["data_size"] == 4
    assert summary["note"] == "unit" and summary["runs"] == [
        {"start_iteration": 0, "start_epoch": 0, "end_iteration": 4, "end_epoch": 2}
    ]
    assert len(expert_modules(net, "pixel")) == 4  # one expert per block of the tiny encoder
    assert not list(tmp_path.glob("experts/*.tmp"))


def test_iteration_level_checkpoints_resume_counters_and_history(tmp_path):
    def trainer(max_epochs):
        net, loss = pixel_student()
        loader = DataLoader(Dataset([{"image": torch.rand(1, 32, 32)} for _ in range(4)]), batch_size=2)
        optimizer = torch.optim.AdamW([p for p in [*net.parameters(), *loss.parameters()] if p.requires_grad])
        writer = ExpertWriter(net, "pixel", tmp_path / "pixel.pt", log_interval=1)
        save_dict = {"expert": expert_modules(net, "pixel"), "optimizer": optimizer, "summary": writer}
        handlers = [writer, ResumeCheckpointSaver(str(tmp_path), save_dict, file_prefix="latest", save_interval=1,
                                                  epoch_level=False, n_saved=1)]
        resume = latest_checkpoint(tmp_path)
        if resume is not None:
            handlers.insert(0, ResumeCheckpointLoader(resume, dict(save_dict)))
        return SelfSupervisedTrainer("cpu", max_epochs, loader, net, optimizer, loss, train_handlers=handlers), net

    first, _ = trainer(1)
    first.run()
    assert latest_checkpoint(tmp_path).endswith("latest_checkpoint_iteration=2.pt")
    second, net = trainer(2)
    second.run()
    assert second.state.iteration == 4
    summary = read_expert_file(str(tmp_path / "pixel.pt"))["summary"]
    assert [h[0] for h in summary["loss_history"]] == [1, 2, 3, 4]
    assert [(r["start_iteration"], r["end_iteration"]) for r in summary["runs"]] == [(0, 2), (2, 4)]


def test_writer_state_round_trips():
    net, _ = pixel_student()
    a = ExpertWriter(net, "pixel", "x.pt")
    a.history, a.runs = [[1, 0.5], [10, 0.25]], [{"start_iteration": 0, "end_iteration": 10}]
    b = ExpertWriter(net, "pixel", "x.pt")
    b.load_state_dict(a.state_dict())
    assert b.history == a.history and b.runs == a.runs


def test_trainer_refuses_empty_loader():
    net, loss = pixel_student()
    loader = DataLoader(Dataset([{"image": torch.rand(1, 32, 32)}]), batch_size=4, drop_last=True)
    with pytest.raises(ValueError, match="yields no batch"):
        SelfSupervisedTrainer("cpu", 1, loader, net, torch.optim.SGD(loss.parameters(), lr=0.1), loss)


def test_warmup_lr_poly_and_cosine():
    def lrs(schedule):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = warmup_lr(opt, max_iters=10, warmup_iters=2, schedule=schedule, power=1.0)
        out = []
        for _ in range(10):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    np.testing.assert_allclose(lrs("poly"), [0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125])
    cosine = lrs("cosine")
    np.testing.assert_allclose(cosine[:3], [0.5, 1.0, 1.0])
    np.testing.assert_allclose(cosine[6], 0.5 * (1 + np.cos(np.pi * 4 / 8)))
    with pytest.raises(ValueError):
        warmup_lr(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 10, schedule="step")


def test_latest_checkpoint_and_log_filter(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    (tmp_path / "latest_checkpoint_epoch=3.pt").write_bytes(b"")
    (tmp_path / "final_checkpoint.pt").write_bytes(b"")
    time.sleep(0.01)
    (tmp_path / "latest_checkpoint_iteration=40.pt").write_bytes(b"")
    assert latest_checkpoint(tmp_path).endswith("latest_checkpoint_iteration=40.pt")
    keep = log_every(10)
    assert [i for i in range(1, 31) if keep(None, i)] == [1, 10, 20, 30]


def test_unlabeled_dataset_checks_file_and_modality(tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare_unlabeled"):
        unlabeled_dataset(tmp_path / "missing.json")
    (tmp_path / "slices").mkdir()
    np.save(tmp_path / "slices/a.npy", np.zeros((3, 16, 16), np.float16))
    datalist = {"training": [{"image": "slices/a.npy", "num_slices": 3}], "settings": {"modality": "ct"}}
    (tmp_path / "dl.json").write_text(json.dumps(datalist))
    assert len(unlabeled_dataset(tmp_path / "dl.json", modality="ct")) == 3
    with pytest.raises(ValueError, match="prepared with modality 'ct' but the workflow runs with 'mr'") as err:
        unlabeled_dataset(tmp_path / "dl.json", modality="mr")
    assert str(tmp_path / "dl.json") in str(err.value) and "--modality ct" in str(err.value)


def test_stage1_teacher_rule(tmp_path):
    with pytest.raises(FileNotFoundError, match="pretrain_teacher_patch.yaml"):
        stage1_teacher("patch", tmp_path / "none.pt")
    with pytest.raises(RuntimeError, match="no image-level teacher checkpoint"):
        stage1_teacher("image", None)
    with pytest.warns(UserWarning, match="randomly initialised and untrained"):
        teacher = stage1_teacher("image", tmp_path / "none.pt", allow_untrained=True, config={"arch": "resnet18"})
    assert teacher.source_checkpoint == "untrained" and not teacher.training


def stage1_parser(bundle: str, workflow: str) -> ConfigParser:
    """The stage-1 base and the workflow's overlay, read as ``--config_file`` reads them."""
    parser = ConfigParser()
    parser.read_config([str(f) for f in stage1_configs(BUNDLES[bundle] / "configs", workflow)])
    return parser


def test_student_config_without_teacher_checkpoint_fails_clearly(tmp_path):
    parser = stage1_parser("samora_synapse", "pretrain_image")
    parser.update({"bundle_root": str(tmp_path), "variant": "tiny", "img_size": 64, "random_init": True})
    with pytest.raises(RuntimeError) as err:
        parser.get_parsed_content("teacher")
    assert isinstance(cause(err.value), FileNotFoundError)
    assert "teachers/image.pt" in str(cause(err.value)) and "pretrain_teacher_image.yaml" in str(cause(err.value))
    parser.update({"allow_untrained_teacher": "true", "teacher_args": {"arch": "resnet18", "proj_hidden_dim": 8}})
    with pytest.warns(UserWarning, match="randomly initialised and untrained"):
        teacher = parser.get_parsed_content("teacher", lazy=False)
    assert teacher.source_checkpoint == "untrained" and teacher.config["arch"] == "resnet18"


@pytest.mark.parametrize("workflow", WORKFLOWS)
def test_configs_are_zoo_style_and_bundles_differ_only_in_dataset_values(workflow):
    configs = {name: stage1_parser(name, workflow).get() for name in BUNDLES}  # base + overlay, merged
    syn, la = configs["samora_synapse"], configs["samora_la"]
    assert syn["modality"] == "ct" and la["modality"] == "mr"
    differing = {k for k in syn.keys() | la.keys() if syn.get(k) != la.get(k)}
    assert differing <= {"modality", "num_classes", "img_size"}, differing
    assert la["img_size"] == 512  # H-SAM's LA/PROMISE12 input size
    assert syn["training"] == "%run" and syn["run"] == ["$@train#trainer.run()"]
    assert syn["unlabeled_datalist"] == "$@dataset_dir + '/unlabeled/unlabeled_datalist.json'"
    assert (syn["epochs"], syn["batch_size"], syn["img_size"], syn["learning_rate"]) == (30, 16, 224, 0.001)
    assert (syn["weight_decay"], syn["warmup_iters"], syn["poly_power"]) == (0.1, 25, 0.9)
    if "lora_rank" in syn:
        assert (syn["variant"], syn["lora_rank"]) == ("vit_b", 4)
    parser = ConfigParser(syn)
    required = [p[BundlePropertyConfig.ID] for p in TrainProperties.values() if p[BundleProperty.REQUIRED]]
    assert [i for i in required if i not in parser] == []  # the zoo's required train ids (ConfigWorkflow)
    handlers = [h["_target_"] if isinstance(h, dict) else h for h in parser["train#handlers"]]
    assert handlers[0].endswith("StopOnNonFiniteLoss")  # a NaN loss stops before anything is saved
    assert handlers[1].endswith("ResumeCheckpointLoader")  # before the writer (last)
    assert parser["train#handlers"][-1] == "@train#writer"
    assert parser.get_parsed_content("output_dir") == f"./eval/{workflow}"
