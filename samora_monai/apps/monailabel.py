"""Serve SAMora bundles with MONAI Label, offline.

Three steps, each usable alone:

1. :func:`create_app` copies MONAI Label's ``monaibundle`` sample app out of the installed ``monailabel`` package
   (what ``monailabel apps --download --name monaibundle`` does; no network).
2. :func:`install_bundle` unpacks a bundle archive (``python -m samora_monai package_bundle``) into
   ``<app>/model/<name>`` through ``monai.bundle.download(url=file://...)``.
3. :func:`server_command` / :func:`monailabel_serve` start ``monailabel start_server`` with
   ``--conf zoo_source github`` (a local bundle folder is used as is, the zoo is never listed).

Run: ``python -m samora_monai monailabel_install --archive dist/samora_synapse_v0.1.0.zip --workspace ml``
then ``python -m samora_monai monailabel_serve --app ml/monaibundle --studies <images> --models samora_synapse``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from samora_monai.utils import atomic_output

__all__ = [
    "INSTALL_OVERRIDES",
    "apply_overrides",
    "bundle_name_from_archive",
    "create_app",
    "find_sample_app",
    "install_bundle",
    "monailabel_install",
    "monailabel_serve",
    "offline_env",
    "server_command",
]

logger = logging.getLogger(__name__)

# environment that keeps MONAI, MONAI Label and the Hugging Face hub off the network
OFFLINE_ENV: dict[str, str] = {
    "BUNDLE_DOWNLOAD_SRC": "github",  # MONAI and MONAI Label default zoo source: not "monaihosting" (lists the zoo)
    "MONAI_ZOO_SOURCE": "github",
    "MONAI_LABEL_TRACKING_ENABLED": "false",  # no MLflow tracking server
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
}

# what `monailabel_install` sets in the installed copy unless told otherwise: MONAI Label datastore labels are
# already class indices (no raw-id mapping), and each /train/ round trains instead of resuming the previous round
INSTALL_OVERRIDES: dict[str, Any] = {"resume_checkpoint": None, "label_mapping": None}


def find_sample_app(name: str = "monaibundle") -> Path:
    """Folder of MONAI Label's sample app ``name``, as shipped in the ``monailabel`` wheel (``<prefix>/monailabel``)."""
    try:
        import monailabel
    except ImportError as e:
        raise RuntimeError("MONAI Label is not installed: see the 'Use with MONAI Label' section of the README") from e
    package_root = Path(monailabel.__file__).resolve().parent
    candidates = [
        package_root.parent / "sample-apps",  # source checkout
        Path(sys.prefix) / "monailabel" / "sample-apps",  # pip install (wheel data files)
        Path(sys.prefix) / "local" / "monailabel" / "sample-apps",
        Path.home() / ".local" / "monailabel" / "sample-apps",
    ]
    for root in candidates:
        if (root / name / "main.py").is_file():
            return root / name
    raise FileNotFoundError(f"MONAI Label sample app '{name}' not found in: {', '.join(map(str, candidates))}")


def create_app(workspace: str | os.PathLike, name: str = "monaibundle") -> Path:
    """Copy the sample app ``name`` to ``<workspace>/<name>`` (kept when it already holds a ``main.py``)."""
    app_dir = Path(workspace) / name
    if (app_dir / "main.py").is_file():
        return app_dir
    if app_dir.exists():
        raise FileExistsError(f"{app_dir}: exists but is not a MONAI Label app (no main.py)")
    source = find_sample_app(name)
    app_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(app_dir) as tmp:
        shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("logs", "model", "__pycache__"))
    (app_dir / "model").mkdir(exist_ok=True)
    logger.info("created MONAI Label app %s from %s", app_dir, source)
    return app_dir


def bundle_name_from_archive(archive: str | os.PathLike) -> str:
    """The single top-level folder of a bundle archive (``<name>/configs/metadata.json`` must be inside)."""
    archive = Path(archive)
    if not archive.is_file():
        raise FileNotFoundError(f"{archive}: bundle archive not found")
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.namelist()
    except zipfile.BadZipFile as e:
        raise ValueError(f"{archive}: not a zip file ({e})") from e
    tops = {m.split("/", 1)[0] for m in members}
    if len(tops) != 1:
        raise ValueError(f"{archive}: a bundle archive holds exactly one top-level folder, found {sorted(tops)}")
    name = tops.pop()
    if f"{name}/configs/metadata.json" not in members:
        raise ValueError(f"{archive}: {name}/configs/metadata.json is missing")
    return name


