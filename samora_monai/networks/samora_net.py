"""SamoraNet: SAM encoder with hierarchical LoRA experts and HL-Attn, plus a prompt-free mask decoder."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.utils import look_up_option
from torch import nn

from samora_monai.networks.decoders import PromptFreeMaskDecoder
from samora_monai.networks.hl_attn import fusion_factory
from samora_monai.networks.hsam_decoder import HSamStage2Decoder
from samora_monai.networks.lora import DEFAULT_LEVELS, HierarchicalLoRA, lora_block_indexes
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

__all__ = ["BACKBONES", "DECODERS", "SamoraNet"]

BACKBONES = ("sam", "sam2")
DECODERS = ("sam", "hsam")


def _sam2_backbone():
    """The SAM 2 backbone module, imported on first use: it needs the optional ``sam2`` package."""
    try:
        from samora_monai.networks import sam2_backbone
    except ImportError as e:
        raise ImportError(
            f"backbone='sam2' needs the sam2 package ({e}); install it with `make venv` or "
            '`SAM2_BUILD_CUDA=0 pip install --no-build-isolation -c requirements/constraints.txt -e ".[sam2]"`.'
        ) from e
    return sam2_backbone


class SamoraNet(nn.Module):
    """SAMora segmentation network on a SAM backbone.

    ``forward`` maps images [B, in_channels, H, W] with values in [0, 1] to logits
    [B, num_classes + 1, H, W] at the input resolution (channel 0 is background). Inputs of another size
    are resized to ``img_size`` internally; 1-channel inputs are replicated to SAM's 3 channels.

    Args:
        num_classes: number of foreground classes.
        variant: SAM backbone: ``"vit_b"``, ``"vit_l"``, ``"vit_h"`` or ``"tiny"`` (tests and the demo); with
            ``backbone="sam2"``: ``"hiera_t"``, ``"hiera_s"``, ``"hiera_b+"``, ``"hiera_l"`` or ``"tiny"``.
        img_size: network input size (multiple of 16; of 32 for SAM 2), e.g. 224, 512 or 1024.
        in_channels: 1 (replicated to 3) or 3.
        levels: LoRA expert levels; empty for plain SAM.
        lora_rank: rank of every expert.
        lora_blocks: indexes of the encoder blocks that carry experts (default: all).
        fusion: ``"hl_attn"`` (the reference HL-Attn: full-width cross-attention across the spatial tokens with
            the block's heads), ``"hl_attn_lite"`` (this project's light token-wise variant) or ``"sum"`` (ablation).
        fusion_order: HL-Attn order, lowest level first (default pixel, patch, image); any permutation.
        fusion_width, fusion_heads: width and heads of ``"hl_attn_lite"``.
        fusion_init: ``"sum"`` (default; start at encoder + summed expert contributions), ``"base"`` (encoder
            alone) or ``"reference"`` (``"hl_attn"`` only: the reference's initialisation, final LayerNorm on).
        mode: initial block mode, ``"plain"``, ``"expert"`` (with ``active_level``) or ``"fused"``.
        active_level: the expert used in ``"expert"`` mode.
        sam_checkpoint: local path of an official SAM checkpoint (e.g. ``sam_vit_b_01ec64.pth``, or
            ``sam2.1_hiera_tiny.pt`` for SAM 2).
        random_init: True (or ``"true"`` from a command line): random SAM weights, ``sam_checkpoint`` is ignored
            (tests and demos only). The source of the weights is recorded as ``sam_source``.
        expert_checkpoints: ``{level: path}`` of stage-1 expert files to load.
        decoder: ``"sam"`` (SAM's decoder, prompt-free) or ``"hsam"`` (H-SAM's two-stage decoder, SAM 1 backbone:
            stage 1 is ``mask_decoder``, loaded from SAM like the plain one; stage 2 is ``mask_decoder2``, trained from
            scratch).
        hsam_guided_attention: ``"published"`` or ``"working"`` mask-guided self-attention in H-SAM's stage 2
            (see :mod:`samora_monai.networks.hsam_decoder`).
        backbone: ``"sam"`` (SAM 1 ViT) or ``"sam2"`` (SAM 2.1 Hiera + FPN neck, built by
            :func:`~samora_monai.networks.sam2_backbone.build_sam2_modules`: the experts sit in the Hiera blocks,
            ``encode`` gives the stride-16 trunk tokens and the stride-16 neck map, the decoder also uses the
            stride-4/8 neck maps). Both families get [0, 1] images without mean/std normalisation (SAMed
            convention; SAM 2's own predictor normalises with ImageNet statistics).
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
        decoder: str = "sam",
        hsam_guided_attention: str = "published",
        backbone: str = "sam",
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
        self.backbone = look_up_option(backbone, BACKBONES)
        self.decoder = look_up_option(decoder, DECODERS)
        if self.decoder == "hsam" and self.backbone == "sam2":
            raise ValueError("decoder='hsam' (H-SAM's two-stage decoder) is built for SAM 1 backbones only.")
        self.num_classes = num_classes
        self.variant = variant
        self.img_size = img_size
        self.in_channels = in_channels
        self.levels = tuple(levels)
        self.lora_rank = lora_rank
        make_fusion = fusion_factory(fusion, fusion_order, fusion_width, fusion_heads, fusion_init)
        if self.backbone == "sam2":
            self._build_sam2(lora_blocks, make_fusion)
        else:
            self._build_sam(lora_blocks, make_fusion)
        if self.decoder == "hsam":
            cfg = get_variant(variant)
            self.mask_decoder2 = HSamStage2Decoder(
                cfg.prompt_dim, num_classes, img_size // 16, cfg.decoder_heads, cfg.decoder_mlp_dim,
                hsam_guided_attention,
            )

        self.sam_source = "random_init" if random_init else os.path.abspath(os.fspath(sam_checkpoint))
        if sam_checkpoint is not None:
            load = _sam2_backbone().load_sam2_state_dict if self.backbone == "sam2" else load_sam_state_dict
            allowed = (".lora.", ".fusion.", "mask_decoder2.")
            load(self, read_checkpoint(sam_checkpoint), allowed_missing=allowed, source=sam_checkpoint)
        else:
            logger.warning("SamoraNet(%s) built with RANDOM SAM weights (random_init=True).", variant)
        if expert_checkpoints:
            from samora_monai.networks.expert_io import load_expert

            for level, path in expert_checkpoints.items():
                load_expert(self, path, level)
        self.set_mode(mode if self.levels else "plain", active_level)

    def _build_sam2(self, lora_blocks, make_fusion) -> None:
        """SAM 2.1 Hiera encoder, prompt encoder and prompt-free high-resolution decoder."""
        build = _sam2_backbone().build_sam2_modules
        self.image_encoder, self.prompt_encoder, self.mask_decoder, self.lora_blocks = build(
            self.variant, self.img_size, self.num_classes, self.levels, self.lora_rank, lora_blocks, make_fusion
        )
        trunk = self.image_encoder.trunk
        self.encoder_width = trunk.blocks[trunk.stage_ends[2]].dim_out  # stride-16 token width
        self.embed_dim = self.image_encoder.neck.d_model

    def _build_sam(self, lora_blocks, make_fusion) -> None:
        """SAM 1 ViT encoder with experts in ``lora_blocks``, prompt encoder and prompt-free decoder."""
        variant, img_size, num_classes, lora_rank = self.variant, self.img_size, self.num_classes, self.lora_rank
        cfg = get_variant(variant)
        self.encoder_width = cfg.embed_dim
        self.embed_dim = cfg.prompt_dim
        self.lora_blocks = lora_block_indexes(lora_blocks, cfg.depth)

        self.image_encoder = build_image_encoder(variant, img_size)
        self.prompt_encoder = build_prompt_encoder(variant, img_size)
        self.mask_decoder = build_mask_decoder(variant, num_classes, PromptFreeMaskDecoder)
        for i, block in enumerate(self.image_encoder.blocks):
            lora = fuse = None
            if self.levels and i in self.lora_blocks:
                lora = HierarchicalLoRA(cfg.embed_dim, lora_rank, self.levels)
                fuse = make_fusion(cfg.embed_dim, self.levels, cfg.num_heads)
            self.image_encoder.blocks[i] = SamoraBlock(block, lora, fuse)

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

        g = img_size / 16, C = ``encoder_width``, P = ``embed_dim``. SAM 2: the tokens of the last stride-16
        Hiera block and the stride-16 neck map plus ``no_mem_embed`` (see ``Sam2ImageEncoder``).
        """
        return self._encode_all(x)[:2]

    def _encode_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor] | None]:
        """``encode`` plus the stride-4/8 neck maps SAM 2's decoder uses (``None`` for SAM 1)."""
        if self.backbone == "sam2":
            return self.image_encoder(self._prepare(x))
        encoder = self.image_encoder
        tokens = encoder.patch_embed(self._prepare(x)) + encoder.pos_embed
        for block in encoder.blocks:
            tokens = block(tokens)
        return tokens, encoder.neck(tokens.permute(0, 3, 1, 2)), None

    def _prompt_free(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image positional encoding, no-mask dense embedding), each [1, P, g, g]."""
        pe = self.prompt_encoder
        return pe.get_dense_pe(), pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, *embedding.shape[-2:])

    def decode(self, embedding: torch.Tensor, high_res: list[torch.Tensor] | None = None) -> torch.Tensor:
        """embedding [B, P, g, g] -> low-resolution logits [B, num_classes + 1, 4g, 4g], prompt-free (stage 1).

        ``high_res``: SAM 2's stride-4/8 neck maps [B, P, 4g, 4g] and [B, P, 2g, 2g] (required for SAM 2).
        """
        extra = () if self.backbone == "sam" else (high_res,)
        return self.mask_decoder(embedding, *self._prompt_free(embedding), *extra)

    def forward_with_aux(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"logits": [B, K+1, H, W], "low_res_logits": [B, K+1, S/4, S/4]}`` for trainers; with the H-SAM
        decoder also ``"logits1"``/``"logits2"`` (each stage at [H, W]; ``"logits"`` is their average)."""
        _, embedding, high_res = self._encode_all(x)
        if self.decoder == "hsam":
            pe, dense = self._prompt_free(embedding)
            return self.mask_decoder2.two_stage(self.mask_decoder, embedding, pe, dense, x.shape[-2:])
        low_res = self.decode(embedding, high_res)
        logits = F.interpolate(low_res, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return {"logits": logits, "low_res_logits": low_res}

    def forward(self, x: torch.Tensor, aux: bool = False) -> torch.Tensor | dict[str, torch.Tensor]:
        """x [B, in_channels, H, W] in [0, 1] -> logits [B, num_classes + 1, H, W] (``aux``: the dict of
        :meth:`forward_with_aux`, for losses on every output, also through ``DistributedDataParallel``)."""
        out = self.forward_with_aux(x)
        return out if aux else out["logits"]
