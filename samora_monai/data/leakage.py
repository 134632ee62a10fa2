"""The leakage guard: labelled test (and validation) cases must not enter training or the unlabeled stage-1 corpus.

One guard for every workflow: stage-1 preparation (:func:`~samora_monai.data.prepare_unlabeled`), the stage-1
workflows, stage 2 and Auto3DSeg call :func:`check_leakage` or :func:`exclude_test_cases`.

What is excluded:

- the published test splits by name (``"synapse_test"``, ``"la_test"``, ``"promise12_test"``: see
  :data:`~samora_monai.data.TEST_SPLITS`);
- single cases given as a case id (``"0035"``, ``35``, ``"case0035"``), a file name (``"img0035.nii.gz"``) or a path
  (``"/data/x/img0035.nii.gz"``);
- a datalist's own ``testing`` and ``validation`` items (``datalist=``).

A volume matches an excluded case when they share the file stem (``img0035``), the BTCV/Synapse case number
(``img0035.nii.gz`` == ``case0035.npy.h5`` == ``0035``) or the full path; a generic stem (LA's ``<ID>/mri_norm2.h5``,
or one shared by several files) is matched by its folder instead. An explicit exclude that matches no volume is
reported with a warning (a typo would otherwise disable the guard silently).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from monai.utils import ensure_tuple

from samora_monai.data.datalists import SPLIT_FILES, TEST_SPLITS, load_split
from samora_monai.utils import case_name

__all__ = [
    "EXCLUDED_SECTIONS",
    "case_ids",
    "check_leakage",
    "check_unlabeled_datalist",
    "exclude_test_cases",
]

logger = logging.getLogger(__name__)

EXCLUDED_SECTIONS: tuple[str, ...] = ("testing", "validation")
# file names that do not name a case (LA ``<ID>/mri_norm2.h5``, KiTS ``case_00000/imaging.nii.gz``): the folder does
GENERIC_STEMS: frozenset[str] = frozenset({"mri_norm2", "image", "imaging", "label", "segmentation"})
# Synapse/BTCV names: img0001, label0001, case0001 (optionally _sliceNNN), or a bare number; 4 digits with a
# prefix, so PROMISE "Case16" and KiTS "case_00001" are not read as Synapse cases
_SYNAPSE = re.compile(r"(?:img|label|case)_?(\d{4})(?:_slice\d+)?|(\d+)", re.IGNORECASE)


def _name_ids(name: str) -> set[str]:
    ids = {name.lower()}
    match = _SYNAPSE.fullmatch(name)
    if match:
        ids.add(f"synapse#{int(match.group(1) or match.group(2))}")
    return ids


def _path_id(path: str | os.PathLike) -> str:
    return "path#" + os.path.normcase(os.path.abspath(os.path.expanduser(os.fspath(path))))


def case_ids(path: str | os.PathLike) -> set[str]:
    """Identifiers a volume file may be named by: its stem, its folder (LA ``<ID>/mri_norm2.h5``), its full path and,
    for BTCV/Synapse names, the case number (``img0001.nii.gz`` and ``case0001.npy.h5`` are both case 1)."""
    return _name_ids(case_name(path)) | {Path(path).parent.name.lower(), _path_id(path)}


def _entry_ids(entry: str, generic: set[str]) -> set[str]:
    """Identifiers of one exclude entry that is not a split name: a case id, a file name or a path."""
    stem = case_name(entry)
    ids = {_path_id(entry)} if os.sep in entry or "/" in entry else set()
    if stem.lower() in generic:  # e.g. mri_norm2: the folder names the case
        return ids | {Path(entry).parent.name.lower()}
    return ids | _name_ids(re.sub(r"_slice\d+$", "", stem))


def _datalist_images(datalist: Mapping | None, sections: Sequence[str]) -> list[str]:
    if datalist is None:
        return []
    return [str(item["image"]) for s in sections for item in (datalist.get(s) or []) if "image" in item]


def _excluded(
    exclude: Iterable[str | int], datalist: Mapping | None, sections: Sequence[str], generic: set[str]
) -> dict[str, dict[str, str]]:
    """exclude entry -> {identifier: description}."""
    table: dict[str, dict[str, str]] = {}
    for entry in (str(e) for e in exclude):
        if entry in SPLIT_FILES:
            cases = {re.sub(r"_slice\d+$", "", n) for n in load_split(entry)}
            table[entry] = {i: f"{c} of split {entry}" for c in sorted(cases) for i in _name_ids(c)}
        else:
            table[entry] = {i: f"excluded case {entry}" for i in _entry_ids(entry, generic)}
    for path in _datalist_images(datalist, sections):
        table.setdefault(f"datalist {'/'.join(sections)}", {}).update(
            {i: f"{path} of the datalist's {'/'.join(sections)}" for i in _entry_ids(path, generic)}
        )
    return table


def check_leakage(
    paths: Sequence[str | os.PathLike],
    exclude: Iterable[str | int] | str = TEST_SPLITS,
    datalist: Mapping | None = None,
    sections: Sequence[str] = EXCLUDED_SECTIONS,
) -> None:
    """Raise ``ValueError`` naming every volume of ``paths`` that an excluded case matches.

    Args:
        paths: the volumes to check (training or unlabeled inputs).
        exclude: split names and/or case ids, file names or paths; a comma-separated string is accepted.
        datalist: a datalist ``{section: [items]}`` whose ``sections`` items are excluded as well.
        sections: the datalist sections that hold held-out cases.
    """
    if isinstance(exclude, str):
        exclude = [e.strip() for e in exclude.split(",") if e.strip()]
    exclude = [str(e) for e in exclude]
    generic = set(GENERIC_STEMS)
    files = [e for e in exclude if os.sep in e or "/" in e]  # case ids and split names are not files
    for names in ([str(p) for p in paths], [*files, *_datalist_images(datalist, ensure_tuple(sections))]):
        stems = [case_name(n).lower() for n in {_path_id(n): n for n in names}.values()]  # a file listed twice
        generic |= {s for s in stems if stems.count(s) > 1}  # a stem shared by several files names no case
    table = _excluded(exclude, datalist, ensure_tuple(sections), generic)
    leaks, used = [], set()
    for path in paths:
        generic_stem = case_name(path).lower() in generic
        ids = {Path(path).parent.name.lower(), _path_id(path)} if generic_stem else case_ids(path)
        hits = sorted({desc for entry, known in table.items() for i, desc in known.items() if i in ids})
        used |= {entry for entry, known in table.items() if ids & known.keys()}
        if hits:
            leaks.append(f"{path} ({', '.join(hits)})")
    for entry in table:
        if entry not in used and entry not in SPLIT_FILES and not entry.startswith("datalist "):
            logger.warning(f"leakage guard: the exclude {entry!r} matches none of the {len(paths)} volumes")
    if leaks:
        raise ValueError(
            f"leakage guard: {len(leaks)} volume(s) are held-out (test/validation) cases and cannot be used for "
            "training or as unlabeled data: " + "; ".join(leaks) + ". Remove them from the input (or change "
            "`exclude` if this is wrong)."
        )


def exclude_test_cases(
    items: Sequence[Mapping],
    datalist: Mapping | None = None,
    exclude: Iterable[str | int] | str = TEST_SPLITS,
    key: str = "image",
    sections: Sequence[str] = EXCLUDED_SECTIONS,
) -> list[dict]:
    """``items`` unchanged when none of them is a held-out case, else ``ValueError`` (see :func:`check_leakage`).

    For configs: ``data: $samora_monai.data.exclude_test_cases(<training items>, @data_splits, @leakage_exclude)``.
    """
    check_leakage([str(item[key]) for item in items], exclude, datalist, sections)
    return [dict(item) for item in items]


def check_unlabeled_datalist(
    path: str | os.PathLike,
    exclude: Iterable[str | int] | str = TEST_SPLITS,
    datalist: Mapping | None = None,
    sections: Sequence[str] = EXCLUDED_SECTIONS,
) -> str:
    """``path`` when the stage-1 slice datalist written by ``prepare_unlabeled`` holds no held-out case, else
    ``ValueError``; each item's ``source`` (the original volume) is checked. Returns ``path`` for use in configs:
    ``unlabeled_datalist: $samora_monai.data.check_unlabeled_datalist(<path>, @leakage_exclude, @data_splits)``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"unlabeled datalist not found: {path}; prepare it with prepare_unlabeled")
    with open(path) as f:
        items = json.load(f).get("training") or []
    sources = [str(item.get("source") or item["image"]) for item in items]
    try:
        check_leakage(sources, exclude, datalist, sections)
    except ValueError as e:
        raise ValueError(f"{path}: {e} Prepare the unlabeled slices again without them.") from e
    return path
