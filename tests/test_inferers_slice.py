"""ResizedSliceInferer against a slice-by-slice loop written out by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.engines import SupervisedEvaluator
from monai.inferers import Inferer
from torch import nn

from samora_monai.inferers import ResizedSliceInferer


def tiny_net(num_out: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, num_out, 3, padding=1)).eval()


def by_hand(volume: torch.Tensor, net: nn.Module, axis: int, size: tuple[int, int] | None) -> torch.Tensor:
    """Each slice on its own: resize to ``size``, run, resize the logits back, stack along ``axis``."""
    out = []
    for b in range(volume.shape[0]):
        slices = []
        for i in range(volume.shape[2 + axis]):
            x = volume[b : b + 1].select(2 + axis, i)
            h, w = x.shape[-2:]
            if size is not None:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            y = net(x)
            if size is not None:
                y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
            slices.append(y)
        out.append(torch.stack(slices, dim=2 + axis))
    return torch.cat(out)


@pytest.mark.parametrize("axis", [-1, 0, 1])
@pytest.mark.parametrize("size", [(16, 16), None])
def test_matches_slice_by_slice(axis, size):
    net = tiny_net()
    volume = torch.rand(2, 1, 10, 12, 7)
    inferer = ResizedSliceInferer(spatial_size=size, spatial_dim=axis, sw_batch_size=4)
    with torch.no_grad():
        got = inferer(volume, net)
        expected = by_hand(volume, net, axis % 3, size)
    assert isinstance(inferer, Inferer)
    assert got.shape == (2, 3, 10, 12, 7)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_keeps_metadata_and_accepts_a_plain_callable():
    affine = torch.diag(torch.tensor([0.7, 0.7, 2.5, 1.0], dtype=torch.float64))
    volume = MetaTensor(torch.rand(1, 1, 9, 6, 5), affine=affine, meta={"filename_or_obj": "img0001.nii.gz"})
    inferer = ResizedSliceInferer(spatial_size=8, sw_batch_size=2, progress=True)

    def net(x):
        assert not isinstance(x, MetaTensor) and x.shape[1:] == (1, 8, 8)
        return torch.cat([x, 1 - x], dim=1)

    got = inferer(volume, net)
    assert isinstance(got, MetaTensor)
    torch.testing.assert_close(got.affine, affine)
    assert got.shape == (1, 2, 9, 6, 5)


def test_works_as_evaluator_inferer():
    net = tiny_net()
    data = [{"image": torch.rand(1, 8, 6, 5), "label": torch.zeros(1, 8, 6, 5)}]
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=data,
        network=net,
        inferer=ResizedSliceInferer(spatial_size=12, sw_batch_size=3),
        prepare_batch=lambda batch, device, non_blocking, **kw: (batch["image"][None], batch["label"][None]),
    )
    evaluator.run()
    pred = evaluator.state.output[0]["pred"]
    assert pred.shape == (3, 8, 6, 5)
    with torch.no_grad():
        expected = by_hand(data[0]["image"][None], net, 2, (12, 12))[0]
    torch.testing.assert_close(pred, expected, atol=1e-5, rtol=1e-5)


def test_bad_input_names_the_file():
    volume = MetaTensor(torch.rand(1, 1, 9, 6), meta={"filename_or_obj": "/data/img0002.nii.gz"})
    with pytest.raises(ValueError, match="img0002.nii.gz.*got shape"):
        ResizedSliceInferer(spatial_size=8)(volume, tiny_net())
    with pytest.raises(ValueError, match="float volume"):
        ResizedSliceInferer(spatial_size=8)(torch.zeros(1, 1, 4, 4, 4, dtype=torch.long), tiny_net())
    with pytest.raises(RuntimeError, match="logits"):
        ResizedSliceInferer(spatial_size=8)(torch.rand(1, 1, 4, 4, 2), lambda x: x[:, 0])


@pytest.mark.parametrize("kwargs", [{"spatial_dim": 3}, {"sw_batch_size": 0}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        ResizedSliceInferer(**kwargs)
