"""The guards among the handlers: a non-finite training loss stops the run before the optimiser step with the
iteration and the batch's files named, and nothing is saved; a model.pt of another class count names the file and
both class counts (load_model_weights and the CheckpointLoader subclass)."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events
from monai.engines import SupervisedTrainer
from monai.handlers import CheckpointSaver
from torch import nn

from samora_monai.handlers import ModelCheckpointLoader, StopOnNonFiniteLoss, load_model_weights
from samora_monai.networks import SamoraNet


def _batches(bad_at: int) -> list[dict]:
    out = []
    for i in range(3):
        image = torch.rand(2, 1, 8, 8)
        if i == bad_at:
            image[1, 0, 3, 3] = float("nan")
        out.append({"image": image, "label": torch.zeros(2, 1, 8, 8),
                    "source": [f"/d/case{i}.nii.gz (slice 0)", f"/d/case{i}.nii.gz (slice 1)"]})  # fmt: skip
    return out


def test_non_finite_loss_stops_before_the_step_and_nothing_is_saved(tmp_path):
    torch.manual_seed(0)
    net = nn.Conv2d(1, 1, 3, padding=1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    trainer = SupervisedTrainer("cpu", max_epochs=1, train_data_loader=_batches(bad_at=1), network=net,
                                optimizer=opt, loss_function=nn.MSELoss())  # fmt: skip
    StopOnNonFiniteLoss().attach(trainer)
    CheckpointSaver(str(tmp_path), {"model": net}, save_final=False, save_interval=1).attach(trainer)
    weights = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: weights.append(net.weight.detach().clone()))
    with pytest.raises(FloatingPointError) as info:
        trainer.run()
    message = str(info.value)
    assert "non-finite training loss (nan) at epoch 1, iteration 2" in message
    assert "/d/case1.nii.gz (slice 0); /d/case1.nii.gz (slice 1)" in message and "case0" not in message
    assert len(weights) == 1 and torch.equal(net.weight, weights[0])  # the NaN batch never reached the weights
    assert torch.isfinite(net.weight).all() and not list(tmp_path.iterdir())


def test_finite_losses_run_through():
    net = nn.Conv2d(1, 1, 3, padding=1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    trainer = SupervisedTrainer("cpu", max_epochs=1, train_data_loader=_batches(bad_at=-1), network=net,
                                optimizer=opt, loss_function=nn.MSELoss())  # fmt: skip
    StopOnNonFiniteLoss().attach(trainer)
    trainer.run()
    assert trainer.state.iteration == 3


@pytest.fixture(scope="module")
def four_class_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    net = SamoraNet(4, variant="tiny", img_size=32, random_init=True)
    torch.save(net.state_dict(), path)
    return path, net


def test_load_model_weights_names_file_and_class_counts(four_class_model):
    path, four = four_class_model
    eight = SamoraNet(8, variant="tiny", img_size=32, random_init=True)
    with pytest.raises(ValueError) as info:
        load_model_weights(eight, path)
    message = str(info.value)
    assert message.startswith(f"{path}: the checkpoint was trained for 4 classes (5 output channels")
    assert "the network is built for 8 classes (9 output channels)" in message and "class_names" in message
    same = SamoraNet(4, variant="tiny", img_size=32, random_init=True)
    load_model_weights(same, path)
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), four.state_dict().values(), strict=True))
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found: .*missing\.pt; train the model first"):
        load_model_weights(same, path.parent / "missing.pt")


def test_checkpoint_loader_handler_names_file_and_class_counts(four_class_model):
    path, _ = four_class_model
    eight = SamoraNet(8, variant="tiny", img_size=32, random_init=True)
    engine = Engine(lambda e, b: None)
    ModelCheckpointLoader(str(path), {"model": eight}).attach(engine)
    with pytest.raises(ValueError, match=r"trained for 4 classes \(5 output .* built for 8 classes \(9 output") as info:
        engine.run([0])
    assert str(path) in str(info.value)
    saved = {"model": SamoraNet(4, variant="tiny", img_size=32, random_init=True).state_dict(), "epoch": 1}
    torch.save(saved, path.parent / "ckpt.pt")  # CheckpointSaver layout {model: state dict, ...}
    with pytest.raises(ValueError, match="trained for 4 classes"):
        load_model_weights(eight, path.parent / "ckpt.pt")
