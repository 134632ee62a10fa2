"""``models/model_meta.json``: how the network in ``models/model.pt`` was built, written beside it.

``model.pt`` is a bare state dict; the sidecar records what a consumer needs to rebuild the same network
(backbone, variant, input size, classes, experts, fusion, decoder), whether the SAM weights were random or came
from a named official checkpoint, and how the run made it (``training``: stage-1 experts or the "no stage 1"
ablation, fusion init, model selection, loss resolution). ``monailabel_install`` reads it to configure the
installed bundle.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events
from torch import nn

from samora_monai.networks.hl_attn import HLAttn, HLAttnLite, SumFusion
from samora_monai.utils import atomic_output

__all__ = ["META_FILE", "ModelMetaWriter", "model_meta", "read_model_meta", "write_model_meta"]

META_FILE = "model_meta.json"
# the network attributes recorded as they are (SamoraNet sets each one)
NETWORK_FIELDS = ("backbone", "variant", "img_size", "in_channels", "num_classes", "levels", "lora_rank", "decoder")
REQUIRED_FIELDS = ("backbone", "variant", "img_size", "num_classes", "random_init", "sam_checkpoint")
_FUSIONS = ((HLAttnLite, "hl_attn_lite"), (HLAttn, "hl_attn"), (SumFusion, "sum"))


def _fusion_name(network: nn.Module) -> str | None:
    """``"hl_attn"``, ``"hl_attn_lite"`` or ``"sum"`` from the network's fusion modules; None without experts."""
    for module in network.modules():
        for cls, name in _FUSIONS:
            if isinstance(module, cls):
                return name
    return None


def model_meta(
    network: nn.Module, class_names: Sequence[str], sam_checkpoint: str | os.PathLike | None
) -> dict[str, Any]:
    """The sidecar content for a ``SamoraNet`` (a DDP wrapper is unwrapped).

    ``sam_checkpoint`` is the checkpoint the network was built from (its file name is recorded) or None for random
    SAM weights (``random_init: true``, which a network's ``sam_source`` also tells). ``class_names`` are the
    foreground classes: output channel ``i + 1`` is ``class_names[i]`` (channel 0 is background).
    """
    network = getattr(network, "module", network)
    if getattr(network, "sam_source", None) == "random_init":  # SamoraNet ignored sam_checkpoint
        sam_checkpoint = None
    missing = [f for f in NETWORK_FIELDS if not hasattr(network, f)]
    if missing:
        raise TypeError(f"model_meta needs a SamoraNet; {type(network).__name__} has no {missing}")
    meta: dict[str, Any] = {f: getattr(network, f) for f in NETWORK_FIELDS}
    meta["levels"] = list(meta["levels"])
    if len(class_names) != meta["num_classes"]:
        raise ValueError(f"{len(class_names)} class names {list(class_names)} for {meta['num_classes']} classes")
    meta["class_names"] = list(class_names)
    meta["fusion"] = _fusion_name(network)
    meta["random_init"] = sam_checkpoint is None
    meta["sam_checkpoint"] = None if sam_checkpoint is None else Path(sam_checkpoint).name
    return meta


def write_model_meta(path: str | os.PathLike, meta: Mapping[str, Any]) -> Path:
    """Write ``meta`` as JSON to ``path`` atomically; returns the path."""
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(dict(meta), indent=2) + "\n")
    return path


def read_model_meta(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a sidecar: a JSON object with at least :data:`REQUIRED_FIELDS`."""
    path = Path(path)
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    missing = [f for f in REQUIRED_FIELDS if f not in meta]
    if missing:
        raise ValueError(f"{path}: missing {missing}")
    if not isinstance(meta["random_init"], bool) or (meta["sam_checkpoint"] is None) != meta["random_init"]:
        raise ValueError(
            f"{path}: random_init={meta['random_init']!r} with sam_checkpoint={meta['sam_checkpoint']!r}; "
            "expected random_init true without a checkpoint, or false with its file name"
        )
    return meta


class ModelMetaWriter:
    """Trainer handler: (re)write ``<model_file folder>/model_meta.json`` whenever ``model_file`` was written
    during this run (checked at the end of every epoch and of the run), so the sidecar always describes the
    network that produced the current ``model.pt`` and never sits beside an older one.

    Attach it after the ``ValidationHandler`` whose evaluator saves ``model_file`` (e.g. last in
    ``train#handlers``), with ``sam_checkpoint: '@network_def#sam_checkpoint'`` (None under ``random_init``);
    ``training`` is recorded as the sidecar's ``"training"`` entry.
    """

    def __init__(
        self,
        network: nn.Module,
        model_file: str | os.PathLike,
        class_names: Sequence[str],
        sam_checkpoint: str | os.PathLike | None,
        training: Mapping[str, Any] | None = None,
    ) -> None:
        self.model_file = Path(model_file)
        self.meta = model_meta(network, class_names, sam_checkpoint)
        if training:  # JSON values as they are, anything else (paths, tuples) as text
            self.meta["training"] = json.loads(json.dumps(dict(training), default=str))
        self._seen: int | None = None

    @property
    def meta_file(self) -> Path:
        return self.model_file.with_name(META_FILE)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.check)
        engine.add_event_handler(Events.COMPLETED, self.check)

    def _mtime(self) -> int | None:
        return self.model_file.stat().st_mtime_ns if self.model_file.is_file() else None

    def started(self, engine: Engine | None = None) -> None:
        self._seen = self._mtime()

    def check(self, engine: Engine | None = None) -> None:
        """Write the sidecar if ``model_file`` changed since the run started or since the last write."""
        mtime = self._mtime()
        if mtime is not None and mtime != self._seen:
            write_model_meta(self.meta_file, self.meta)
            self._seen = mtime
