"""Bundle archives: ``<out>/<name>_v<version>.zip`` holding ``<name>/...`` (the layout ``monai.bundle.download``
unpacks).

Run: ``python -m samora_monai package_bundle --bundle_dir bundles/samora_synapse --out dist/``
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import zipfile
from pathlib import Path

from samora_monai.utils import atomic_output

__all__ = ["archive_name", "bundle_files", "package_bundle", "read_bundle_version"]

logger = logging.getLogger(__name__)

# folders never shipped: caches, training outputs (`eval/` holds TensorBoard runs and predictions), MONAI Label logs
EXCLUDED_DIRS = frozenset({"__pycache__", ".ipynb_checkpoints", ".pytest_cache", ".git", "eval", "runs", "logs"})
# files never shipped: byte code, TensorBoard events, temporary/editor files, hidden files
EXCLUDED_FILES = ("*.pyc", "*.pyo", "events.out.tfevents.*", "*.tmp", "*.part", "*.swp", "*~", ".*")
# the only files kept from `models/` (MONAI bundle spec, plus the sidecar describing model.pt's network);
# checkpoints such as `latest_*.pt` stay out
MODEL_FILES = frozenset({"model.pt", "model.ts", "model.onnx", "model_meta.json"})
# MONAI Label writes this merged config for multi-GPU training; it is a run artefact, not part of the bundle
GENERATED_CONFIGS = frozenset({"monailabel_train.json"})


def read_bundle_version(bundle_dir: str | os.PathLike) -> str:
    """The ``version`` string of ``<bundle_dir>/configs/metadata.json``."""
    meta_file = Path(bundle_dir) / "configs" / "metadata.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{meta_file}: bundle metadata not found (is {bundle_dir} a MONAI bundle?)")
    try:
        version = json.loads(meta_file.read_text())["version"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{meta_file}: cannot read a 'version' entry ({e!r})") from e
    if not isinstance(version, str) or not version or any(c in version for c in "/\\ "):
        raise ValueError(f"{meta_file}: 'version' must be a non-empty string without spaces or slashes: {version!r}")
    return version


def archive_name(name: str, version: str) -> str:
    """``<name>_v<version>.zip``, the file name MONAI Label and the zoo use for ``<name>`` at ``<version>``."""
    return f"{name}_v{version}.zip"


def _is_excluded(rel: Path) -> bool:
    if any(part in EXCLUDED_DIRS for part in rel.parts[:-1]):
        return True
    if any(fnmatch.fnmatch(rel.name, pattern) for pattern in EXCLUDED_FILES):
        return True
    if rel.parts[0] == "models" and (len(rel.parts) != 2 or rel.name not in MODEL_FILES):
        return True
    return rel.parts[0] == "configs" and rel.name in GENERATED_CONFIGS


def bundle_files(bundle_dir: str | os.PathLike) -> list[Path]:
    """Sorted paths (relative to ``bundle_dir``) of the files that go into the archive."""
    root = Path(bundle_dir)
    files = (p.relative_to(root) for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    return sorted(rel for rel in files if not _is_excluded(rel))


def package_bundle(bundle_dir: str, out: str = "dist", name: str | None = None) -> str:
    """Write ``<out>/<name>_v<version>.zip`` with every bundle file under ``<name>/`` and return its path.

    ``version`` comes from ``configs/metadata.json``; ``name`` defaults to the folder name of ``bundle_dir``.
    ``models/model.pt`` (and ``model.ts``/``model.onnx``) are included when present; caches, ``eval/`` outputs,
    TensorBoard events, extra checkpoints and temporary files are left out. The archive is written under a
    temporary name and renamed, so an interrupted run leaves no partial zip; its mode follows the umask.
    """
    root = Path(bundle_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: bundle folder not found")
    name = name or root.resolve().name
    version = read_bundle_version(root)
    files = bundle_files(root)
    if not (root / "LICENSE").is_file():
        logger.warning("%s: no LICENSE file; the MONAI bundle specification requires one", root)
    if Path("models/model.pt") not in files:
        logger.warning("%s: no models/model.pt; MONAI Label ignores a bundle without weights", root)

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / archive_name(name, version)
    with atomic_output(target) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for rel in files:
            zf.write(root / rel, arcname=f"{name}/{rel.as_posix()}")
    logger.info("wrote %s (%d files)", target, len(files))
    return str(target)