def apply_overrides(bundle_dir: str | os.PathLike, overrides: Mapping[str, Any]) -> list[Path]:
    """Set top-level config ids in every ``configs/*.json|yaml`` of ``bundle_dir`` that defines them.

    MONAI Label reads exactly one ``inference`` and one ``train`` config file with no command-line overrides, so
    values such as ``label_mapping: null`` (datastore labels are already 0..8) go into the installed copy. Every
    override must be defined by at least one config; the files are rewritten atomically. Returns the changed files.
    """
    from monai.bundle import ConfigParser

    configs = sorted(p for p in (Path(bundle_dir) / "configs").glob("*") if p.suffix in (".json", ".yaml", ".yml"))
    configs = [p for p in configs if p.name != "metadata.json"]
    unused, changed = set(overrides), []
    for path in configs:
        content = ConfigParser.load_config_file(path)
        keys = [k for k in overrides if k in content]
        if not keys:
            continue
        content.update({k: overrides[k] for k in keys})
        unused -= set(keys)
        with atomic_output(path) as tmp:
            ConfigParser.export_config_file(content, str(tmp), fmt=path.suffix.lstrip("."), sort_keys=False)
        changed.append(path)
    if unused:
        raise ValueError(f"{Path(bundle_dir) / 'configs'}: no config defines {sorted(unused)}")
    return changed


def install_bundle(
    archive: str | os.PathLike, app_dir: str | os.PathLike, overrides: Mapping[str, Any] | None = None
) -> Path:
    """Install a bundle archive into ``<app_dir>/model/<name>`` with ``monai.bundle.download`` from a ``file://``
    URL and return that folder; ``overrides`` go into its configs (:func:`apply_overrides`). An existing install
    of the same bundle is replaced only once the new one is fully unpacked and configured."""
    from monai.bundle import download

    archive = Path(archive).resolve()
    name = bundle_name_from_archive(archive)
    model_dir = Path(app_dir) / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    target = model_dir / name
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=model_dir))
    try:
        download(name=name, bundle_dir=str(staging), url=archive.as_uri(), progress=False)
        unpacked = staging / name
        if not (unpacked / "configs" / "metadata.json").is_file():
            raise RuntimeError(f"{archive}: monai.bundle.download did not unpack {name}/configs/metadata.json")
        if not (unpacked / "models" / "model.pt").is_file():
            logger.warning("%s: no models/model.pt; MONAI Label will not offer inference with it", archive)
        if overrides:
            apply_overrides(unpacked, overrides)
        if target.exists():
            shutil.rmtree(target)
        os.replace(unpacked, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("installed %s into %s", archive.name, target)
    return target


def offline_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default ``os.environ``) plus :data:`OFFLINE_ENV`."""
    env = dict(os.environ if base is None else base)
    env.update(OFFLINE_ENV)
    return env


def server_command(
    app_dir: str | os.PathLike,
    studies: str | os.PathLike,
    models: str | Sequence[str],
    host: str = "127.0.0.1",
    port: int = 8000,
    conf: Mapping[str, str] | None = None,
) -> list[str]:
    """``monailabel start_server`` argument list for local bundles ``models`` under ``<app_dir>/model``.

    ``zoo_source github`` makes MONAI Label take ``<app_dir>/model/<name>`` as is (the default "monaihosting"
    lists the zoo over the network first); ``sam2 false`` keeps MONAI Label's own SAM2 tasks (weights download)
    off. ``conf`` adds or replaces ``--conf`` entries.
    """
    models = models if isinstance(models, str) else ",".join(models)
    settings = {"models": models, "zoo_source": "github", "sam2": "false", **(conf or {})}
    cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(app_dir), "--studies", str(studies)]
    for key, value in settings.items():
        cmd += ["--conf", key, str(value)]
    return cmd + ["--host", host, "--port", str(port)]


def monailabel_install(
    archive: str, workspace: str, app: str = "monaibundle", overrides: Mapping[str, Any] | str | None = None
) -> str:
    """Create ``<workspace>/<app>`` from the installed MONAI Label sample app and install ``archive`` into it
    (``overrides``: config ids to set in the installed copy, on top of :data:`INSTALL_OVERRIDES`; on the command
    line a Python literal such as ``"{'batch_size': 8}"``, python-fire parses it; a JSON string also works from
    Python); returns the installed bundle folder."""
    if isinstance(overrides, str):
        try:
            overrides = json.loads(overrides)
        except json.JSONDecodeError as e:
            raise ValueError(f"--overrides must be a JSON object, got {overrides!r} ({e})") from e
    if overrides is not None and not isinstance(overrides, Mapping):
        raise ValueError(f"--overrides must be a JSON object, got {overrides!r}")
    app_dir = create_app(workspace, app)
    return str(install_bundle(archive, app_dir, {**INSTALL_OVERRIDES, **(overrides or {})}))


def monailabel_serve(
    app: str, studies: str, models: str = "samora_synapse", host: str = "127.0.0.1", port: int = 8000, **conf: str
) -> int:
    """Run the MONAI Label server in the foreground (offline environment); extra ``--key value`` flags become
    ``--conf key value``. Returns the server's exit code."""
    for path, what in ((Path(app) / "main.py", "MONAI Label app"), (Path(studies), "studies folder")):
        if not path.exists():
            raise FileNotFoundError(f"{path}: {what} not found")
    cmd = server_command(app, studies, models, host=host, port=port, conf={k: str(v) for k, v in conf.items()})
    logger.info("starting: %s", " ".join(cmd))
    return subprocess.call(cmd, env=offline_env())
