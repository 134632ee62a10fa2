"""Datalists (MONAI ``load_decathlon_datalist`` format) for the supported dataset layouts and the published splits.

A datalist is ``{"training": [...], "testing": [...], "unlabeled": [...], ...}``; labelled items are
``{"image": path, "label": path}`` and may carry ``"slices": [z, ...]`` (the slice indices a few-shot setting uses,
read by :class:`~samora_monai.data.VolumeSliceDataset`); unlabeled and inference items are ``{"image": path}``.

Named splits (package data copied from the publications' lists, see ``splits/README.md``):

=====================  ======================================================================
``synapse_full``       2211 training slices of the 18 TransUNet training cases (all slices)
``synapse_10pct``      the 221-slice "10%" few-shot setting of H-SAM/SAMora
``synapse_test``       the 12 Synapse test cases
``la_train``           the 80 LA 2018 training volumes (UA-MT ``train.list``)
``la_test``            the 20 LA 2018 test volumes (UA-MT ``test.list``)
``la_4scans``          224 foreground slices of the first 4 ``la_train`` volumes (H-SAM)
``promise12_3scans``   58 foreground slices of Case29, Case14, Case05 (H-SAM)
``promise12_full``     all slices of the 40 non-test labelled PROMISE12 cases (no list file)
``promise12_test``     the 10 PROMISE12 test cases
=====================  ======================================================================
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from samora_monai.utils import NIFTI_SUFFIXES, atomic_output

__all__ = [
    "SPLIT_FILES",
    "TEST_SPLITS",
    "btcv_datalist",
    "group_slices",
    "la_datalist",
    "load_split",
    "msd_heart_datalist",
    "named_datalist",
    "transunet_synapse_datalist",
    "write_datalist",
]

SPLIT_FILES: dict[str, str] = {
    "synapse_full": "synapse/train_slices.txt",
    "synapse_10pct": "synapse/train_10pct_slices.txt",
    "synapse_test": "synapse/test_volumes.txt",
    "la_train": "la/uamt_train.list",
    "la_test": "la/uamt_test.list",
    "la_4scans": "la/train_4scans_slices.txt",
    "promise12_3scans": "promise12/train_3scans_slices.txt",
    "promise12_test": "promise12/test_volumes.txt",
}
TEST_SPLITS: tuple[str, ...] = ("synapse_test", "la_test", "promise12_test")
SYNAPSE_SETTINGS = ("synapse_full", "synapse_10pct")
_SLICE = re.compile(r"(.+)_slice(\d+)")
logger = logging.getLogger(__name__)


def load_split(name: str) -> list[str]:
    """Entries (case ids or ``<case>_sliceNNN`` names) of the named split, in file order."""
    if name not in SPLIT_FILES:
        raise ValueError(f"unknown split {name!r}; known: {sorted(SPLIT_FILES)}")
    text = resources.files("samora_monai.data").joinpath("splits", SPLIT_FILES[name]).read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def group_slices(names: Sequence[str]) -> dict[str, list[int]]:
    """``["case0005_slice012", ...]`` -> ``{"case0005": [12, ...]}``, cases in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for name in names:
        match = _SLICE.fullmatch(name)
        if match is None:
            raise ValueError(f"{name!r} is not a '<case>_sliceNNN' name")
        groups.setdefault(match.group(1), []).append(int(match.group(2)))
    return groups


def _case_number(name: str) -> int | None:
    """``img0001.nii.gz``, ``label0001.nii.gz``, ``case0001`` -> 1."""
    match = re.search(r"(\d+)", Path(name).name)
    return int(match.group(1)) if match else None


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith(NIFTI_SUFFIXES) and not p.name.startswith("."))


def _first_dir(root: Path, candidates: Sequence[str]) -> Path | None:
    return next((root / c for c in candidates if (root / c).is_dir()), None)


def _require(paths: Sequence[Path], what: str) -> None:
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} {what} file(s) missing, e.g. {missing[:3]}")


