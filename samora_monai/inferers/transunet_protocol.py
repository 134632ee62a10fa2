"""The published TransUNet / SAMed / H-SAM / SAMora slice protocol, and the choice between it and ours.

``test_single_volume`` in those repositories (samora_method.md section 8) runs, for every axial slice of a test
volume: zoom the slice with ``scipy.ndimage.zoom(order=3)`` (cubic spline) to ``input_size`` and then to the
network size (SAMed/H-SAM; one zoom when both are equal), run the network, take the argmax of the logits at the
network's output size, and zoom the *label map* back to the slice size with ``order=0`` (nearest neighbour).
:class:`TransUNetSliceInferer` does exactly these steps per slice (per channel plane), in float32 as the reference.

:class:`~samora_monai.inferers.ResizedSliceInferer` (protocol ``"resize"``) instead resizes with
``torch.nn.functional.interpolate`` and resizes the *logits* back before the argmax: smoother boundaries, and
numbers not comparable with the published tables. :func:`slice_inferer` picks one by name, so a bundle switches
with one config value (``protocol``).

Both return ``[B, K+1, X, Y, Z]``; this protocol returns the one-hot of its label map (argmax happens inside), so
the usual ``Activationsd(softmax) -> AsDiscreted(argmax)`` post-processing gives the same labels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.utils import ensure_tuple_rep, look_up_option
from scipy import ndimage

from .slice_inferer import ResizedSliceInferer

__all__ = ["SLICE_PROTOCOLS", "TransUNetSliceInferer", "slice_inferer", "zoom_planes"]


def zoom_planes(array: np.ndarray, size: Sequence[int], order: int) -> np.ndarray:
    """``scipy.ndimage.zoom`` of every 2D plane of ``array`` ``[..., h, w]`` to ``size`` by the factors
    ``(size[0] / h, size[1] / w)``, as the reference does per slice; planes already at ``size`` are kept."""
    h, w = array.shape[-2:]
    if (h, w) == tuple(size):
        return array
    planes = array.reshape(-1, h, w)
    out = np.stack([ndimage.zoom(p, (size[0] / h, size[1] / w), order=order) for p in planes])
    if out.shape[-2:] != tuple(size):
        raise RuntimeError(f"zoom of a {h}x{w} plane gave {out.shape[-2:]}, expected {tuple(size)}")
    return out.reshape(*array.shape[:-2], *size)


class TransUNetSliceInferer(ResizedSliceInferer):
    """Slice-by-slice inference with the published protocol: zoom (order 3) in, argmax, zoom (order 0) back.

    Input ``[B, C, X, Y, Z]`` float volume; output ``[B, K+1, X, Y, Z]``, the one-hot label map (float).

    Args:
        spatial_size: the network's input size ``(h, w)`` (an int for square), the reference's ``patch_size``;
            ``None`` runs slices at their size.
        input_size: optional first zoom target before ``spatial_size`` (SAMed/H-SAM ``input_size``, e.g. 224 before
            a 512 network); ``None`` zooms once.
        spatial_dim, sw_batch_size, amp, amp_dtype, sw_device, device, progress: as :class:`ResizedSliceInferer`.
    """

    def __init__(
        self,
        spatial_size: Sequence[int] | int | None = 224,
        input_size: Sequence[int] | int | None = None,
        **kwargs: Any,
    ) -> None:
        fixed = sorted({"input_mode", "output_mode"} & set(kwargs))
        if fixed:
            raise TypeError(f"the transunet protocol zooms with fixed orders (3 in, 0 back); {fixed} do not apply")
        super().__init__(spatial_size=spatial_size, **kwargs)
        self.input_size = None if input_size is None else tuple(ensure_tuple_rep(input_size, 2))

    def infer_slices(
        self, network: Callable[..., torch.Tensor], x: torch.Tensor, condition: torch.Tensor | None = None,
        *args: Any, **kwargs: Any,
    ) -> torch.Tensor:
        """Slices ``x`` ``[N, C, Y, Z]`` -> one-hot labels ``[N, K+1, Y, Z]`` (float) at slice size."""
        if condition is not None:
            raise ValueError("the transunet protocol runs the network on the image slices only (no condition)")
        slice_size = tuple(x.shape[-2:])
        planes = x.detach().float().cpu().numpy()
        for size in (self.input_size, self.spatial_size):
            if size is not None:
                planes = zoom_planes(planes, size, order=3)
        inputs = torch.from_numpy(np.ascontiguousarray(planes)).to(x.device)
        out = self.run_network(network, inputs, *args, **kwargs)
        labels = zoom_planes(out.float().argmax(1).cpu().numpy(), slice_size, order=0)  # argmax == argmax(softmax)
        onehot = F.one_hot(torch.from_numpy(labels).long(), out.shape[1]).permute(0, 3, 1, 2)
        return onehot.to(device=x.device, dtype=torch.float32)

SLICE_PROTOCOLS: dict[str, type[ResizedSliceInferer]] = {
    "resize": ResizedSliceInferer,
    "transunet": TransUNetSliceInferer,
}


def slice_inferer(protocol: str = "resize", **kwargs: Any) -> ResizedSliceInferer:
    """The slice inferer of an evaluation ``protocol``: ``"resize"`` (:class:`ResizedSliceInferer`, resize the
    logits back) or ``"transunet"`` (:class:`TransUNetSliceInferer`, the published protocol); ``kwargs`` go to
    its constructor (``spatial_size``, ``sw_batch_size``, ``amp``, ... common to both)."""
    return look_up_option(protocol, SLICE_PROTOCOLS)(**kwargs)
