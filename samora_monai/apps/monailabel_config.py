"""Configure an installed bundle from its ``models/model_meta.json`` and check it before MONAI Label serves it.

MONAI Label reads a bundle's ``inference`` and ``train`` configs with no command-line overrides and loads
``models/model.pt`` with ``strict=False``: a config that builds another network than the one that wrote
``model.pt`` (other variant, input size, decoder...) silently serves random weights. These helpers turn the sidecar
into config settings, check that the installed configs build a network whose state dict is exactly ``model.pt``'s,
and stop with one message when the SAM checkpoint the model was trained from is missing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from samora_monai.handlers.model_meta import META_FILE, read_model_meta
from samora_monai.utils import as_bool

__all__ = ["check_model_file", "meta_settings", "read_bundle_meta", "require_sam_checkpoint", "sam_checkpoint_path"]

INFERENCE_CONFIG = "inference.yaml"
# sidecar fields that are top-level config ids in the bundles' configs, and those set inside `network_def`
TOP_LEVEL = ("variant", "img_size", "random_init")
NETWORK_DEF = ("backbone", "in_channels", "levels", "lora_rank", "fusion", "decoder")


def read_bundle_meta(bundle_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The bundle's ``models/model_meta.json`` (checked), or None when it has none."""
    path = Path(bundle_dir) / "models" / META_FILE
    return read_model_meta(path) if path.is_file() else None


def meta_settings(meta: Mapping[str, Any], source: str | os.PathLike = META_FILE) -> dict[str, Any]:
    """Config ids (``variant``, ``network_def#decoder``, ...) that make a bundle build the sidecar's network.

    ``class_names`` are not set: they must equal the bundle's own (``metadata.json`` names MONAI Label's labels);
    ``source`` names the sidecar in errors.
    """
    settings = {key: meta[key] for key in TOP_LEVEL}
    settings.update({f"network_def#{key}": meta[key] for key in NETWORK_DEF if meta.get(key) is not None})
    if not meta["random_init"]:
        name = meta["sam_checkpoint"]
        if not name or Path(name).name != name:
            raise ValueError(f"{source}: sam_checkpoint must be a file name, got {name!r}")
        settings["sam_checkpoint"] = f"$@bundle_root + '/models/{name}'"
    return settings


def _parser(bundle_dir: str | os.PathLike, config: str = INFERENCE_CONFIG):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(Path(bundle_dir) / "configs" / config))
    parser["bundle_root"] = str(bundle_dir)
    return parser


def sam_checkpoint_path(bundle_dir: str | os.PathLike, config: str = INFERENCE_CONFIG) -> Path | None:
    """The SAM checkpoint the bundle's ``network_def`` loads (None under ``random_init`` or without one)."""
    parser = _parser(bundle_dir, config)
    network_def = parser.get("network_def") or {}
    if "sam_checkpoint" not in network_def:
        return None
    if "random_init" in network_def and as_bool(parser.get_parsed_content("network_def#random_init")):
        return None  # SamoraNet ignores sam_checkpoint under random_init
    path = parser.get_parsed_content("network_def#sam_checkpoint")
    return None if path is None else Path(path)


def require_sam_checkpoint(bundle_dir: str | os.PathLike, hint: str = "") -> Path | None:
    """Stop with one message naming the file and where to put it when the SAM checkpoint that the bundle's
    network is built from is missing; returns its path (None for random SAM weights)."""
    path = sam_checkpoint_path(bundle_dir)
    if path is None or path.is_file():
        return path
    raise FileNotFoundError(
        f"SAM checkpoint {path.name} not found: {Path(bundle_dir).name}'s model.pt was trained from it and MONAI "
        f"Label builds the network from it; put {path.name} (the official SAM weights) at {path}{hint}"
    )


def check_model_file(bundle_dir: str | os.PathLike, max_listed: int = 5) -> None:
    """Raise ``ValueError`` unless ``models/model.pt`` holds exactly the state dict (names and shapes) of the
    network that ``configs/inference.yaml`` builds. The network is built on the ``meta`` device with random SAM
    weights and no expert files, so the check reads no checkpoint and allocates no memory."""
    import torch

    model_file = Path(bundle_dir) / "models" / "model.pt"
    parser = _parser(bundle_dir)
    for key, value in (("random_init", True), ("sam_checkpoint", None), ("expert_checkpoints", {})):
        if key in parser["network_def"]:
            parser[f"network_def#{key}"] = value
    with torch.device("meta"):
        network = parser.get_parsed_content("network_def")
    expected = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    try:
        state = torch.load(model_file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise ValueError(f"{model_file}: cannot be read as a PyTorch state dict ({e})") from e
    state = state.get("model", state) if isinstance(state, dict) else state
    if not isinstance(state, Mapping):
        raise ValueError(f"{model_file}: expected a state dict, got {type(state).__name__}")
    found = {k: tuple(v.shape) for k, v in state.items()}
    problems = []
    for what, keys in (("missing", expected.keys() - found), ("unexpected", found.keys() - expected)):
        if keys:
            problems.append(f"{len(keys)} {what} keys (e.g. {sorted(keys)[:max_listed]})")
    shapes = sorted(k for k in expected.keys() & found if expected[k] != found[k])
    if shapes:
        k = shapes[0]
        problems.append(f"{len(shapes)} shape mismatches (e.g. {k}: {found[k]} in the file, {expected[k]} built)")
    if problems:
        raise ValueError(
            f"{model_file} does not match the network that configs/{INFERENCE_CONFIG} builds: {'; '.join(problems)}. "
            f"Install with the settings model.pt was trained with (a bundle trained with ModelMetaWriter records them "
            f"in models/{META_FILE}), e.g. --overrides \"{{'variant': 'tiny', 'img_size': 64}}\""
        )