def btcv_datalist(root: str | os.PathLike, setting: str | None = "synapse_full") -> dict[str, list[dict]]:
    """Datalist of raw BTCV NIfTI: ``img00XX.nii.gz``/``label00XX.nii.gz`` in ``imagesTr``/``labelsTr``,
    ``RawData/Training/img``/``label`` or ``Training/img``/``label``; unlabeled images from ``imagesTs``,
    ``RawData/Testing/img`` or ``Testing/img``.

    Args:
        root: dataset folder.
        setting: ``"synapse_full"`` (the 18 training cases, all slices), ``"synapse_10pct"`` (the same cases with
            the 221 published ``slices``), or None (every labelled case in ``training``). With a setting, the 12
            Synapse test cases go to ``testing``.
    """
    root = Path(root)
    img_dir = _first_dir(root, ("imagesTr", "RawData/Training/img", "Training/img"))
    lab_dir = _first_dir(root, ("labelsTr", "RawData/Training/label", "Training/label"))
    if img_dir is None or lab_dir is None:
        raise FileNotFoundError(f"{root}: no BTCV layout (imagesTr/labelsTr or RawData/Training/img|label)")
    images = {_case_number(p.name): p for p in _nifti_files(img_dir)}
    labels = {_case_number(p.name): p for p in _nifti_files(lab_dir)}
    unpaired = sorted(str(images[c]) for c in set(images) - set(labels))
    if unpaired:
        raise FileNotFoundError(f"no label in {lab_dir} for {unpaired}")

    def item(case: int, slices: list[int] | None = None) -> dict:
        path = img_dir / f"img{case:04d}.nii.gz"
        _require([images.get(case, path), labels.get(case, lab_dir / f"label{case:04d}.nii.gz")], "BTCV")
        d = {"image": str(images[case]), "label": str(labels[case])}
        return d if slices is None else {**d, "slices": slices}

    test_dir = _first_dir(root, ("imagesTs", "RawData/Testing/img", "Testing/img"))
    unlabeled = [{"image": str(p)} for p in _nifti_files(test_dir)] if test_dir else []
    if setting is None:
        return {"training": [item(c) for c in sorted(images)], "testing": [], "unlabeled": unlabeled}
    if setting not in SYNAPSE_SETTINGS:
        raise ValueError(f"setting must be one of {SYNAPSE_SETTINGS} or None, got {setting!r}")
    groups = group_slices(load_split(setting))
    training = [
        item(_case_number(case), None if setting == "synapse_full" else sorted(slices))
        for case, slices in sorted(groups.items())
    ]
    testing = [item(_case_number(case)) for case in sorted(load_split("synapse_test"))]
    return {"training": training, "testing": testing, "unlabeled": unlabeled}


def transunet_synapse_datalist(
    root: str | os.PathLike,
    setting: str | None = "synapse_full",
    train_dir: str = "train_npz",
    test_dir: str = "test_vol_h5",
) -> dict[str, list[dict]]:
    """Datalist of the TransUNet Synapse files: ``train_dir/caseXXXX_sliceYYY.npz`` 2D slices (``training``) and
    ``test_dir/caseXXXX.npy.h5`` volumes (``testing``); image and label share a file.

    Args:
        root: folder holding ``train_dir`` and ``test_dir``.
        setting: ``"synapse_full"``, ``"synapse_10pct"`` (the slices named by the split) or None (every file).
        train_dir, test_dir: sub-folder names (SAMed's 224 px copy is ``train_npz_new_224``).
    """
    root = Path(root)
    if setting is None:
        train = sorted((root / train_dir).glob("*.npz"))
        test = sorted((root / test_dir).glob("*.npy.h5"))
    elif setting in SYNAPSE_SETTINGS:
        train = [root / train_dir / f"{name}.npz" for name in load_split(setting)]
        test = [root / test_dir / f"{case}.npy.h5" for case in sorted(load_split("synapse_test"))]
        _require(train, f"{setting} training")
        _require(test, "synapse_test")
    else:
        raise ValueError(f"setting must be one of {SYNAPSE_SETTINGS} or None, got {setting!r}")
    return {
        "training": [{"image": str(p), "label": str(p)} for p in train],
        "testing": [{"image": str(p), "label": str(p)} for p in test],
        "unlabeled": [],
    }


