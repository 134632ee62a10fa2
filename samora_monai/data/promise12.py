"""PROMISE12 (prostate T2w MRI, MICCAI 2012): readers for its two file formats and the published settings.

==========================================  ===================  =========================================
file                                        array on disk        conversion to (X, Y, Z)
==========================================  ===================  =========================================
challenge ``CaseXX.mhd`` (+ ``.raw``) and   MetaImage, ITK       MONAI ``ITKReader`` (index order X, Y, Z;
``CaseXX_segmentation.mhd``                 index order X, Y, Z  affine from spacing/origin/direction, RAS)
H-SAM/TransUNet ``all_data_prepro/          pickled dict         ``transpose(2, 1, 0)`` (as the TransUNet
CaseXX.npy``                                ``{'img', 'label'}``  ``*.npy.h5`` volumes); affine
                                            of (D, H, W) arrays  ``diag(spacing, 1)``, 1 mm by default
==========================================  ===================  =========================================

The ``.npy`` dicts can only be read with ``numpy.load(allow_pickle=True)``: unpickling runs code stored in the
file, so :class:`NpyDictReader` is the only reader that enables it, only for files ending in ``.npy``, and only
the published preprocessed set (or files you made) should be read with it.

Settings (split lists in ``splits/promise12``, copied from H-SAM ``lists/lists_PROMISE_3``):

- ``promise12_3scans``: ``training`` = Case05, Case14, Case29 with their 58 published foreground ``slices``;
- ``promise12_full``: ``training`` = the 40 labelled challenge cases Case00..Case49 that are not test cases,
  all slices;
- both: ``testing`` = the 10 ``promise12_test`` cases.

The published slice indices index the first (D) axis of the preprocessed ``.npy`` volumes, i.e. Z after loading.
With the raw ``.mhd`` volumes they index Z of the challenge volume, which is the same slice only if the (not
published) preprocessing kept the slice order and count; the ``.npy`` set is the reference for that setting.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from monai.config import PathLike
from monai.data import ImageReader, ITKReader
from monai.utils import ensure_tuple, look_up_option

from samora_monai.data.datalists import _require, group_slices, load_split
from samora_monai.data.readers import _geometry_meta, _single

__all__ = [
    "PROMISE12_CASES",
    "PROMISE12_SETTINGS",
    "MetaImageReader",
    "NpyDictReader",
    "promise12_datalist",
]

PROMISE12_CASES: tuple[str, ...] = tuple(f"Case{i:02d}" for i in range(50))  # the labelled challenge cases
PROMISE12_SETTINGS: tuple[str, ...] = ("promise12_3scans", "promise12_full")
NPY_KEYS = {"image": "img"}  # data key -> key in the H-SAM dicts (labels are stored under "label")
NPY_AXES = {"DHW": (2, 1, 0), "DWH": (1, 2, 0)}  # on-disk order -> transpose to (X, Y, Z)
_CASE = re.compile(r"Case\d\d")


class MetaImageReader(ITKReader):
    """MONAI's ``ITKReader`` restricted to MetaImage files (``.mhd`` header + ``.raw`` data, or ``.mha``).

    ``ITKReader`` accepts every suffix, so in a reader list it would take files meant for the other readers;
    this subclass only claims MetaImage. Arrays come out in ITK index order (X, Y, Z) with the affine from the
    header (converted to RAS). Needs the ``itk`` package.
    """

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        return all(str(f).lower().endswith((".mhd", ".mha")) for f in ensure_tuple(filename))


class NpyDictReader(ImageReader):
    """Read one entry of an H-SAM/TransUNet-style ``.npy`` volume (a pickled dict of 3D arrays) as (X, Y, Z).

    Args:
        key: data key; ``"image"`` reads the dict's ``"img"``, any other key (``"label"``) the entry of that name.
        axes: on-disk axis order, ``"DHW"`` (PROMISE12 ``all_data_prepro``) or ``"DWH"`` (H-SAM's LA test files).
        spacing: voxel size in mm along (X, Y, Z) for the affine; 1 mm when None (the files carry no geometry).
    """

    def __init__(self, key: str = "image", axes: str = "DHW", spacing: Sequence[float] | None = None):
        super().__init__()
        self.key = NPY_KEYS.get(key, key)
        self.axes = look_up_option(axes, NPY_AXES)
        self.spacing = spacing

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        return all(str(f).lower().endswith(".npy") for f in ensure_tuple(filename))

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs) -> tuple[np.ndarray, str]:
        name = _single(data)
        content = np.load(name, allow_pickle=True)  # the documented pickled-dict format, see the module docstring
        entry = content.item() if content.dtype == object and content.shape == () else None
        if not isinstance(entry, dict):
            raise ValueError(f"{name}: expected a pickled dict {{'img', 'label'}}, got an array {content.shape}")
        if self.key not in entry:
            raise KeyError(f"{name}: no entry {self.key!r} (has {sorted(entry)})")
        return np.asarray(entry[self.key]), name

    def get_data(self, img: tuple[np.ndarray, str]) -> tuple[np.ndarray, dict]:
        array, name = img
        if array.ndim != 3:
            raise ValueError(f"{name}: entry {self.key!r} has shape {array.shape}, expected a 3D volume")
        array = np.ascontiguousarray(array.transpose(self.axes))
        return array, _geometry_meta(array, self.spacing)


def _collect(folders: list[Path], suffix: str) -> dict[str, Path]:
    """``CaseXX<suffix>`` files in ``folders`` by case; a case found twice is an error naming both files."""
    found: dict[str, Path] = {}
    for p in (p for d in folders for p in sorted(d.glob(f"Case*{suffix}")) if _CASE.fullmatch(p.stem)):
        if p.stem in found:
            raise ValueError(f"PROMISE12 {p.stem} found twice: {found[p.stem]} and {p}")
        found[p.stem] = p
    return found


def _find_cases(root: Path) -> tuple[str, dict[str, dict[str, str]]]:
    """Detect the format under ``root`` (or ``root/*/``); returns (format, case -> {"image", "label"})."""
    folders = [root, *sorted(p for p in root.iterdir() if p.is_dir())] if root.is_dir() else []
    npy = _collect(folders, ".npy")
    if npy:
        return "npy", {c: {"image": str(p), "label": str(p)} for c, p in npy.items()}
    mhd = _collect(folders, ".mhd")
    if mhd:
        return "mhd", {c: {"image": str(p), "label": str(p.with_name(f"{c}_segmentation.mhd"))} for c, p in mhd.items()}
    raise FileNotFoundError(f"{root}: no PROMISE12 files (CaseXX.npy, or CaseXX.mhd with CaseXX_segmentation.mhd)")


def promise12_datalist(root: str | os.PathLike, setting: str = "promise12_3scans") -> dict[str, list[dict]]:
    """Datalist of PROMISE12 under ``root``, in either format (``CaseXX.npy`` dicts, or the challenge's
    ``CaseXX.mhd``/``CaseXX_segmentation.mhd`` pairs; in ``root`` or one sub-folder level down, e.g. the
    challenge's ``TrainingData_Part1..3``). Image and label share the file for ``.npy``; ``.npy`` files win when
    both formats are present. The challenge's unlabelled test set reuses the names Case00..Case29: keep it
    outside ``root``.

    Args:
        root: dataset folder.
        setting: ``"promise12_3scans"`` or ``"promise12_full"`` (see the module docstring).
    """
    setting = look_up_option(setting, PROMISE12_SETTINGS)
    root = Path(root)
    fmt, cases = _find_cases(root)
    test = sorted(load_split("promise12_test"))
    if setting == "promise12_3scans":
        train = dict(sorted(group_slices(load_split(setting)).items()))
    else:
        train = {c: None for c in PROMISE12_CASES if c not in test}
    missing = [c for c in [*train, *test] if c not in cases]
    if missing:
        raise FileNotFoundError(f"{root}: {len(missing)} PROMISE12 {fmt} case(s) of {setting} missing: {missing}")
    _require([Path(cases[c]["label"]) for c in [*train, *test]], f"PROMISE12 {fmt} label")

    def item(case: str, slices: list[int] | None = None) -> dict:
        return dict(cases[case]) if slices is None else {**cases[case], "slices": sorted(slices)}

    return {
        "training": [item(c, s) for c, s in train.items()],
        "testing": [item(c) for c in test],
        "unlabeled": [],
    }
