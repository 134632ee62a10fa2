"""Small helpers the bundle configs call: where the data list comes from and which images to infer.

A bundle reads its cases from a datalist JSON (``datalist``, MONAI ``load_decathlon_datalist`` format, paths relative
to the JSON's folder) or, when ``datalist`` is None, from a named setting built over ``dataset_dir``:

=================  ================================================================================
``synapse_full``   the 18 TransUNet training cases (raw BTCV NIfTI, or TransUNet npz/h5 when
                   ``dataset_dir`` holds ``train_npz``/``test_vol_h5``), 12 test cases in ``testing``
``synapse_10pct``  the same with the 221 published few-shot slices
``la_4scans``      LA 2018 UA-MT ``<ID>/mri_norm2.h5``: 4 labelled scans, 20 test scans
``btcv``           every labelled raw BTCV case in ``training`` (no test split)
``transunet``      every ``train_npz``/``test_vol_h5`` file
``la_h5``          the first ``num_labeled`` (default 4) LA scans of ``la_train``, 20 test scans
``msd_heart``      MSD Task02_Heart NIfTI: first ``num_labeled`` (default 4) training, next
                   ``num_validation`` (default 2) validation
``promise12_3scans`` PROMISE12: the 58 published slices of 3 scans (H-SAM), 10 test scans
``promise12_full``   PROMISE12: the 40 non-test labelled scans, 10 test scans
=================  ================================================================================

Model selection (:func:`selects_model`, :func:`validation_items`): ``models/model.pt`` is chosen on validation
scores only when the datalist has a ``validation`` section whose cases are neither training nor test cases;
otherwise training validates on the training volumes to log fitting, and ``model.pt`` is the last-epoch network.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Sequence
from typing import Any

from monai.data import load_decathlon_datalist
from monai.utils import ensure_tuple

from samora_monai.data import (
    PROMISE12_SETTINGS,
    btcv_datalist,
    la_datalist,
    msd_heart_datalist,
    named_datalist,
    transunet_synapse_datalist,
)
from samora_monai.data.dicom import is_dicom_input
from samora_monai.data.leakage import check_leakage, check_unlabeled_datalist, exclude_test_cases
from samora_monai.utils import optional_value

__all__ = [
    "SETTINGS",
    "checked_unlabeled_datalist",
    "datalist_section",
    "find_images",
    "load_datalist",
    "published_test_splits",
    "selects_model",
    "training_items",
    "validation_items",
]

logger = logging.getLogger(__name__)

PUBLISHED = ("synapse_full", "synapse_10pct", "la_4scans", *PROMISE12_SETTINGS)  # settings with a published test split
SETTINGS = (*PUBLISHED, "btcv", "transunet", "la_h5", "msd_heart")
TEST_SPLIT_OF = {"synapse": "synapse_test", "la": "la_test", "promise12": "promise12_test"}
SECTIONS = ("training", "validation", "testing", "unlabeled")


def load_datalist(
    datalist: str | os.PathLike | None = None,
    dataset_dir: str | os.PathLike | None = None,
    setting: str | None = None,
    **setting_args: Any,
) -> dict[str, list[dict]]:
    """The whole datalist ``{section: [items]}`` from a JSON file, or from a named ``setting`` over ``dataset_dir``.

    ``setting_args`` go to the setting's builder (e.g. ``num_labeled``, ``num_validation`` for ``msd_heart``).
    """
    datalist = optional_value(datalist)  # --datalist null
    if datalist is not None:
        path = os.fspath(datalist)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"datalist file not found: {path}")
        out = {}
        for section in SECTIONS:
            try:
                out[section] = load_decathlon_datalist(path, is_segmentation=True, data_list_key=section)
            except ValueError:  # section absent
                out[section] = []
        if not any(out.values()):
            raise ValueError(f"datalist {path} has none of the sections {SECTIONS}")
        return out
    if dataset_dir is None or setting is None:
        raise ValueError("give either a datalist JSON file or both dataset_dir and a named setting")
    if not os.path.isdir(dataset_dir):
        raise FileNotFoundError(f"dataset_dir not found: {dataset_dir}")
    if setting in PUBLISHED:
        return named_datalist(setting, dataset_dir)
    if setting == "btcv":
        return btcv_datalist(dataset_dir, None)
    if setting == "transunet":
        return transunet_synapse_datalist(dataset_dir, None, **setting_args)
    if setting == "la_h5":
        return la_datalist(dataset_dir, None, num_labeled=setting_args.pop("num_labeled", 4), **setting_args)
    if setting == "msd_heart":
        return msd_heart_datalist(
            dataset_dir, setting_args.get("num_labeled", 4), setting_args.get("num_validation", 2)
        )
    raise ValueError(f"unknown setting {setting!r}; known: {SETTINGS}")


def published_test_splits(datalist: str | os.PathLike | None, setting: str | None) -> list[str]:
    """The published test split a named ``setting`` is evaluated on (``["synapse_test"]`` for ``synapse_10pct``), for
    the leakage guard's ``exclude``; ``[]`` when a datalist JSON is given (its own ``testing``/``validation`` items
    are the held-out cases) or the setting has no published split."""
    if optional_value(datalist) is not None or setting not in PUBLISHED:
        return []
    return [TEST_SPLIT_OF[str(setting).split("_")[0]]]


def selects_model(datalist: dict[str, list[dict]]) -> bool:
    """Whether training selects ``model.pt`` on validation scores: only with a ``validation`` section."""
    return bool(datalist.get("validation"))


def validation_items(
    datalist: dict[str, list[dict]], exclude: Sequence[str] = (), keys: Sequence[str] = ("image", "label")
) -> list[dict]:
    """The whole volumes training validates on: the ``validation`` items, refused (``ValueError``) when one of them
    is a ``training`` or ``testing`` case of the datalist or of the published splits in ``exclude``, since choosing
    ``model.pt`` on them would use labels outside the training budget; without a ``validation`` section, the
    training volumes (their scores are logged to watch fitting and never select a model)."""
    if not selects_model(datalist):
        logger.info(
            "no 'validation' section: validation runs on the training volumes to log fitting only; models/model.pt "
            "is the network after the last epoch"
        )
        return _volumes(datalist_section(datalist, "training", keys=keys))
    items = datalist_section(datalist, "validation", keys=keys)
    try:
        check_leakage([str(item["image"]) for item in items], exclude, datalist, ("training", "testing"))
    except ValueError as e:
        detail = str(e).split("as unlabeled data: ", 1)[-1].split(". Remove them", 1)[0]  # the matched volumes
        raise ValueError(
            f"the datalist's 'validation' section overlaps the training items or the test split ({detail}); "
            "model.pt would be selected with labels outside the training budget. Give validation cases that are "
            "neither training nor test cases, or remove the 'validation' section (model.pt is then the last-epoch "
            "network)"
        ) from None
    return items


def training_items(datalist: dict[str, list[dict]], exclude: Sequence[str] = ()) -> list[dict]:
    """The ``training`` items, refused (``ValueError``, naming them) when one is a ``testing`` case of the datalist or
    a case of the published test splits in ``exclude`` (the leakage guard)."""
    return exclude_test_cases(datalist_section(datalist, "training"), datalist, exclude, sections=["testing"])


def checked_unlabeled_datalist(
    path: str | os.PathLike, exclude: Sequence[str] = (), datalist: str | os.PathLike | None = None
) -> str | os.PathLike:
    """``path``, the stage-1 unlabeled datalist, once :func:`~samora_monai.data.check_unlabeled_datalist` found none
    of its source volumes among the cases of ``exclude`` (published test splits) or the ``testing``/``validation``
    items of ``datalist`` (the stage-2 datalist JSON; None: none). A missing file is returned unchecked, for the
    dataset to report."""
    if not os.path.isfile(path):
        return path
    held_out = load_datalist(datalist) if optional_value(datalist) is not None else None
    return check_unlabeled_datalist(path, exclude, held_out)


def _volumes(items: list[dict]) -> list[dict]:
    """``items`` without repeats (several training items may point at slices of one volume)."""
    seen, out = set(), []
    for item in items:
        key = (str(item["image"]), str(item.get("label")))
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


def datalist_section(
    datalist: dict[str, list[dict]],
    sections: str | Sequence[str],
    keys: Sequence[str] | None = None,
) -> list[dict]:
    """The items of the first non-empty of ``sections`` (e.g. ``("validation", "training")``).

    ``keys``: keep only these item fields (e.g. ``("image", "label")`` for whole-volume validation, dropping the
    training ``slices``). Raises ``ValueError`` when every section is empty.
    """
    sections = ensure_tuple(sections)
    for i, section in enumerate(sections):
        items = datalist.get(section) or []
        if items:
            if i > 0:
                logger.warning(f"datalist has no {sections[0]!r} items; using {section!r} ({len(items)} items)")
            if keys is not None:
                missing = [item for item in items if any(k not in item for k in keys)]
                if missing:
                    raise ValueError(f"datalist {section!r} items lack one of {list(keys)}: {missing[:2]}")
                items = [{k: item[k] for k in keys} for item in items]
            return list(items)
    raise ValueError(f"the datalist has no items in {list(sections)} (sections present: {sorted(datalist)})")


def find_images(
    images: str | os.PathLike | Sequence[str | os.PathLike], patterns: Sequence[str] = ("*.nii.gz", "*.nii")
) -> list[str]:
    """Image files to infer: a folder (its files matching ``patterns``, sorted), one file, or a list of files. A DICOM
    series folder (or a folder of series folders) gives the series folders, read by MONAI's DICOM reader.

    Missing files are reported by the loader (``LoadVolumed``) with their path; an empty folder raises here.
    """
    if isinstance(images, (str, os.PathLike)):
        path = os.fspath(images)
        if os.path.isdir(path) and is_dicom_input(path):
            return [path]
        if os.path.isdir(path):
            series = sorted(e.path for e in os.scandir(path) if e.is_dir() and is_dicom_input(e.path))
            if series and not any(glob.glob(os.path.join(path, p)) for p in patterns):
                return series
            found = sorted({f for p in patterns for f in glob.glob(os.path.join(path, p))})
            if not found:
                raise FileNotFoundError(f"no images matching {list(patterns)} in {path}")
            return found
        if not os.path.exists(path):
            raise FileNotFoundError(f"input images not found: {path}")
        return [path]
    found = [os.fspath(p) for p in images]
    if not found:
        raise ValueError("the list of input images is empty")
    return found
