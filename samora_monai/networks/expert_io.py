"""Self-describing stage-1 expert files: one level's LoRA weights plus what they were trained for."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from samora_monai.networks.samora_net import SamoraNet
from samora_monai.utils import atomic_output, load_record

__all__ = ["EXPERT_FORMAT", "expert_state_dict", "save_expert", "load_expert", "read_expert_file"]

EXPERT_FORMAT = "samora_expert_v1"


def _expert_key(key: str, level: str) -> bool:
    return f".lora.experts.{level}." in key


def expert_state_dict(net: SamoraNet, level: str) -> dict[str, torch.Tensor]:
    """The tensors of expert ``level`` in every block (A, B and scale), keyed as in ``net.state_dict()``."""
    if level not in net.levels:
        raise ValueError(f"Unknown level {level!r}; the network has {list(net.levels)}.")
    return {k: v.detach().cpu().clone() for k, v in net.state_dict().items() if _expert_key(k, level)}


def _network_record(net: SamoraNet, level: str) -> dict[str, Any]:
    """What an expert file records about the network it fits, and what loading checks against it."""
    return {
        "level": level,
        "rank": net.lora_rank,
        "backbone": net.backbone,
        "variant": net.variant,
        "img_size": net.img_size,
        "lora_blocks": list(net.lora_blocks),
    }


def save_expert(net: SamoraNet, level: str, path: str, summary: Mapping[str, Any] | None = None) -> str:
    """Write expert ``level`` with its level, rank, backbone family and variant, image size and a training summary."""
    record = {
        "format": EXPERT_FORMAT,
        **_network_record(net, level),
        "summary": dict(summary or {}),
        "state_dict": expert_state_dict(net, level),
    }
    with atomic_output(path) as tmp:
        torch.save(record, tmp)
    return path


def read_expert_file(path: str) -> dict[str, Any]:
    """Read and validate the container of an expert file (not yet checked against a network)."""
    return load_record(path, EXPERT_FORMAT, "SAMora expert file", "; write expert files with save_expert")


def load_expert(net: SamoraNet, path: str, level: str | None = None) -> dict[str, Any]:
    """Load an expert file into ``net``; refuses a file for another level, rank, backbone, size or block set."""
    record = read_expert_file(path)
    level = level or record["level"]
    expected = _network_record(net, level)
    found = {"backbone": "sam", **record}  # files written before SAM 2 support hold SAM 1 experts
    mismatches = [
        f"{k}: file has {found.get(k)!r}, network needs {v!r}" for k, v in expected.items() if found.get(k) != v
    ]
    if mismatches:
        raise ValueError(f"Expert file {path} does not fit this network: " + "; ".join(mismatches))
    wanted = expert_state_dict(net, level)
    state = record["state_dict"]
    if set(state) != set(wanted):
        raise ValueError(
            f"Expert file {path} has keys {sorted(set(state) - set(wanted))} not in the network and lacks "
            f"{sorted(set(wanted) - set(state))}."
        )
    net.load_state_dict(state, strict=False)
    return record
