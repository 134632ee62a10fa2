"""Volume inference with a 2D network: every slice resized to the network's input size and back.

Why not MONAI's ``SliceInferer`` as is: it tiles each slice into ``roi_size`` windows (sliding window with
padding and blending), so a 512x512 CT slice run with ``roi_size=(224, 224)`` is cut into overlapping crops.
SAM-based networks (SAMed, H-SAM, SAMora) are trained and evaluated on *whole* slices zoomed to the network
size, so the whole-slice context must be kept. ``ResizedSliceInferer`` therefore
extends ``SliceInferer`` with a full-slice window (``roi_size=(-1, -1)``: one window per slice, no padding,
no blending) and wraps the network so that each batch of slices is resized to ``spatial_size``, run (under
autocast on CUDA), and its logits resized back to the slice size. MONAI moves each batch of slices to
``sw_device`` before the wrapper runs, so with ``sw_device="cuda"`` the resizing in and out runs on the GPU.
Batching over slices, ``sw_device`` / ``device`` placement, the MetaTensor metadata of the input and the
``progress`` bar come from MONAI.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.inferers import SliceInferer
from monai.utils import ensure_tuple_rep

from samora_monai.networks.acceleration import autocast, resolve_amp_dtype

__all__ = ["ResizedSliceInferer"]


def _source(inputs: torch.Tensor) -> str:
    if isinstance(inputs, MetaTensor):
        src = inputs.meta.get("filename_or_obj")
        if isinstance(src, (list, tuple)):
            src = src[0] if src else None
        if src:
            return f" ({src})"
    return ""


class ResizedSliceInferer(SliceInferer):
    """Run a 2D network over the slices of ``[B, C, X, Y, Z]`` volumes; returns ``[B, K+1, X, Y, Z]`` logits.

    Usable wherever MONAI expects an ``Inferer`` (``SupervisedEvaluator``, bundle ``inferer``, MONAI Label's
    ``BundleInferTask``): ``inferer(inputs, network)``.

    Args:
        spatial_size: the network's input size ``(h, w)`` (an int for square); ``None`` runs slices at their size.
        spatial_dim: spatial axis to slice along, ``0``, ``1``, ``2`` or ``-1`` (the last, axial after ``RAS``).
        sw_batch_size: number of slices per network call.
        input_mode: interpolation for the image slices (``"bilinear"``, ``"bicubic"``, ``"area"``, ``"nearest"``).
        output_mode: interpolation for the logits back to slice size (``"bilinear"`` or ``"nearest"``).
        amp: autocast when the slices are on a CUDA device; always plain float32 on CPU.
        amp_dtype: the autocast type, ``"fp16"`` (default) or ``"bf16"``; the networks' softmaxes stay float32.
        sw_device: device the network runs on (default: the input's).
        device: device of the returned volume (default: the input's).
        progress: show a tqdm bar over slice batches.
    """

    def __init__(
        self,
        spatial_size: Sequence[int] | int | None = 224,
        spatial_dim: int = -1,
        sw_batch_size: int = 16,
        input_mode: str = "bilinear",
        output_mode: str = "bilinear",
        amp: bool = True,
        amp_dtype: str = "fp16",
        sw_device: torch.device | str | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
    ) -> None:
        if spatial_dim not in (-1, 0, 1, 2):
            raise ValueError(f"spatial_dim must be 0, 1, 2 or -1, got {spatial_dim}")
        if sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
        super().__init__(
            spatial_dim=spatial_dim % 3,
            roi_size=(-1, -1),
            sw_batch_size=sw_batch_size,
            overlap=0.0,
            sw_device=sw_device,
            device=device,
            progress=progress,
        )
        self.spatial_size = None if spatial_size is None else tuple(ensure_tuple_rep(spatial_size, 2))
        self.input_mode = input_mode
        self.output_mode = output_mode
        self.amp = amp
        self.amp_dtype = resolve_amp_dtype(amp_dtype)

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """``inputs``: ``[B, C, X, Y, Z]`` float volume; ``network``: ``[N, C, h, w] -> [N, K+1, h, w]`` logits."""
        if inputs.ndim != 5:
            raise ValueError(
                f"expected a 3D volume batch [B, C, X, Y, Z]{_source(inputs)}, got shape {tuple(inputs.shape)}"
            )
        if not inputs.is_floating_point():
            raise ValueError(f"expected a float volume{_source(inputs)}, got dtype {inputs.dtype}")
        return super().__call__(inputs, network, *args, **kwargs)

    def _resize(self, x: torch.Tensor, size: Sequence[int], mode: str) -> torch.Tensor:
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        align = False if mode in ("bilinear", "bicubic") else None
        return F.interpolate(x, size=tuple(size), mode=mode, align_corners=align)

    def network_wrapper(
        self,
        network: Callable[..., torch.Tensor],
        x: torch.Tensor,
        condition: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        """``x``: ``[N, C, 1, Y, Z]``-like slab of ``N`` slices -> :meth:`infer_slices`' output, same layout."""
        dim = self.spatial_dim + 2
        if isinstance(x, MetaTensor):
            x = x.as_tensor()  # the network sees a plain tensor
        cond = None if condition is None else condition.squeeze(dim)
        return self.infer_slices(network, x.squeeze(dim), cond, *args, **kwargs).unsqueeze(dim)

    def infer_slices(
        self, network: Callable[..., torch.Tensor], x: torch.Tensor, condition: torch.Tensor | None = None,
        *args: Any, **kwargs: Any,
    ) -> torch.Tensor:
        """Slices ``x`` ``[N, C, Y, Z]`` (``condition``: passed to the network after them) -> logits
        ``[N, K+1, Y, Z]``: resized to ``spatial_size`` for the network, and back to the slice size."""
        slice_size = x.shape[-2:]
        if self.spatial_size is not None:
            x = self._resize(x, self.spatial_size, self.input_mode)
        cond = [] if condition is None else [condition]
        out = self.run_network(network, x, *cond, *args, **kwargs)
        return self._resize(out.float(), slice_size, self.output_mode)

    def run_network(
        self, network: Callable[..., torch.Tensor], x: torch.Tensor, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """``network(x, *args, **kwargs)`` (autocast with ``amp`` on CUDA), checked to be logits ``[N, K+1, h, w]``
        for the ``N`` slices of ``x``."""
        use_amp = self.amp and x.device.type == "cuda"
        with autocast(x.device, self.amp_dtype if use_amp else None):
            out = network(x, *args, **kwargs)
        if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[0] != x.shape[0]:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise RuntimeError(f"the network must return logits [N, K+1, h, w] for {x.shape[0]} slices, got {shape}")
        return out
