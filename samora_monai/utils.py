"""Small shared helpers."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["NULL_STRINGS", "atomic_output", "bundle_dir", "optional_value"]

BUNDLES = ("samora_synapse", "samora_la")

# what a "turn it off" value may look like once it has passed through YAML, JSON or the bundle command line
# (``--key null`` arrives as the string "null"; MONAI's CLI drops a bare ``--key None`` before the config sees it)
NULL_STRINGS: tuple[str, ...] = ("none", "null")


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
    (nibabel's ``.nii.gz``) behave the same. On an exception the temporary file is deleted and re-raised.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:12]}-{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def bundle_dir(name: str | os.PathLike) -> Path:
    """The folder of a shipped bundle (``"samora_synapse"``, ``"samora_la"``), or ``name`` itself when it is a bundle
    folder (one with ``configs/train.yaml``). Raises ``FileNotFoundError`` naming the places looked at."""
    path = Path(name)
    if (path / "configs" / "train.yaml").is_file():
        return path.resolve()
    package = Path(__file__).resolve().parent
    candidates = [package / "bundles" / str(name), package.parent / "bundles" / str(name)]
    for folder in candidates:
        if (folder / "configs" / "train.yaml").is_file():
            return folder
    raise FileNotFoundError(
        f"bundle {str(name)!r} not found: neither a bundle folder (with configs/train.yaml) nor one of {BUNDLES} "
        f"shipped in {[str(c) for c in candidates]}"
    )
