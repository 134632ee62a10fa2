"""``protocol: transunet`` against a direct implementation of the published per-slice steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import zoom

from samora_monai.inferers import ResizedSliceInferer, TransUNetSliceInferer, slice_inferer

X, Y, Z = 13, 9, 5  # non-square slices, a slice count that batches of 3 do not divide


def volume() -> torch.Tensor:
    """Smooth blobs plus noise in [0, 1], ``[1, 1, X, Y, Z]``."""
    g = np.indices((X, Y, Z), dtype=np.float32)
    v = np.exp(-((g[0] - 6) ** 2 / 12 + (g[1] - 4) ** 2 / 6)) * (0.6 + 0.1 * g[2])
    v += 0.15 * np.random.default_rng(0).random((X, Y, Z), dtype=np.float32)
    return torch.from_numpy(v.astype(np.float32))[None, None]


def threshold_net(x: torch.Tensor) -> torch.Tensor:
    """Known network: 3-class logits by thresholding the input at 0.35 and 0.7, at the input size."""
    t = x[:, :1]
    return torch.cat([0.35 - t, torch.minimum(t - 0.35, 0.7 - t), t - 0.7], dim=1)


def low_res_net(x: torch.Tensor) -> torch.Tensor:
    """Known network whose logits are half the input size (as SAM's mask decoder)."""
    return F.avg_pool2d(threshold_net(x), 2)


def reference(vol: torch.Tensor, net, patch_size, input_size=None) -> np.ndarray:
    """TransUNet/SAMed ``test_single_volume``, written out slice by slice."""
    image = vol[0, 0].numpy()
    prediction = np.zeros(image.shape, np.int64)
    for ind in range(image.shape[-1]):
        s = image[:, :, ind]
        x, y = s.shape
        for size in [input_size, patch_size] if input_size else [patch_size]:
            if s.shape != (size, size):
                s = zoom(s, (size / s.shape[0], size / s.shape[1]), order=3)
        with torch.no_grad():
            out = torch.argmax(torch.softmax(net(torch.from_numpy(s)[None, None].float()), dim=1), dim=1)[0].numpy()
        h, w = out.shape
        prediction[:, :, ind] = zoom(out, (x / h, y / w), order=0) if (x, y) != (h, w) else out
    return prediction


@pytest.mark.parametrize(
    "net, input_size, batch", [(threshold_net, None, 3), (low_res_net, None, 16), (threshold_net, 12, 2)]
)
def test_matches_direct_implementation(net, input_size, batch):
    vol = volume()
    inferer = TransUNetSliceInferer(spatial_size=8, input_size=input_size, sw_batch_size=batch)
    out = inferer(vol, net)
    assert out.shape == (1, 3, X, Y, Z)
    assert set(torch.unique(out).tolist()) == {0.0, 1.0} and torch.all(out.sum(1) == 1)  # one-hot
    expected = reference(vol, net, 8, input_size)
    assert len(np.unique(expected)) == 3  # every class occurs: the comparison is not trivial
    np.testing.assert_array_equal(out.argmax(1)[0].numpy(), expected)
    # the bundle post-processing (softmax, argmax) keeps the labels
    np.testing.assert_array_equal(torch.softmax(out, 1).argmax(1)[0].numpy(), expected)


def test_differs_from_the_resize_protocol_and_factory():
    vol = volume()
    ours = ResizedSliceInferer(spatial_size=8)(vol, threshold_net).argmax(1)[0].numpy()
    published = slice_inferer("transunet", spatial_size=8)(vol, threshold_net).argmax(1)[0].numpy()
    assert np.any(ours != published)  # the protocols are not interchangeable
    assert isinstance(slice_inferer("resize", spatial_size=8), ResizedSliceInferer)
    assert type(slice_inferer("transunet", spatial_size=8, input_size=12)) is TransUNetSliceInferer
    with pytest.raises(ValueError, match="transunet"):
        slice_inferer("medpy", spatial_size=8)


def test_bad_network_output():
    with pytest.raises(RuntimeError, match="logits"):
        TransUNetSliceInferer(spatial_size=8)(volume(), lambda x: x[:, 0])


def test_transunet_takes_the_shared_arguments_and_refuses_the_resize_modes():
    inferer = slice_inferer("transunet", spatial_size=16, sw_batch_size=3, amp=False, amp_dtype="bf16", progress=False)
    assert (inferer.sw_batch_size, inferer.spatial_size, inferer.input_size) == (3, (16, 16), None)
    v = volume()
    out = inferer(v, threshold_net)
    assert out.shape == (1, 3, *v.shape[2:]) and torch.equal(out.sum(1), torch.ones_like(v[:, 0]))  # one-hot
    for key in ("input_mode", "output_mode"):
        with pytest.raises(TypeError, match=f"fixed orders.*{key}"):
            TransUNetSliceInferer(**{key: "nearest"})
