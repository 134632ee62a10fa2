"""2D slices from 3D volumes: slice selection, in-plane resizing, and the stage-2 slice dataset."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from monai.data import Dataset
from monai.transforms import Resize, apply_transform
from monai.utils import convert_to_tensor
from tqdm import tqdm

from samora_monai.data.readers import LoadVolumed

__all__ = ["VolumeSliceDataset", "resize_slices", "select_slices"]

logger = logging.getLogger(__name__)


def select_slices(
    image: torch.Tensor,
    label: torch.Tensor | None = None,
    foreground_only: bool = False,
    min_body_fraction: float = 0.0,
    body_threshold: float = 0.05,
) -> list[int]:
    """Indices of the slices (last axis) of ``image`` ``[C, X, Y, Z]`` to keep.

    Args:
        image: normalised volume ``[C, X, Y, Z]``.
        label: label volume ``[1, X, Y, Z]``; needed when ``foreground_only``.
        foreground_only: keep only slices whose label has a foreground voxel.
        min_body_fraction: keep only slices where more than this fraction of pixels exceeds ``body_threshold``
            (0 keeps every slice).
        body_threshold: normalised intensity above which a pixel counts as body.
    """
    keep = torch.ones(image.shape[-1], dtype=torch.bool)
    if foreground_only:
        if label is None:
            raise ValueError("foreground_only needs a label")
        keep &= (convert_to_tensor(label, track_meta=False) > 0).flatten(0, -2).any(0)
    if min_body_fraction > 0:
        body = (convert_to_tensor(image, track_meta=False) > body_threshold).flatten(0, -2).float().mean(0)
        keep &= body > min_body_fraction
    return torch.nonzero(keep).flatten().tolist()


def resize_slices(
    volume: torch.Tensor, indices: Sequence[int], spatial_size: int | Sequence[int], mode: str = "bilinear"
) -> torch.Tensor:
    """Cut slices ``indices`` of ``volume`` ``[C, X, Y, Z]`` and resize them in-plane: returns ``[N, C, S, S]``.

    ``mode``: ``"bilinear"``/``"bicubic"`` for images, ``"nearest"`` for labels.
    """
    size = (spatial_size, spatial_size) if isinstance(spatial_size, int) else tuple(spatial_size)
    volume = convert_to_tensor(volume, track_meta=False)
    n, c = len(indices), volume.shape[0]
    if n == 0:
        return volume.new_zeros((0, c, *size))
    stack = volume[..., list(indices)].permute(3, 0, 1, 2).reshape(n * c, *volume.shape[1:3])  # [N*C, X, Y]
    resized = Resize(size, mode=mode)(stack.float())
    return convert_to_tensor(resized, track_meta=False).reshape(n, c, *size)


class VolumeSliceDataset(Dataset):
    """2D training slices of 3D volumes, cut and resized once at construction and then served from memory.

    Each volume item passes through ``transform`` (load, label mapping, checks, intensity; e.g.
    :func:`~samora_monai.data.volume_transforms`) to ``{image: [C, X, Y, Z], label: [1, X, Y, Z]}``; its slices
    (``item["slices"]`` when given, else chosen by :func:`select_slices`) are resized to ``spatial_size`` and
    cached. ``__getitem__`` returns ``{image: [C, S, S] float32, label: [1, S, S] int64, source: "<file> (slice z)"}``
    after the per-slice random ``slice_transform`` (e.g. :func:`~samora_monai.data.slice_augmentations`); ``source``
    names the file in errors (:class:`~samora_monai.handlers.StopOnNonFiniteLoss`).

    Args:
        data: list of ``{image: path, label: path[, slices: [int]]}`` items (a MONAI datalist section).
        transform: volume-level transform; default: load the files only (:class:`LoadVolumed`).
        spatial_size: network input size S.
        foreground_only: keep only slices with label foreground.
        min_body_fraction, body_threshold: keep only slices with enough body, see :func:`select_slices`.
        slice_transform: per-slice transform applied at every ``__getitem__``.
        image_mode: interpolation of images when resizing (``"bilinear"`` or ``"bicubic"``); labels use nearest.
        image_key, label_key: data keys; items without ``label_key`` give image-only slices.
        progress: show a progress bar while caching.
    """

    def __init__(
        self,
        data: Sequence[dict],
        transform: Callable | None = None,
        spatial_size: int = 224,
        foreground_only: bool = False,
        min_body_fraction: float = 0.0,
        body_threshold: float = 0.05,
        slice_transform: Callable | None = None,
        image_mode: str = "bilinear",
        image_key: str = "image",
        label_key: str = "label",
        progress: bool = True,
    ) -> None:
        self.image_key, self.label_key = image_key, label_key
        volume_transform = transform or LoadVolumed([image_key, label_key], allow_missing_keys=True)
        images, labels, records = [], [], []
        for item in tqdm(data, desc="caching slices", disable=not progress):
            volume = apply_transform(volume_transform, dict(item))
            image, label = volume[image_key], volume.get(label_key)
            if "slices" in item:
                indices = [int(i) for i in item["slices"]]
                if any(i < 0 or i >= image.shape[-1] for i in indices):
                    raise ValueError(f"{item[image_key]}: slice index out of range 0..{image.shape[-1] - 1}")
            else:
                indices = select_slices(image, label, foreground_only, min_body_fraction, body_threshold)
            images.append(resize_slices(image, indices, spatial_size, image_mode))
            if label is not None:
                labels.append(resize_slices(label, indices, spatial_size, "nearest").round().to(torch.int16))
            records += [{"source": str(item[image_key]), "slice": i} for i in indices]
        if labels and len(labels) != len(images):
            raise ValueError(f"either every item or none must have a '{label_key}'")
        self.images = torch.cat(images) if images else torch.zeros(0, 1, spatial_size, spatial_size)
        self.labels = torch.cat(labels) if labels else None
        logger.info(f"{len(records)} slices of {len(images)} volumes at {spatial_size}x{spatial_size}")
        super().__init__(records, slice_transform)

    def _transform(self, index: int) -> dict:
        record = self.data[index]
        d = {self.image_key: self.images[index], "source": f"{record['source']} (slice {record['slice']})"}
        if self.labels is not None:
            d[self.label_key] = self.labels[index].float()
        if self.transform is not None:
            d = apply_transform(self.transform, d)
        d[self.image_key] = convert_to_tensor(d[self.image_key], track_meta=False, dtype=torch.float32)
        if self.labels is not None:
            d[self.label_key] = convert_to_tensor(d[self.label_key], track_meta=False).round().long()
        return d
