"""The ``samora`` template's settings: ``configs/hyper_parameters.yaml`` parsed once into a typed, validated object."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, get_args, get_type_hints

import yaml
from monai.bundle import ConfigParser
from monai.utils import look_up_option

from samora_monai.utils import atomic_output, bundle_dir

__all__ = [
    "DERIVED_KEYS",
    "HYPER_PARAMETERS",
    "SSL_MODES",
    "SamoraSettings",
    "as_flag",
    "bundle_train_config",
    "load_settings",
    "save_yaml",
]

logger = logging.getLogger(__name__)

HYPER_PARAMETERS = "hyper_parameters.yaml"
SSL_MODES = ("run", "skip")
# keys SamoraAlgo.fill_template_config derives from the data statistics (a user value replacing one is logged)
DERIVED_KEYS = ("modality", "intensity_window", "percentiles", "input_channels", "output_classes", "slice_axis",
                "img_size")  # fmt: skip


def as_flag(value: Any, name: str = "flag") -> bool:
    """A boolean from YAML (``true``) or a command line (``--random_init true`` arrives as a string)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", "none", "null", ""):
        return False
    raise ValueError(f"{name}: not a boolean: {value!r}")


def save_yaml(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` as YAML atomically, with the permissions of a normal write."""
    with atomic_output(path) as tmp, open(tmp, "w") as f:
        yaml.safe_dump(obj, f, sort_keys=False, default_flow_style=None)


_COERCE = {int: lambda v, _: int(v), str: lambda v, _: str(v), bool: as_flag}


@dataclasses.dataclass(frozen=True)
class SamoraSettings:
    """Every setting of one ``samora`` algorithm (one fold), typed and checked once.

    The recipe itself (loss, optimiser, learning rate, schedule, augmentation, ...) is not here: it is the bundle's
    ``train.yaml``; ``bundle_overrides`` replaces any of its top-level keys (e.g. ``{"learning_rate": 0.01}``).
    """

    bundle_root: str
    fold: int
    ckpt_path: str
    data_file_base_dir: str
    data_list_file_path: str
    class_names: list | None
    modality: str
    intensity_window: list
    percentiles: list
    input_channels: int
    output_classes: int
    slice_axis: int
    img_size: int
    n_cases: int | None
    replaced_derived: dict
    bundle: str
    variant: str
    sam_checkpoint: str | None
    random_init: bool
    lora_rank: int
    expert_dir: str | None
    ssl: str
    allow_missing_experts: bool
    ssl_epochs: int
    ssl_overrides: dict
    num_epochs: int | None
    num_images_per_batch: int | None
    val_interval: int
    slice_batch_size: int
    num_workers: int
    device: str | None
    bundle_overrides: dict
    infer: dict

    def __post_init__(self) -> None:
        for field, hint in get_type_hints(type(self)).items():
            value = getattr(self, field)
            kinds = [a for a in get_args(hint) if a is not type(None)] or [hint]
            if value is None and type(None) in get_args(hint):
                continue
            kind = kinds[0]
            try:
                value = _COERCE[kind](value, field) if kind in _COERCE else value
            except (TypeError, ValueError) as e:
                raise ValueError(f"{HYPER_PARAMETERS}: {field}={value!r} is not a valid {kind.__name__}") from e
            if kind in (list, dict) and not isinstance(value, (list, tuple) if kind is list else Mapping):
                raise ValueError(f"{HYPER_PARAMETERS}: {field} must be a {kind.__name__}, got {value!r}")
            object.__setattr__(self, field, list(value) if kind is list else dict(value) if kind is dict else value)
        object.__setattr__(self, "ssl", look_up_option(self.ssl.lower(), SSL_MODES))
        object.__setattr__(self, "modality", look_up_option(self.modality.lower(), ("ct", "mr")))
        look_up_option(self.slice_axis, (0, 1, 2))
        for field in ("output_classes", "img_size", "lora_rank", "ssl_epochs", "val_interval", "slice_batch_size",
                      "num_epochs", "num_images_per_batch"):  # fmt: skip
            value = getattr(self, field)
            if value is not None and value < 1:
                raise ValueError(f"{HYPER_PARAMETERS}: {field} must be >= 1, got {value}")
        if self.output_classes < 2:
            raise ValueError(f"{HYPER_PARAMETERS}: output_classes must count background and >= 1 class")
        if self.class_names is not None and len(self.class_names) != self.output_classes - 1:
            raise ValueError(
                f"{HYPER_PARAMETERS}: {len(self.class_names)} class_names for {self.output_classes - 1} classes"
            )
        if not self.random_init and not self.sam_checkpoint:
            raise ValueError(
                f"{HYPER_PARAMETERS}: set sam_checkpoint to a local SAM checkpoint (random_init: true is for tests)"
            )

    @property
    def foreground_names(self) -> list[str]:
        """``class_names``, or ``class_1 .. class_K`` when the input config gave none."""
        return list(self.class_names or [f"class_{i}" for i in range(1, self.output_classes)])


def bundle_train_config(bundle: str | os.PathLike) -> dict:
    """The raw ``configs/train.yaml`` of ``bundle`` (a shipped bundle's name or a bundle folder)."""
    return ConfigParser.load_config_file(bundle_dir(bundle) / "configs" / "train.yaml")


def _known(key: str, config: Mapping) -> bool:
    return key.split("#")[0] in config


def load_settings(
    config_file: str | Sequence[str],
    override: Mapping[str, Any] | None = None,
    persist: bool = False,
) -> SamoraSettings:
    """Parse the template configs with ``override`` applied.

    Keys of ``hyper_parameters.yaml`` replace its values; keys in ``bundle_keys`` (the bundle's ``train.yaml``
    top-level keys) go to ``bundle_overrides``; others are ignored with a warning (``AutoRunner`` passes one set of
    training parameters to every algorithm). A value replacing a data-derived one is logged. ``persist=True``
    (training) writes the overrides back into ``hyper_parameters.yaml`` so scoring and inference use them too.
    """
    files = [config_file] if isinstance(config_file, (str, os.PathLike)) else list(config_file)
    for f in files:
        if not os.path.isfile(f):
            raise FileNotFoundError(f"config file not found: {f}")
    parser = ConfigParser()
    parser.read_config(files)
    override = dict(override or {})
    bundle_keys = set(bundle_train_config(override.get("bundle", parser.get("bundle"))))
    mine, to_bundle, unknown = {}, {}, []
    for key, value in override.items():
        if _known(key, parser.config):
            mine[key] = value
        elif key in bundle_keys:
            to_bundle[key] = value
        else:
            unknown.append(key)
    if unknown:
        logger.warning("ignoring parameters unknown to the samora template and its bundle: %s", unknown)
    replaced = dict(parser.get("replaced_derived") or {})
    for key, value in mine.items():
        if key in DERIVED_KEYS and parser.get(key) != value:
            logger.warning("%s: the given %r replaces the value derived from the data (%r)", key, value, parser[key])
            replaced[key] = {"derived": replaced.get(key, {}).get("derived", parser[key]), "given": value}
        parser[key] = value
    if replaced:
        parser["replaced_derived"] = mine["replaced_derived"] = replaced
    if to_bundle:
        parser["bundle_overrides"] = {**(parser.get("bundle_overrides") or {}), **to_bundle}
        logger.info("bundle train.yaml overrides: %s", parser["bundle_overrides"])
    if persist and (mine or to_bundle):
        hyper = next((f for f in files if os.path.basename(f) == HYPER_PARAMETERS), None)
        if hyper is None:
            raise ValueError(f"cannot record the training parameters: no {HYPER_PARAMETERS} in {files}")
        raw = ConfigParser(ConfigParser.load_config_file(hyper))
        for key, value in {**mine, "bundle_overrides": parser["bundle_overrides"]}.items():
            if _known(key, raw.config):
                raw[key] = value
        save_yaml(raw.config, hyper)
    if parser.get("bundle_root") is None:
        raise ValueError(f"bundle_root is not set in {files}; generate the algorithm with BundleGen first")
    resolved = parser.get_parsed_content()
    names = {f.name for f in dataclasses.fields(SamoraSettings)}
    missing = sorted(names - set(resolved))
    if missing:
        raise ValueError(f"{files}: settings missing: {missing}")
    return SamoraSettings(**{k: resolved[k] for k in names})
