"""SamoraNet: SAM encoder with hierarchical LoRA experts and HL-Attn, plus a prompt-free mask decoder."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from samora_monai.networks.decoders import PromptFreeMaskDecoder
from samora_monai.networks.hl_attn import build_fusion
from samora_monai.networks.lora import DEFAULT_LEVELS, HierarchicalLoRA
from samora_monai.networks.sam_backbone import (
    build_image_encoder,
    build_mask_decoder,
    build_prompt_encoder,
    get_variant,
    load_sam_state_dict,
    read_checkpoint,
)
from samora_monai.networks.samora_block import BLOCK_MODES, SamoraBlock
from samora_monai.utils import as_bool

logger = logging.getLogger(__name__)

__all__ = ["SamoraNet"]


class SamoraNet(nn.Module):
    """SAMora segmentation network on a SAM backbone.

    ``forward`` maps images [B, in_channels, H, W] with values in [0, 1] to logits
    [B, num_classes + 1, H, W] at the input resolution (channel 0 is background). Inputs of another size
    are resized to ``img_size`` internally; 1-channel inputs are replicated to SAM's 3 channels.

    Args:
        num_classes: number of foreground classes.
        variant: SAM backbone: ``"vit_b"``, ``"vit_l"``, ``"vit_h"`` or ``"tiny"`` (tests and the demo).
        img_size: network input size (multiple of 16), e.g. 224, 512 or 1024.
        in_channels: 1 (replicated to 3) or 3.
        levels: LoRA expert levels; empty for plain SAM.
        lora_rank: rank of every expert.
        lora_blocks: indexes of the encoder blocks that carry experts (default: all).
        fusion: ``"hl_attn"`` (light token-wise HL-Attn), ``"hl_attn_spatial"`` (reference-style) or ``"sum"``.
        fusion_order: HL-Attn order, lowest level first (default pixel, patch, image).
        fusion_width, fusion_heads: width and heads of the light HL-Attn.
        fusion_init: ``"sum"`` (start at encoder + summed expert contributions) or ``"base"`` (encoder alone).
        mode: initial block mode, ``"plain"``, ``"expert"`` (with ``active_level``) or ``"fused"``.
        active_level: the expert used in ``"expert"`` mode.
        sam_checkpoint: local path of an official SAM checkpoint (e.g. ``sam_vit_b_01ec64.pth``).
        random_init: True (or ``"true"`` from a command line): random SAM weights, ``sam_checkpoint`` is ignored
            (tests and demos only). The source of the weights is recorded as ``sam_source``.
        expert_checkpoints: ``{level: path}`` of stage-1 expert files to load.
    """

    def __init__(
        self,
        num_classes: int,
        variant: str = "vit_b",
        img_size: int = 224,
        in_channels: int = 1,
        levels: Sequence[str] = DEFAULT_LEVELS,
        lora_rank: int = 4,
        lora_blocks: Sequence[int] | None = None,
        fusion: str = "hl_attn",
        fusion_order: Sequence[str] | None = None,
        fusion_width: int = 64,
        fusion_heads: int = 4,
        fusion_init: str = "sum",
        mode: str = "fused",
        active_level: str | None = None,
        sam_checkpoint: str | None = None,
        random_init: bool | str = False,
        expert_checkpoints: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}.")
        random_init = as_bool(random_init)
        sam_checkpoint = None if random_init else sam_checkpoint
        if sam_checkpoint is None and not random_init:
            raise ValueError(
                "No SAM checkpoint given: set `sam_checkpoint` to a local file such as sam_vit_b_01ec64.pth, "
                "or pass random_init=True explicitly to build SAM with random weights (tests and demos only)."
            )
        cfg = get_variant(variant)
        self.num_classes = num_classes
        self.variant = variant
        self.img_size = img_size
        self.in_channels = in_channels
        self.levels = tuple(levels)
        self.lora_rank = lora_rank
        self.encoder_width = cfg.embed_dim
        self.embed_dim = cfg.prompt_dim
        self.lora_blocks = tuple(range(cfg.depth)) if lora_blocks is None else tuple(sorted(lora_blocks))
        if any(i < 0 or i >= cfg.depth for i in self.lora_blocks):
            raise ValueError(f"lora_blocks {list(self.lora_blocks)} out of range for {cfg.depth} blocks.")

        self.image_encoder = build_image_encoder(variant, img_size)
        self.prompt_encoder = build_prompt_encoder(variant, img_size)
        self.mask_decoder = build_mask_decoder(variant, num_classes, PromptFreeMaskDecoder)
        for i, block in enumerate(self.image_encoder.blocks):
            lora = fuse = None
            if self.levels and i in self.lora_blocks:
                lora = HierarchicalLoRA(cfg.embed_dim, lora_rank, self.levels)
                fuse = build_fusion(
                    fusion, cfg.embed_dim, self.levels, cfg.num_heads, fusion_order, fusion_width, fusion_heads,
                    fusion_init,
                )
            self.image_encoder.blocks[i] = SamoraBlock(block, lora, fuse)

        self.sam_source = "random_init" if random_init else os.path.abspath(os.fspath(sam_checkpoint))
        if sam_checkpoint is not None:
            load_sam_state_dict(
                self, read_checkpoint(sam_checkpoint), allowed_missing=(".lora.", ".fusion."), source=sam_checkpoint
            )
        else:
            logger.warning("SamoraNet(%s) built with RANDOM SAM weights (random_init=True).", variant)
        if expert_checkpoints:
            from samora_monai.networks.expert_io import load_expert

            for level, path in expert_checkpoints.items():
                load_expert(self, path, level)
        self.set_mode(mode if self.levels else "plain", active_level)

    @property
    def samora_blocks(self) -> list[SamoraBlock]:
        return list(self.image_encoder.blocks)

    def set_mode(self, mode: str, level: str | None = None) -> None:
        """Switch every block to ``"plain"``, ``"expert"`` (stage 1 with ``level``) or ``"fused"`` (stage 2)."""
        if mode not in BLOCK_MODES:
            raise ValueError(f"Unknown mode {mode!r}; choose one of {BLOCK_MODES}.")
        if mode != "plain" and not self.levels:
            raise ValueError(f"Mode {mode!r} needs LoRA experts, but this network has no levels.")
        for block in self.samora_blocks:
            block.set_mode(mode, level)
        self.mode, self.active_level = mode, (level if mode == "expert" else None)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"Expected input [B, {self.in_channels}, H, W], got {tuple(x.shape)}.")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
        return x

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, in_channels, H, W] -> (tokens [B, g, g, C] after the last block, neck embedding [B, P, g, g]).

        g = img_size / 16, C = ``encoder_width``, P = ``embed_dim``.
        """
        encoder = self.image_encoder
        tokens = encoder.patch_embed(self._prepare(x)) + encoder.pos_embed
        for block in encoder.blocks:
            tokens = block(tokens)
        return tokens, encoder.neck(tokens.permute(0, 3, 1, 2))

    def decode(self, embedding: torch.Tensor) -> torch.Tensor:
        """embedding [B, P, g, g] -> low-resolution logits [B, num_classes + 1, 4g, 4g], prompt-free."""
        pe = self.prompt_encoder
        dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, *embedding.shape[-2:])
        return self.mask_decoder(embedding, pe.get_dense_pe(), dense)

    def forward_with_aux(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"logits": [B, K+1, H, W], "low_res_logits": [B, K+1, S/4, S/4]}`` for trainers."""
        low_res = self.decode(self.encode(x)[1])
        logits = F.interpolate(low_res, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return {"logits": logits, "low_res_logits": low_res}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, in_channels, H, W] in [0, 1] -> logits [B, num_classes + 1, H, W]."""
        return self.forward_with_aux(x)["logits"]
