"""Stage-2 loss on the mask decoder's low-resolution logits, as SAMed and H-SAM train.

SAMed/H-SAM compute Dice + CE on ``outputs['low_res_logits']`` (``[B, K+1, S/4, S/4]``, the decoder's own
resolution) against labels zoomed down with ``scipy.ndimage.zoom(order=0)`` in their dataset, instead of on
logits upsampled to the image size. :class:`LowResLoss` wraps any segmentation loss to do the same with the
``forward_with_aux`` outputs of :class:`~samora_monai.networks.SamoraNet`; the labels are zoomed on the tensor's
device with scipy's order-0 sampling (:func:`zoom_nearest`), so they match the reference's labels voxel for voxel
(tested for 224 -> 56, 512 -> 128; one difference: where scipy's float rounding puts its last output row or column
just outside the input when upsampling, scipy writes 0 there and :func:`zoom_nearest` the edge label).

Wiring (SupervisedTrainer calls ``loss_function(inferer(inputs, network), labels)``): the training inferer must
return the ``forward_with_aux`` dict, e.g. ``"$lambda x, net, *a, **k: net.forward_with_aux(x)"`` on one GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from monai.utils import look_up_option
from torch import nn

__all__ = ["LOSS_RESOLUTIONS", "LowResLoss", "stage2_loss", "zoom_nearest"]

LOSS_RESOLUTIONS = ("full", "low")


def _nearest_index(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """Source index of each output index for ``scipy.ndimage.zoom(order=0)`` (``grid_mode=False``): the output
    grid's end points map to the input's, ``i -> floor(i * (n_in - 1) / (n_out - 1) + 0.5)``."""
    if n_out == 1:
        return torch.zeros(1, dtype=torch.long, device=device)
    i = torch.arange(n_out, dtype=torch.float64, device=device)
    return torch.floor(i * ((n_in - 1) / (n_out - 1)) + 0.5).long().clamp_(0, n_in - 1)


def zoom_nearest(label: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Zoom the last two axes of ``label`` (e.g. ``[B, 1, H, W]``) to ``size`` as ``scipy.ndimage.zoom(order=0)``."""
    rows = _nearest_index(label.shape[-2], size[0], label.device)
    cols = _nearest_index(label.shape[-1], size[1], label.device)
    return label.index_select(-2, rows).index_select(-1, cols)


class LowResLoss(nn.Module):
    """``loss(outputs[key], zoom_nearest(label, low-res size))`` for dict outputs of ``forward_with_aux``.

    Args:
        loss: the segmentation loss, called as ``loss(logits [B, K+1, h, w], label [B, 1, h, w])`` (e.g.
            :func:`~samora_monai.losses.segmentation_loss`).
        key: the entry of the network's output dict holding the low-resolution logits.
    """

    def __init__(self, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], key: str = "low_res_logits"):
        super().__init__()
        self.loss, self.key = loss, key

    def forward(self, outputs: Mapping[str, torch.Tensor], label: torch.Tensor) -> torch.Tensor:
        """``outputs``: ``{key: [B, K+1, h, w], ...}``; ``label``: ``[B, 1, H, W]`` class indices."""
        if not isinstance(outputs, Mapping) or self.key not in outputs:
            got = sorted(outputs) if isinstance(outputs, Mapping) else type(outputs).__name__
            raise ValueError(f"LowResLoss needs the network's forward_with_aux dict with {self.key!r}, got {got}")
        logits = outputs[self.key]
        if label.ndim != logits.ndim or label.shape[0] != logits.shape[0]:
            raise ValueError(f"label {tuple(label.shape)} does not match logits {tuple(logits.shape)}")
        return self.loss(logits, zoom_nearest(label, logits.shape[-2:]))


def stage2_loss(
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], resolution: str = "full"
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The stage-2 loss at ``resolution``: ``"full"`` (``loss`` on the logits at the image size) or ``"low"``
    (:class:`LowResLoss`, on the decoder's low-resolution logits as SAMed/H-SAM; the trainer's inferer must then be
    :class:`~samora_monai.inferers.AuxOutputInferer`)."""
    return loss if look_up_option(resolution, LOSS_RESOLUTIONS) == "full" else LowResLoss(loss)
