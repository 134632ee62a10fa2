"""MONAI transforms shared by every stage: intensity normalisation, label mapping, input checks, slice augmentation.

The same :func:`intensity_transform` serves stage 1, stage 2 and inference, so the experts see the intensities the
fine-tuned network and the deployed model see.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    Identityd,
    MapTransform,
    RandFlipd,
    RandRotate90d,
    RandRotated,
    RandZoomd,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
)
from monai.utils import convert_to_dst_type, convert_to_tensor, ensure_tuple

from samora_monai.data.readers import LoadVolumed
from samora_monai.data.validation import ValidateVolumed, check_integer_label, filename
from samora_monai.utils import optional_value

__all__ = [
    "BTCV_TO_SYNAPSE",
    "CT_WINDOW",
    "MR_PERCENTILES",
    "SYNAPSE_CLASSES",
    "MapLabelsd",
    "ValidateVolumed",
    "intensity_transform",
    "slice_augmentations",
    "volume_transforms",
]

CT_WINDOW: tuple[float, float] = (-125.0, 275.0)
MR_PERCENTILES: tuple[float, float] = (0.5, 99.5)
# the 8 Synapse classes in TransUNet/SAMed/H-SAM index order (data/splits/README.md)
SYNAPSE_CLASSES: tuple[str, ...] = (
    "spleen", "right_kidney", "left_kidney", "gallbladder", "liver", "stomach", "aorta", "pancreas"
)  # fmt: skip
# raw BTCV label id -> Synapse class index; every other BTCV id (5, 9, 10, 12, 13) becomes background
BTCV_TO_SYNAPSE: dict[int, int] = {1: 1, 2: 2, 3: 3, 4: 4, 6: 5, 7: 6, 8: 7, 11: 8}
MODALITIES = ("ct", "mr", "none")
logger = logging.getLogger(__name__)


def intensity_transform(
    modality: str = "ct",
    keys: KeysCollection = "image",
    window: Sequence[float] = CT_WINDOW,
    percentiles: Sequence[float] = MR_PERCENTILES,
) -> MapTransform:
    """The intensity pipeline, mapping images to [0, 1].

    Args:
        modality: ``"ct"``: clip to ``window`` (HU) and scale linearly to [0, 1]; ``"mr"``: scale the
            ``percentiles`` (per image) to [0, 1] and clip; ``"none"``: keep the values (data already in [0, 1],
            e.g. TransUNet npz/h5).
        keys: keys of the images to normalise.
        window: CT window (low, high) in HU.
        percentiles: MR percentiles (low, high).
    """
    modality = modality.lower()
    if modality == "ct":
        return ScaleIntensityRanged(keys, a_min=window[0], a_max=window[1], b_min=0.0, b_max=1.0, clip=True)
    if modality == "mr":
        return ScaleIntensityRangePercentilesd(
            keys, lower=percentiles[0], upper=percentiles[1], b_min=0.0, b_max=1.0, clip=True
        )
    if modality == "none":
        return Identityd(keys)
    raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")


class MapLabelsd(MapTransform):
    """Map label values through ``mapping``; values not in it become ``default``.

    Example: ``MapLabelsd("label", BTCV_TO_SYNAPSE)`` turns the 13 BTCV organs into the 8 Synapse classes.
    ``mapping`` keys may be strings (JSON configs). An empty mapping is refused (it would erase every label; use no
    mapping instead). Values that the mapping sends to ``default`` without listing them (BTCV's 5, 9, 10, 12, 13)
    are reported with their voxel counts, one log line per volume, and kept in :attr:`last_dropped`.
    """

    def __init__(
        self, keys: KeysCollection, mapping: Mapping, default: int = 0, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not isinstance(mapping, Mapping) or not mapping:
            raise ValueError(
                f"label_mapping must be a non-empty {{file label id: class index}} mapping, got {mapping!r} (an empty "
                "mapping would send every label to background); to keep the labels as they are, set label_mapping to "
                "null (--label_mapping null on the command line)"
            )
        self.mapping = {int(k): int(v) for k, v in mapping.items()}
        if any(k < 0 for k in self.mapping):
            raise ValueError(f"label mapping keys must be non-negative, got {sorted(self.mapping)}")
        self.default = int(default)
        table = np.full(max(self.mapping, default=0) + 1, self.default, dtype=np.int64)
        for k, v in self.mapping.items():
            table[k] = v
        self.table = torch.as_tensor(table)
        self.last_dropped: dict[int, int] = {}

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            check_integer_label(d[key], str(key))
            values = convert_to_tensor(d[key], track_meta=False).round().long()
            self._report(values, filename(d[key]))
            in_table = (values >= 0) & (values < len(self.table))
            mapped = torch.full_like(values, self.default)
            mapped[in_table] = self.table.to(values.device)[values[in_table]]
            d[key] = convert_to_dst_type(mapped, d[key], dtype=d[key].dtype)[0]
        return d

    def _report(self, values: torch.Tensor, name: str) -> None:
        ids, counts = torch.unique(values, return_counts=True)
        pairs = zip(ids.tolist(), counts.tolist(), strict=True)
        self.last_dropped = {i: c for i, c in pairs if i not in self.mapping and i != self.default}
        if self.last_dropped:
            logger.warning(
                f"{name}: label values not in label_mapping become {self.default} (voxel counts): {self.last_dropped}"
            )


def volume_transforms(
    modality: str = "ct",
    image_key: str = "image",
    label_key: str | None = "label",
    label_mapping: Mapping | None = None,
    num_classes: int | None = None,
    window: Sequence[float] = CT_WINDOW,
    percentiles: Sequence[float] = MR_PERCENTILES,
    spacing: Sequence[float] | None = None,
) -> Compose:
    """Load, check and normalise a volume: ``{image: path[, label: path]}`` -> ``{image: [1,X,Y,Z] in [0, 1],
    label: [1,X,Y,Z]}``. ``label_key=None`` loads the image only (inference, unlabeled data).

    Every input passes :class:`~samora_monai.data.validation.ValidateVolumed`. ``label_mapping`` and ``spacing``
    accept None or the strings ``"null"``/``"none"`` for "off" (what ``--label_mapping null`` gives).
    """
    label_mapping, spacing = optional_value(label_mapping), optional_value(spacing)
    keys = [image_key] if label_key is None else [image_key, label_key]
    steps: list = [LoadVolumed(keys, spacing=spacing)]
    if label_key is not None and label_mapping is not None:
        steps.append(MapLabelsd(label_key, label_mapping))
    steps.append(ValidateVolumed(image_key, label_key, num_classes))
    steps.append(intensity_transform(modality, image_key, window, percentiles))
    return Compose(steps)


def slice_augmentations(
    image_keys: KeysCollection = "image",
    label_keys: KeysCollection = "label",
    prob: float = 0.5,
    rotate_degrees: float = 20.0,
    zoom: Sequence[float] = (0.9, 1.1),
    image_mode: str = "bilinear",
) -> Compose:
    """Random 2D augmentations of ``[C, S, S]`` slices (SAMed/H-SAM style): rot90 and flips, a rotation within
    ``+-rotate_degrees``, and a zoom in ``zoom`` (size kept). Images interpolate with ``image_mode``, labels with
    nearest neighbour; ``label_keys`` may be empty (unlabeled slices)."""
    image_keys, label_keys = list(ensure_tuple(image_keys)), list(ensure_tuple(label_keys))
    keys = image_keys + label_keys
    modes = [image_mode] * len(image_keys) + ["nearest"] * len(label_keys)
    return Compose(
        [
            RandRotate90d(keys, prob=prob, spatial_axes=(0, 1)),
            RandFlipd(keys, prob=prob / 2, spatial_axis=0),
            RandFlipd(keys, prob=prob / 2, spatial_axis=1),
            RandRotated(keys, range_x=math.radians(rotate_degrees), prob=prob, mode=modes, padding_mode="zeros"),
            RandZoomd(keys, prob=prob, min_zoom=zoom[0], max_zoom=zoom[1], mode=modes, keep_size=True),
        ]
    )
