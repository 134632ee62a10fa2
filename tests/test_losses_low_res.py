"""Low-resolution stage-2 loss: scipy-identical nearest label zoom, and the loss on ``forward_with_aux`` outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import zoom

from samora_monai.losses import LowResLoss, segmentation_loss, zoom_nearest
from samora_monai.networks import SamoraNet


@pytest.mark.parametrize("size, low", [((224, 224), (56, 56)), ((512, 512), (128, 128)), ((13, 9), (7, 5))])
def test_zoom_nearest_equals_scipy_order0(size, low):
    label = np.random.default_rng(1).integers(0, 9, size)
    expected = zoom(label, (low[0] / size[0], low[1] / size[1]), order=0)  # SAMed/H-SAM's low_res_label
    got = zoom_nearest(torch.from_numpy(label)[None, None], low)
    assert got.shape == (1, 1, *low)
    np.testing.assert_array_equal(got[0, 0].numpy(), expected)


def test_loss_is_computed_on_the_low_res_logits():
    torch.manual_seed(0)
    label = torch.randint(0, 3, (2, 1, 16, 12))
    low = torch.randn(2, 3, 4, 3, requires_grad=True)
    full = torch.randn(2, 3, 16, 12, requires_grad=True)
    base = segmentation_loss(lambda_dice=0.9, lambda_ce=0.1)
    loss = LowResLoss(base)({"logits": full, "low_res_logits": low}, label)
    expected = zoom(label.numpy(), (1, 1, 4 / 16, 3 / 12), order=0)
    assert torch.allclose(loss, base(low, torch.from_numpy(expected)))
    assert not torch.allclose(loss, base(full, label))
    loss.backward()
    assert low.grad is not None and low.grad.abs().sum() > 0 and full.grad is None


def test_with_the_network_forward_with_aux():
    torch.manual_seed(0)
    net = SamoraNet(num_classes=2, variant="tiny", img_size=32, random_init=True)
    image, label = torch.rand(2, 1, 32, 32), torch.randint(0, 3, (2, 1, 32, 32))
    outputs = net.forward_with_aux(image)
    loss = LowResLoss(segmentation_loss())(outputs, label)
    low = outputs["low_res_logits"]
    assert low.shape[-2:] == (8, 8)
    assert torch.allclose(loss, segmentation_loss()(low, zoom_nearest(label, (8, 8))))
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters() if p.requires_grad)


def test_bad_inputs():
    loss = LowResLoss(segmentation_loss())
    with pytest.raises(ValueError, match="forward_with_aux dict with 'low_res_logits', got Tensor"):
        loss(torch.randn(1, 3, 4, 4), torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"got \['logits'\]"):
        loss({"logits": torch.randn(1, 3, 4, 4)}, torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match="does not match logits"):
        loss({"low_res_logits": torch.randn(1, 3, 4, 4)}, torch.zeros(2, 1, 16, 16))


def test_wired_into_a_monai_supervised_trainer():
    """The documented wiring: an inferer returning ``forward_with_aux`` and ``LowResLoss`` as loss_function."""
    from monai.engines import SupervisedTrainer

    torch.manual_seed(0)
    net = SamoraNet(num_classes=2, variant="tiny", img_size=32, random_init=True)
    before = {k: v.clone() for k, v in net.named_parameters() if v.requires_grad}
    data = [{"image": torch.rand(2, 1, 32, 32), "label": torch.randint(0, 3, (2, 1, 32, 32))}]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=data,
        network=net,
        optimizer=torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-3),
        loss_function=LowResLoss(segmentation_loss()),
        inferer=lambda x, network, *a, **k: network.forward_with_aux(x),
    )
    trainer.run()
    items = trainer.state.output  # decollated per image, as in the bundles
    assert len(items) == 2 and set(items[0]["pred"]) == {"logits", "low_res_logits"}
    assert items[0]["pred"]["low_res_logits"].shape == (3, 8, 8) and np.isfinite(items[0]["loss"])
    assert any(not torch.equal(before[k], v) for k, v in net.named_parameters() if v.requires_grad)
