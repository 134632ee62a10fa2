"""H-SAM's dual-stage loss schedule, SAMed's low-res loss and the epoch handler on a real ignite engine."""

import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Engine
from monai.losses import DiceCELoss

from samora_monai.handlers import DualLossEpochHandler
from samora_monai.inferers import AuxOutputInferer
from samora_monai.losses import DualStageLoss, LowResLoss, dual_loss_weight, segmentation_loss
from samora_monai.networks import SamoraNet


def reference_loss(logits, label, dice=0.9):
    """SAMed/TransUNet Dice + CE written out with MONAI's DiceCELoss (weights dice, 1 - dice)."""
    loss = DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5,
                      lambda_dice=dice, lambda_ce=1 - dice)  # fmt: skip
    return loss(logits, label)


def outputs():
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 3, (2, 1, 8, 8), generator=g)
    label = label.repeat_interleave(2, -1).repeat_interleave(2, -2).float()  # 16 x 16, constant 2 x 2 blocks
    pred = {"low_res_logits": torch.randn(2, 3, 8, 8, generator=g), "logits2": torch.randn(2, 3, 16, 16, generator=g)}
    return pred, label


@pytest.mark.parametrize("epoch, expected", [(0, 0.6), (10, 0.630034), (300, 0.975260)])
def test_dual_loss_weight(epoch, expected):
    assert dual_loss_weight(epoch) == pytest.approx(expected, abs=1e-6)
    loss = DualStageLoss()
    loss.epoch = epoch
    assert loss.weight == pytest.approx(expected, abs=1e-6)


def test_dual_stage_loss_combines_both_stages():
    pred, label = outputs()
    loss = DualStageLoss(lambda_dice=0.9)
    low_label = label[..., ::2, ::2]  # the nearest-neighbour low-res labels
    loss1, loss2 = reference_loss(pred["low_res_logits"], low_label), reference_loss(pred["logits2"], label)
    assert abs(loss1 - loss2) > 1e-3
    for epoch in (0, 10, 300):
        loss.epoch = epoch
        w = dual_loss_weight(epoch)
        torch.testing.assert_close(loss(pred, label), (1 - w) * loss1 + w * loss2)
    torch.testing.assert_close(LowResLoss(segmentation_loss(lambda_dice=0.9, lambda_ce=0.1))(pred, label), loss1)
    with pytest.raises(KeyError, match="hsam"):
        loss({"low_res_logits": pred["low_res_logits"]}, label)


def test_low_res_loss_weights():
    pred, label = outputs()
    low = reference_loss(pred["low_res_logits"], label[..., ::2, ::2], dice=0.8)
    torch.testing.assert_close(LowResLoss(segmentation_loss(lambda_dice=0.8, lambda_ce=0.2))(pred, label), low)
    assert abs(LowResLoss(segmentation_loss(lambda_dice=0.8, lambda_ce=1.0))(pred, label) - low) > 1e-3


def test_handler_sets_the_trainer_epoch_and_loss_trains_a_network():
    torch.manual_seed(0)
    net = SamoraNet(2, variant="tiny", img_size=32, random_init=True, decoder="hsam")
    loss = DualStageLoss()
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    x, y = torch.rand(2, 1, 32, 32), torch.randint(0, 3, (2, 1, 32, 32)).float()
    seen = []

    def step(engine, batch):
        opt.zero_grad()
        value = loss(AuxOutputInferer()(x, net), y)
        value.backward()
        opt.step()
        seen.append((engine.state.epoch, loss.epoch, loss.weight))
        return value.item()

    trainer = Engine(step)
    DualLossEpochHandler(loss).attach(trainer)
    trainer.run([0, 1], max_epochs=3)
    assert [(e, le) for e, le, _ in seen] == [(1, 0), (1, 0), (2, 1), (2, 1), (3, 2), (3, 2)]
    assert [w for *_, w in seen][::2] == pytest.approx([0.6, 0.6**0.99, 0.6 ** (0.99**2)])
    with pytest.raises(TypeError, match="DualStageLoss"):
        DualLossEpochHandler(LowResLoss(segmentation_loss()))


def test_aux_inferer_returns_every_output():
    net = SamoraNet(2, variant="tiny", img_size=32, random_init=True).eval()
    with torch.no_grad():
        out = AuxOutputInferer()(torch.rand(1, 1, 32, 32), net)
    assert set(out) == {"logits", "low_res_logits"} and out["low_res_logits"].shape == (1, 3, 8, 8)
    torch.testing.assert_close(out["logits"], F.interpolate(out["low_res_logits"], size=(32, 32), mode="bilinear"))
