"""Small shared helpers: atomic file output, command-line flags, where the shipped bundles are."""

from __future__ import annotations

import importlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "NULL_STRINGS",
    "NIFTI_SUFFIXES",
    "VOLUME_SUFFIXES",
    "as_bool",
    "atomic_output",
    "bundle_dir",
    "bundle_names",
    "case_name",
    "load_record",
    "read_torch_file",
    "optional_value",
    "raise_problems",
    "submodule_getattr",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
VOLUME_SUFFIXES = (*NIFTI_SUFFIXES, ".npy.h5", ".h5", ".hdf5", ".npz", ".npy")  # NIfTI, TransUNet and LA h5, slices

_SOURCE_BUNDLES = Path(__file__).resolve().parent.parent / "bundles"  # a source checkout's bundles/


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

# what a "turn it off" value may look like once it has passed through YAML, JSON or the bundle command line
# (``--key null`` arrives as the string "null"; MONAI's CLI drops a bare ``--key None`` before the config sees it)
NULL_STRINGS: tuple[str, ...] = ("none", "null")


def submodule_getattr(package: str) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) for ``package`` that imports ``package.<name>`` on first access, so a bundle
    config that imports only ``samora_monai`` can call ``samora_monai.data.bundle_data.load_datalist`` and nothing is
    imported before it is used."""

    def __getattr__(name: str) -> Any:  # noqa: N807 (the module attribute PEP 562 names)
        if not name.startswith("_"):
            try:
                return importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError as e:
                if e.name != f"{package}.{name}":
                    raise
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


def raise_problems(message: str, problems: dict[str, list]) -> None:
    """``ValueError(message + "; ".join(...))`` naming every non-empty list of ``problems`` (``{what: items}``, each
    written ``"<what> <items>"``), e.g. the keys of a weights file that do not fit a model; nothing when all are empty.
    """
    found = [f"{what} {items}" for what, items in problems.items() if items]
    if found:
        raise ValueError(message + "; ".join(found))


def optional_value(value: Any) -> Any:
    """``None`` for None and the strings ``"none"``/``"null"`` (any case, surrounding blanks ignored); else ``value``.

    Every function that takes a nullable config value (``label_mapping``, ``resume_checkpoint``, ``voxel_spacing``,
    ``datalist``, ...) passes it through this, so ``--label_mapping null`` on the command line means "off".
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in NULL_STRINGS):
        return None
    return value


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` when the block succeeds.

    The temporary name ends with the target's name, so writers that pick the format from the extension
    (nibabel's ``.nii.gz``, numpy's ``.npy``) behave the same. A written file gets the permissions of a plain new
    file (``0o666 & ~umask``). The block may also create a folder at the path (then ``path`` must not exist). On an
    exception the temporary file or folder is deleted and the exception re-raised.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:12]}-{path.name}")
    try:
        yield tmp
        if tmp.is_file():
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def case_name(path: str | os.PathLike) -> str:
    """The case a volume file holds: its name without folder and volume extension (:data:`VOLUME_SUFFIXES`, any
    case), ``/d/img0001.nii.gz`` -> ``img0001``, ``case0001.npy.h5`` -> ``case0001``; other extensions: the stem."""
    name = Path(path).name
    suffix = next((s for s in VOLUME_SUFFIXES if name.lower().endswith(s)), None)
    return name[: -len(suffix)] if suffix else Path(name).stem


def read_torch_file(path: str | os.PathLike, what: str) -> Any:
    """The object of a PyTorch file, read on the CPU with ``weights_only``. Errors name the file and ``what`` it
    should be: ``FileNotFoundError``, or ``ValueError`` when it is not a readable PyTorch file."""
    import torch

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a readable {what}: {e}") from e


def load_record(path: str | os.PathLike, fmt: str, what: str, hint: str = "") -> dict[str, Any]:
    """A self-describing PyTorch file: a dict whose ``"format"`` is ``fmt``, read on the CPU with ``weights_only``.

    Errors name the file: ``FileNotFoundError``, or ``ValueError`` when it is unreadable or not a ``fmt`` record
    (``hint`` then says how such files are written).
    """
    record = read_torch_file(path, what)
    if not isinstance(record, dict) or record.get("format") != fmt:
        raise ValueError(f"{path} is not a {what} (no format={fmt!r} record){hint}")
    return record


def as_bool(value: bool | str | int) -> bool:
    """A flag from YAML (``true``) or the command line (``--random_init true`` arrives as the string)."""
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("true", "1", "yes", "on"):
            return True
        if v in ("false", "0", "no", "off", "none", "null", ""):
            return False
        raise ValueError(f"not a boolean flag: {value!r}")
    return bool(value)


def _bundle_roots() -> list[Path]:
    shipped = resources.files("samora_monai") / "bundles"  # package data of an installed wheel
    roots = [Path(str(shipped)), _SOURCE_BUNDLES]
    return [r for r in roots if r.is_dir()]


def bundle_names() -> list[str]:
    """The bundles shipped with the package (folders with a ``configs/metadata.json``)."""
    return sorted({p.parent.parent.name for r in _bundle_roots() for p in r.glob("*/configs/metadata.json")})


def bundle_dir(name: str | os.PathLike) -> Path:
    """The folder of the shipped bundle ``name`` (e.g. ``"samora_synapse"``): the package data of an installed
    wheel (``samora_monai/bundles/<name>``), else the source checkout's ``bundles/<name>``; or ``name`` itself when
    it is a bundle folder (one with ``configs/metadata.json``).

    Raises ``FileNotFoundError`` naming the bundles that exist when there is no such bundle.
    """
    if (Path(name) / "configs" / "metadata.json").is_file():
        return Path(name).resolve()
    for root in _bundle_roots():
        if (root / name / "configs" / "metadata.json").is_file():
            return root / name
    raise FileNotFoundError(f"no bundle {name!r} shipped with samora_monai; available: {bundle_names()}")
