"""Serve SAMora bundles with MONAI Label, offline.

Three steps, each usable alone:

1. :func:`create_app` writes a MONAI Label app, ``<workspace>/<app>/main.py``, that serves bundles with the tasks
   of :mod:`samora_monai.apps.monailabel_tasks` (MONAI Label's bundle tasks returning integer labels and reporting
   the cause of a failed training).
2. :func:`install_bundle` unpacks a bundle archive (``python -m samora_monai package_bundle``) or a bundle folder
   into ``<app>/model/<name>`` through ``monai.bundle.download(url=file://...)``, sets its configs to build the
   network recorded in ``models/model_meta.json``, and checks ``model.pt`` and the SAM checkpoint.
3. :func:`server_command` / :func:`monailabel_serve` start ``monailabel start_server`` with
   ``--conf zoo_source github`` (a local bundle folder is used as is, the zoo is never listed).

Run: ``python -m samora_monai monailabel_install --archive dist/samora_synapse_v0.1.0.zip --workspace ml``
then ``python -m samora_monai monailabel_serve --app ml/samora --studies <images> --models samora_synapse``.
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
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from samora_monai.apps.monailabel_config import (
    check_model_file,
    meta_settings,
    read_bundle_meta,
    require_sam_checkpoint,
)
from samora_monai.utils import atomic_output

__all__ = [
    "INSTALL_OVERRIDES",
    "apply_overrides",
    "bundle_name_from_archive",
    "create_app",
    "install_bundle",
    "install_settings",
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

APP_MAIN = (
    '"""MONAI Label app for SAMora bundles, written by samora_monai (see samora_monai.apps.monailabel_tasks)."""\n\n'
    "from samora_monai.apps.monailabel_tasks import SamoraLabelApp  # noqa: F401  (the app MONAI Label loads)\n"
)


def create_app(workspace: str | os.PathLike, name: str = "samora") -> Path:
    """Write the MONAI Label app ``<workspace>/<name>`` (``main.py`` loading
    :class:`~samora_monai.apps.monailabel_tasks.SamoraLabelApp`, and ``model/``); an existing one is kept."""
    app_dir = Path(workspace) / name
    main = app_dir / "main.py"
    if main.is_file() and main.read_text() != APP_MAIN:
        raise FileExistsError(f"{app_dir}: holds another MONAI Label app (main.py differs); choose another --app")
    if app_dir.exists() and not main.is_file():
        raise FileExistsError(f"{app_dir}: exists but is not a MONAI Label app (no main.py)")
    (app_dir / "model").mkdir(parents=True, exist_ok=True)
    if not main.is_file():
        with atomic_output(main) as tmp:
            tmp.write_text(APP_MAIN)
        logger.info("created MONAI Label app %s", app_dir)
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


def _set_id(content: dict, key: str, value: Any) -> bool:
    """Set config id ``key`` (``a`` or ``a#b``) in ``content`` when the config defines it (for ``a#b``: when ``a``
    is a mapping there); returns whether it was set."""
    *parents, leaf = key.split("#")
    node = content
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict) or (not parents and leaf not in node):
        return False
    node[leaf] = value
    return True


def apply_overrides(
    bundle_dir: str | os.PathLike, overrides: Mapping[str, Any], optional: Collection[str] = ()
) -> list[Path]:
    """Set config ids in every ``configs/*.json|yaml`` of ``bundle_dir`` that defines them.

    MONAI Label reads exactly one ``inference`` and one ``train`` config file with no command-line overrides, so
    values such as ``label_mapping: null`` (datastore labels are already 0..8) go into the installed copy. An id is
    top-level (``variant``) or nested (``network_def#decoder``: set wherever ``network_def`` is a mapping). Every
    override except those in ``optional`` must be defined by at least one config; the files are rewritten atomically.
    Returns the changed files.
    """
    from monai.bundle import ConfigParser

    configs = sorted(p for p in (Path(bundle_dir) / "configs").glob("*") if p.suffix in (".json", ".yaml", ".yml"))
    configs = [p for p in configs if p.name != "metadata.json"]
    unused, changed = set(overrides) - set(optional), []
    for path in configs:
        content = ConfigParser.load_config_file(path)
        keys = [k for k in overrides if _set_id(content, k, overrides[k])]
        if not keys:
            continue
        unused -= set(keys)
        with atomic_output(path) as tmp:
            ConfigParser.export_config_file(content, str(tmp), fmt=path.suffix.lstrip("."), sort_keys=False)
        changed.append(path)
    if unused:
        raise ValueError(f"{Path(bundle_dir) / 'configs'}: no config defines {sorted(unused)}")
    return changed


def install_settings(bundle_dir: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The config ids to set in an unpacked bundle: those of ``models/model_meta.json`` (:func:`meta_settings`),
    then ``overrides``. An override that contradicts the sidecar on how the network was built is an error."""
    overrides = dict(overrides or {})
    meta_file = Path(bundle_dir) / "models" / "model_meta.json"
    meta = read_bundle_meta(bundle_dir)
    if meta is None:
        return overrides
    settings = meta_settings(meta, meta_file)
    clash = {k: (settings[k], v) for k, v in overrides.items() if k in settings and settings[k] != v}
    if clash:
        details = ", ".join(f"{k}: {old!r} recorded, {new!r} given" for k, (old, new) in clash.items())
        raise ValueError(f"{meta_file}: model.pt was trained otherwise ({details}); drop these overrides")
    return {**settings, **overrides}


def install_bundle(
    archive: str | os.PathLike,
    app_dir: str | os.PathLike,
    overrides: Mapping[str, Any] | None = None,
    sam_checkpoint: str | os.PathLike | None = None,
    name: str | None = None,
) -> Path:
    """Install a bundle archive, or a bundle folder (packaged first, as ``name``), into ``<app_dir>/model/<name>``
    with ``monai.bundle.download`` from a ``file://`` URL and return that folder.

    The installed configs build the network recorded in ``models/model_meta.json`` when the bundle has one
    (:func:`install_settings`), with ``overrides`` on top (:func:`apply_overrides`); ``sam_checkpoint`` (a local
    file) replaces the configs' SAM checkpoint path. With a ``model.pt`` (which holds the trained stage-1 experts;
    MONAI Label's training starts from it) the configs read no stage-1 expert files (``expert_checkpoints: {}``).
    The install stops, leaving nothing behind, when ``model.pt`` does not match the network the installed
    ``inference.yaml`` builds or when that network needs a SAM checkpoint that is not there. An existing install of
    the same bundle is replaced only once the new one is ready.
    """
    from monai.bundle import download

    model_dir = Path(app_dir) / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".staging.", dir=model_dir) as staging:
        if Path(archive).is_dir():
            from samora_monai.apps.packaging import package_bundle

            archive = package_bundle(str(archive), out=str(Path(staging) / "dist"), name=name)
        archive = Path(archive).resolve()
        name = bundle_name_from_archive(archive)
        download(name=name, bundle_dir=staging, url=archive.as_uri(), progress=False)
        unpacked = Path(staging) / name
        if not (unpacked / "configs" / "metadata.json").is_file():
            raise RuntimeError(f"{archive}: monai.bundle.download did not unpack {name}/configs/metadata.json")
        settings = install_settings(unpacked, overrides)
        # MONAI Label fine-tunes model.pt, which holds the experts: no stage-1 files (where a config reads them)
        optional = ["expert_checkpoints"] if (unpacked / "models" / "model.pt").is_file() else []
        settings.update({key: settings.get(key, {}) for key in optional})
        if sam_checkpoint is not None:
            if not Path(sam_checkpoint).is_file():
                raise FileNotFoundError(f"{sam_checkpoint}: SAM checkpoint not found")
            settings["sam_checkpoint"] = str(Path(sam_checkpoint).resolve())
        if settings:
            apply_overrides(unpacked, settings, optional)
        if (unpacked / "models" / "model.pt").is_file():
            check_model_file(unpacked)
            require_sam_checkpoint(unpacked, hint=" or pass --sam_checkpoint <path of that file> to monailabel_install")
        else:
            logger.warning("%s: no models/model.pt; MONAI Label will not offer inference with it", archive)
        target = model_dir / name
        if target.exists():
            shutil.rmtree(target)
        os.replace(unpacked, target)
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
    archive: str,
    workspace: str,
    app: str = "samora",
    overrides: Mapping[str, Any] | str | None = None,
    sam_checkpoint: str | None = None,
    name: str | None = None,
) -> str:
    """Create the app ``<workspace>/<app>`` (:func:`create_app`) and install ``archive`` (a bundle zip, or a bundle
    folder such as the demo's ``<out>/bundle`` with ``name``) into it; returns the installed bundle folder.

    The installed configs build the network that ``models/model_meta.json`` records (variant, input size, random or
    checkpoint SAM weights...), with :data:`INSTALL_OVERRIDES` and ``overrides`` on top (config ids to set in the
    installed copy; on the command line a Python literal such as ``"{'batch_size': 8}"``, python-fire parses it; a
    JSON string also works from Python). ``sam_checkpoint``: local SAM weights for a model trained from them.
    """
    if isinstance(overrides, str):
        try:
            overrides = json.loads(overrides)
        except json.JSONDecodeError as e:
            raise ValueError(f"--overrides must be a JSON object, got {overrides!r} ({e})") from e
    if overrides is not None and not isinstance(overrides, Mapping):
        raise ValueError(f"--overrides must be a JSON object, got {overrides!r}")
    app_dir = create_app(workspace, app)
    settings = {**INSTALL_OVERRIDES, **(overrides or {})}
    return str(install_bundle(archive, app_dir, settings, sam_checkpoint=sam_checkpoint, name=name))


def monailabel_serve(
    app: str, studies: str, models: str = "samora_synapse", host: str = "127.0.0.1", port: int = 8000, **conf: str
) -> int:
    """Run the MONAI Label server in the foreground (offline environment); extra ``--key value`` flags become
    ``--conf key value``. Stops before starting when a bundle needs a SAM checkpoint that is missing. Returns the
    server's exit code."""
    for path, what in ((Path(app) / "main.py", "MONAI Label app"), (Path(studies), "studies folder")):
        if not path.exists():
            raise FileNotFoundError(f"{path}: {what} not found")
    for model in models.split(",") if isinstance(models, str) else models:
        bundle = Path(app) / "model" / model.strip()
        if not (bundle / "configs").is_dir():
            raise FileNotFoundError(f"{bundle}: bundle not installed (run monailabel_install first)")
        require_sam_checkpoint(bundle)
    cmd = server_command(app, studies, models, host=host, port=port, conf={k: str(v) for k, v in conf.items()})
    logger.info("starting: %s", " ".join(cmd))
    return subprocess.call(cmd, env=offline_env())
