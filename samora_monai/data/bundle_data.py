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
=================  ================================================================================
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
    btcv_datalist,
    la_datalist,
    msd_heart_datalist,
    named_datalist,
    transunet_synapse_datalist,
)

__all__ = ["SETTINGS", "datalist_section", "find_images", "load_datalist"]

logger = logging.getLogger(__name__)

SETTINGS = ("synapse_full", "synapse_10pct", "la_4scans", "btcv", "transunet", "la_h5", "msd_heart")
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
    if setting in ("synapse_full", "synapse_10pct", "la_4scans"):
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
    """Image files to infer: a folder (its files matching ``patterns``, sorted), one file, or a list of files.

    Missing files are reported by the loader (``LoadVolumed``) with their path; an empty folder raises here.
    """
    if isinstance(images, (str, os.PathLike)):
        path = os.fspath(images)
        if os.path.isdir(path):
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
