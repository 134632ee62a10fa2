"""Input validation on load: one set of checks for every entry point (train, evaluate, inference, stage-1
preparation, MONAI Label, Auto3DSeg), all of which load through :func:`~samora_monai.data.volume_transforms`.

Each problem stops with ``ValueError("<file>: <problem>; <fix>")`` before anything is computed or written:

- a channel / 4th dimension (``[C>1, X, Y, Z]`` after loading), a volume that is not 3D, an empty volume;
- an image with non-finite voxels (NaN, inf) or of constant value (a volume of more than one slice);
- a label that is not integer-valued, of another shape than the image, with another affine than the image (beyond
  ``affine_atol`` mm), or with values outside ``0..num_classes``.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import convert_to_tensor

__all__ = ["ValidateVolumed", "check_integer_label", "check_volume", "filename"]


def filename(x: object) -> str:
    """The file a loaded ``MetaTensor`` came from (``meta["filename_or_obj"]``), or ``"<unknown file>"``."""
    meta = getattr(x, "meta", None) or {}
    name = meta.get("filename_or_obj", "<unknown file>")
    if isinstance(name, (list, tuple)):  # a DICOM series read from a folder
        name = name[0] if len(name) == 1 else f"{os.path.dirname(str(name[0]))} ({len(name)} files)"
    return str(name)


def _values(x: torch.Tensor) -> torch.Tensor:
    return convert_to_tensor(x, track_meta=False)


def check_shape(x: torch.Tensor, key: str = "image", spatial_dims: int = 3) -> None:
    """``x`` must be ``[1, *spatial]`` with ``spatial_dims`` non-empty spatial axes."""
    name = filename(x)
    if x.numel() == 0:
        raise ValueError(f"{name}: {key} is empty (no voxels, shape {tuple(x.shape)}); remove it from the input")
    if x.ndim - 1 != spatial_dims:
        raise ValueError(
            f"{name}: {key} has {x.ndim - 1} spatial dimensions (shape {tuple(x.shape[1:])}), expected a "
            f"{spatial_dims}D volume; give one {spatial_dims}D volume per file"
        )
    if x.shape[0] != 1:
        raise ValueError(
            f"{name}: {key} has {x.shape[0]} channels (a 4th dimension of size {x.shape[0]}, shape "
            f"{tuple(x.shape[1:])} x {x.shape[0]}), expected a single-channel 3D volume; save each channel or time "
            "point as its own file and list the one to use"
        )


def check_integer_label(label: torch.Tensor, key: str = "label") -> None:
    """``label`` must hold finite integer values (class ids)."""
    values = _values(label)
    if values.is_floating_point():
        bad = ~torch.isfinite(values) | (values != values.round())
        if bool(bad.any()):
            example = float(values[bad].flatten()[0])
            raise ValueError(
                f"{filename(label)}: {key} is not integer-valued ({int(bad.sum())} voxels, e.g. {example:g}); labels "
                "must be integer class ids: check that the label file (not an image or a probability map) is given"
            )


def check_image_values(image: torch.Tensor, key: str = "image") -> None:
    """``image`` must be finite and, unless it is a single slice (a TransUNet npz slice may be all air), not of
    constant value."""
    values = _values(image)
    if values.is_floating_point():
        bad = int((~torch.isfinite(values)).sum())
        if bad:
            raise ValueError(
                f"{filename(image)}: {key} has {bad} non-finite voxels (NaN or inf) of {values.numel()}; replace "
                "them (e.g. by the background value) before using the file"
            )
    lo, hi = float(values.min()), float(values.max())
    if lo == hi and values.shape[-1] > 1:
        raise ValueError(
            f"{filename(image)}: {key} has the constant value {lo:g} everywhere (a blank scan); remove it from the "
            "input"
        )


def check_label_matches(label: torch.Tensor, image: torch.Tensor, affine_atol: float = 1e-3) -> None:
    """``label`` must have the shape and (within ``affine_atol`` mm) the affine of ``image``."""
    if tuple(label.shape[1:]) != tuple(image.shape[1:]):
        raise ValueError(
            f"{filename(label)}: label shape {tuple(label.shape[1:])} does not match image shape "
            f"{tuple(image.shape[1:])} ({filename(image)}); resample the label to the image grid"
        )
    if isinstance(label, MetaTensor) and isinstance(image, MetaTensor):
        a, b = np.asarray(label.affine, np.float64), np.asarray(image.affine, np.float64)
        diff = float(np.abs(a - b).max())
        if diff > affine_atol:
            raise ValueError(
                f"{filename(label)}: label affine differs from the affine of image {filename(image)} by up to "
                f"{diff:.4g} (tolerance {affine_atol:g}):\nlabel {a.round(4).tolist()}\nimage {b.round(4).tolist()}\n"
                "the label does not lie on the image grid; resample it to the image or fix its header"
            )


def check_label_range(label: torch.Tensor, num_classes: int) -> None:
    """``label`` values must lie in ``0..num_classes``."""
    lo, hi = float(label.min()), float(label.max())
    if lo < 0 or hi > num_classes:
        raise ValueError(
            f"{filename(label)}: label values range [{lo:g}, {hi:g}], expected 0..{num_classes} ({num_classes} "
            "classes); map the label ids first (label_mapping) or fix num_classes / class_names"
        )


def check_volume(
    image: torch.Tensor | None,
    label: torch.Tensor | None = None,
    num_classes: int | None = None,
    spatial_dims: int = 3,
    affine_atol: float = 1e-3,
) -> None:
    """Every check of this module on a loaded ``image`` ``[1, X, Y, Z]`` and/or ``label`` ``[1, X, Y, Z]``."""
    if image is not None:
        check_shape(image, "image", spatial_dims)
        check_image_values(image)
    if label is not None:
        check_shape(label, "label", spatial_dims)
        check_integer_label(label)
        if image is not None:
            check_label_matches(label, image, affine_atol)
        if num_classes is not None:
            check_label_range(label, num_classes)


class ValidateVolumed(MapTransform):
    """Stop bad input early with an error naming the file (see the module docstring for the checks).

    Args:
        image_key: key of the image ``[1, *spatial]`` (skipped when absent).
        label_key: key of the label ``[1, *spatial]`` (skipped when None or absent).
        num_classes: number of foreground classes; labels must be integers in ``[0, num_classes]``. None: no range
            check.
        spatial_dims: expected number of spatial dimensions.
        affine_atol: largest accepted difference between the label's and the image's affine entries (mm).
    """

    def __init__(
        self,
        image_key: str = "image",
        label_key: str | None = "label",
        num_classes: int | None = None,
        spatial_dims: int = 3,
        affine_atol: float = 1e-3,
    ) -> None:
        super().__init__([image_key] if label_key is None else [image_key, label_key], allow_missing_keys=True)
        self.image_key, self.label_key = image_key, label_key
        self.num_classes, self.spatial_dims, self.affine_atol = num_classes, spatial_dims, affine_atol

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> Mapping[Hashable, torch.Tensor]:
        label = data.get(self.label_key) if self.label_key is not None else None
        check_volume(data.get(self.image_key), label, self.num_classes, self.spatial_dims, self.affine_atol)
        return data