def la_datalist(
    root: str | os.PathLike,
    setting: str | None = "la_4scans",
    num_labeled: int | None = None,
    filename: str = "mri_norm2.h5",
) -> dict[str, list[dict]]:
    """Datalist of LA 2018 in the UA-MT layout ``root/<ID>/mri_norm2.h5`` (image and label in one file).

    ``training``: the 4 ``la_4scans`` volumes with their published ``slices`` (setting ``"la_4scans"``), or the
    first ``num_labeled`` volumes of ``la_train`` (setting None; all 80 when ``num_labeled`` is None);
    ``unlabeled``: the other ``la_train`` volumes; ``testing``: the 20 ``la_test`` volumes.
    """
    root = Path(root)
    if (root / "2018LA_Seg_Training Set").is_dir():
        root = root / "2018LA_Seg_Training Set"
    train_ids = load_split("la_train")
    if setting == "la_4scans":
        labeled = {case: sorted(slices) for case, slices in group_slices(load_split("la_4scans")).items()}
    elif setting is None:
        labeled = dict.fromkeys(train_ids[: len(train_ids) if num_labeled is None else num_labeled])
    else:
        raise ValueError(f"setting must be 'la_4scans' or None, got {setting!r}")

    def item(case: str, slices: list[int] | None = None, label: bool = True) -> dict:
        path = str(root / case / filename)
        d = {"image": path, "label": path} if label else {"image": path}
        return d if slices is None else {**d, "slices": slices}

    _require([root / case / filename for case in [*labeled, *load_split("la_test")]], "LA h5")
    unlabeled = [case for case in train_ids if case not in labeled]
    present = [case for case in unlabeled if (root / case / filename).is_file()]
    if len(present) < len(unlabeled):
        logger.warning(f"{root}: {len(unlabeled) - len(present)} of {len(unlabeled)} unlabeled LA volumes missing")
    return {
        "training": [item(case, slices) for case, slices in labeled.items()],
        "testing": [item(case) for case in load_split("la_test")],
        "unlabeled": [item(case, label=False) for case in present],
    }


def msd_heart_datalist(
    root: str | os.PathLike, num_labeled: int | None = None, num_validation: int = 0
) -> dict[str, list[dict]]:
    """Datalist of MSD Task02_Heart (``imagesTr``/``labelsTr``/``imagesTs``, ``la_XXX.nii.gz``).

    Sorted labelled cases: the first ``num_labeled`` (all when None) go to ``training``, the next
    ``num_validation`` to ``validation``; the remaining labelled images and ``imagesTs`` go to ``unlabeled``.
    """
    root = Path(root)
    if not (root / "imagesTr").is_dir() or not (root / "labelsTr").is_dir():
        raise FileNotFoundError(f"{root}: no MSD layout (imagesTr/, labelsTr/)")
    images = _nifti_files(root / "imagesTr")
    _require([root / "labelsTr" / p.name for p in images], "MSD label")
    labeled = [{"image": str(p), "label": str(root / "labelsTr" / p.name)} for p in images]
    n = len(labeled) if num_labeled is None else num_labeled
    test = _nifti_files(root / "imagesTs") if (root / "imagesTs").is_dir() else []
    return {
        "training": labeled[:n],
        "validation": labeled[n : n + num_validation],
        "unlabeled": [{"image": d["image"]} for d in labeled[n + num_validation :]] + [{"image": str(p)} for p in test],
    }


def named_datalist(setting: str, root: str | os.PathLike) -> dict[str, list[dict]]:
    """Datalist of a published setting (``synapse_full``, ``synapse_10pct``, ``la_4scans``, ``promise12_3scans``,
    ``promise12_full``) under ``root``: TransUNet files when ``root`` has ``train_npz``/``test_vol_h5``, else raw
    BTCV NIfTI; LA h5 folders; PROMISE12 ``.npy`` dicts or ``.mhd`` volumes."""
    from samora_monai.data.promise12 import PROMISE12_SETTINGS, promise12_datalist  # local: it imports this module

    root = Path(root)
    if setting in PROMISE12_SETTINGS:
        return promise12_datalist(root, setting)
    if setting in SYNAPSE_SETTINGS:
        if (root / "train_npz").is_dir() or (root / "test_vol_h5").is_dir():
            return transunet_synapse_datalist(root, setting)
        return btcv_datalist(root, setting)
    if setting == "la_4scans":
        return la_datalist(root, setting)
    raise ValueError(f"unknown setting {setting!r}; known: {(*SYNAPSE_SETTINGS, 'la_4scans', *PROMISE12_SETTINGS)}")


def write_datalist(datalist: dict, path: str | os.PathLike, relative: bool = True) -> str:
    """Write ``datalist`` as JSON (atomically); with ``relative``, ``image``/``label`` paths are made relative to
    the JSON's folder (``load_decathlon_datalist`` resolves them against it). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.parent.resolve()

    def rel(v: object) -> object:
        return os.path.relpath(Path(v).resolve(), base) if relative and isinstance(v, str) else v

    out = {
        k: [{f: rel(v) if f in ("image", "label") else v for f, v in d.items()} for d in items]
        if isinstance(items, list) and all(isinstance(d, dict) for d in items)
        else items
        for k, items in datalist.items()
    }
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(out, indent=2))
    return str(path)
