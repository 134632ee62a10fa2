"""Stage freezing: one function decides which parameters train in each SAMora stage."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import nn

from samora_monai.networks.samora_net import SamoraNet

logger = logging.getLogger(__name__)

__all__ = ["STAGES", "configure_stage", "count_parameters", "stage_network"]

STAGES = ("stage1", "stage2", "samed")


def count_parameters(module: nn.Module) -> dict[str, int]:
    """``{"trainable": n, "total": m}`` parameter counts of ``module``."""
    params = list(module.parameters())
    return {"trainable": sum(p.numel() for p in params if p.requires_grad), "total": sum(p.numel() for p in params)}


def configure_stage(
    net: SamoraNet, stage: str, level: str | None = None, heads: Iterable[nn.Module] = ()
) -> dict[str, int]:
    """Set ``requires_grad`` and the block mode for one stage, and return the parameter counts.

    - ``"stage1"``: only expert ``level`` (its A, B and scale in every block) and the SSL ``heads`` train;
      blocks run that expert alone.
    - ``"stage2"``: only the fusion modules (HL-Attn) and the mask decoder train; blocks run all experts fused.
    - ``"samed"``: a SAMed-style baseline: expert ``level`` and the mask decoder train, blocks run that expert.

    "The mask decoder" is both stages of the H-SAM decoder when ``net.decoder == "hsam"``.

    The counts include the heads: ``{"trainable": n, "total": m}``.
    """
    if stage not in STAGES:
        raise ValueError(f"Unknown stage {stage!r}; choose one of {STAGES}.")
    if stage in ("stage1", "samed") and level not in net.levels:
        raise ValueError(f"Stage {stage!r} needs an expert level from {list(net.levels)}, got {level!r}.")
    heads = list(heads)
    net.requires_grad_(False)
    trainable: list[nn.Module] = list(heads)
    blocks = [b for b in net.samora_blocks if b.lora is not None]
    decoders = [net.mask_decoder] + ([net.mask_decoder2] if net.decoder == "hsam" else [])
    if stage == "stage2":
        net.set_mode("fused")
        trainable += [b.fusion for b in blocks] + decoders
    else:
        net.set_mode("expert", level)
        trainable += [b.lora.experts[level] for b in blocks]
        if stage == "samed":
            trainable += decoders
    for module in trainable:
        module.requires_grad_(True)
    counts = count_parameters(nn.ModuleList([net, *heads]))
    logger.info("%s%s: %d trainable of %d parameters.", stage, f" ({level})" if level else "", *counts.values())
    return counts


def stage_network(
    net: SamoraNet, stage: str, level: str | None = None, device: torch.device | str = "cpu"
) -> SamoraNet:
    """:func:`configure_stage` (logging the parameter counts), then move ``net`` to ``device``; for bundle configs,
    e.g. ``$samora_monai.networks.stage_network(@network_def, 'samed', 'image', @device)``."""
    configure_stage(net, stage, level)
    return net.to(device)
