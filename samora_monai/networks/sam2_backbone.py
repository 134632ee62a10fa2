"""SAM 2.1 backbone for SamoraNet: Hiera trunk + FPN neck, prompt encoder and mask decoder from the ``sam2``
package, built at any input size (multiple of 32), and official ``sam2.1_hiera_*.pt`` checkpoint loading."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from monai.utils import look_up_option
from sam2.modeling.backbones.hieradet import Hiera
from sam2.modeling.backbones.image_encoder import FpnNeck
from sam2.modeling.position_encoding import PositionEmbeddingSine
from sam2.modeling.sam.prompt_encoder import PromptEncoder
from sam2.modeling.sam.transformer import TwoWayTransformer
from torch import nn

from samora_monai.networks.hiera_block import HieraSamoraBlock
from samora_monai.networks.hl_attn import fusion_factory
from samora_monai.networks.lora import HierarchicalLoRA, lora_block_indexes
from samora_monai.networks.sam2_decoder import PromptFreeSam2MaskDecoder
from samora_monai.networks.sam_backbone import build_mask_decoder, build_prompt_encoder, load_sam_state_dict

logger = logging.getLogger(__name__)

__all__ = [
    "SAM2_VARIANTS",
    "Sam2Variant",
    "Sam2ImageEncoder",
    "build_sam2_modules",
    "map_sam2_state_dict",
    "load_sam2_state_dict",
    "SAM2_SKIPPED_KEYS",
]

SAM2_STRIDE = 32


@dataclass(frozen=True)
class Sam2Variant:
    """Hiera trunk and SAM 2 head hyper-parameters of one configuration (as in ``configs/sam2.1/*.yaml``)."""

    embed_dim: int
    num_heads: int
    stages: tuple[int, ...]
    global_att_blocks: tuple[int, ...]
    window_spec: tuple[int, ...] = (8, 4, 14, 7)
    pos_embed_size: tuple[int, int] = (7, 7)
    prompt_dim: int = 256
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8


SAM2_VARIANTS: dict[str, Sam2Variant] = {
    "hiera_t": Sam2Variant(96, 1, (1, 2, 7, 2), (5, 7, 9)),
    "hiera_s": Sam2Variant(96, 1, (1, 2, 11, 2), (7, 10, 13)),
    "hiera_b+": Sam2Variant(112, 2, (2, 3, 16, 3), (12, 16, 20), pos_embed_size=(14, 14)),
    "hiera_l": Sam2Variant(144, 2, (2, 6, 36, 4), (23, 33, 43), window_spec=(8, 4, 16, 8)),
    # Same classes, small dims (tests and the demo): q-pooling blocks 1, 3, 5; block 4 global.
    "tiny": Sam2Variant(
        8, 1, (1, 2, 2, 1), (4,), window_spec=(4, 4, 2, 2), pos_embed_size=(4, 4), prompt_dim=32,
        decoder_mlp_dim=64, decoder_heads=2,
    ),
}

# Official checkpoint keys SamoraNet does not use: video-only modules, and decoder tensors that depend on the
# number of masks or serve prompts/object scores (the prompt-free decoder has num_classes + 1 fresh mask tokens).
VIDEO_ONLY_KEYS = (
    "memory_attention.", "memory_encoder.", "maskmem_tpos_enc", "no_mem_pos_enc", "no_obj_ptr",
    "no_obj_embed_spatial", "mask_downsample.", "obj_ptr_proj.", "obj_ptr_tpos_proj.",
)
UNUSED_DECODER_KEYS = tuple(
    f"sam_mask_decoder.{name}."
    for name in ("mask_tokens", "output_hypernetworks_mlps", "iou_prediction_head", "obj_score_token",
                 "pred_obj_score_head")
)
SAM2_SKIPPED_KEYS = VIDEO_ONLY_KEYS + UNUSED_DECODER_KEYS
_RENAMES = (("sam_prompt_encoder.", "prompt_encoder."), ("sam_mask_decoder.", "mask_decoder."))


class Sam2ImageEncoder(nn.Module):
    """SAM 2's image encoder for single images: Hiera trunk (blocks wrapped as :class:`HieraSamoraBlock`),
    FPN neck (``scalp=1``: the stride-32 map is dropped) and ``no_mem_embed``.

    ``forward`` maps x [B, 3, S, S] to:
        - ``tokens`` [B, S/16, S/16, 4 C0]: the trunk's stride-16 stage output (last block of stage 3,
          C0 = ``embed_dim``), the grid of SAM 1's tokens and of the patch teacher (patch size 16);
        - ``embedding`` [B, P, S/16, S/16]: the stride-16 neck map plus ``no_mem_embed``, what SAM 2's mask
          decoder sees for a single image (it depends on every trunk block through the FPN top-down path);
        - ``high_res`` [[B, P, S/4, S/4], [B, P, S/8, S/8]]: the stride-4/8 neck maps for the decoder.
    """

    def __init__(self, trunk: Hiera, neck: FpnNeck) -> None:
        super().__init__()
        self.trunk = trunk
        self.neck = neck
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, neck.d_model))
        nn.init.trunc_normal_(self.no_mem_embed, std=0.02)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.trunk.blocks

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        stages = self.trunk(x)  # stride 4, 8, 16, 32 maps [B, C_i, h_i, w_i]
        features, _ = self.neck(stages)
        embedding = features[2] + self.no_mem_embed.reshape(1, -1, 1, 1)
        return stages[2].permute(0, 2, 3, 1), embedding, features[:2]


def get_sam2_variant(variant: str) -> Sam2Variant:
    return look_up_option(variant, SAM2_VARIANTS)


def build_sam2_modules(
    variant: str,
    img_size: int,
    num_classes: int,
    levels: Sequence[str] = (),
    lora_rank: int = 4,
    lora_blocks: Sequence[int] | None = None,
    make_fusion: Callable[[int, Sequence[str], int], nn.Module] = fusion_factory(),
) -> tuple[Sam2ImageEncoder, PromptEncoder, PromptFreeSam2MaskDecoder, tuple[int, ...]]:
    """SAM 2 image encoder (experts and ``make_fusion``'s fusion in ``lora_blocks``, default all), prompt encoder and
    prompt-free decoder with ``num_classes + 1`` mask tokens for ``img_size`` inputs; also returns the LoRA block
    indexes."""
    if img_size <= 0 or img_size % SAM2_STRIDE:
        raise ValueError(f"img_size must be a positive multiple of {SAM2_STRIDE} for SAM 2, got {img_size}.")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    v = get_sam2_variant(variant)
    trunk = Hiera(
        embed_dim=v.embed_dim, num_heads=v.num_heads, stages=v.stages, global_att_blocks=v.global_att_blocks,
        window_spec=v.window_spec, window_pos_embed_bkg_spatial_size=v.pos_embed_size,
    )
    lora_blocks = lora_block_indexes(lora_blocks, len(trunk.blocks))
    for i, block in enumerate(trunk.blocks):
        lora = fuse = None
        if levels and i in lora_blocks:
            lora = HierarchicalLoRA(block.dim, lora_rank, levels, out_dim=block.dim_out)
            fuse = make_fusion(block.dim_out, levels, block.attn.num_heads)
        trunk.blocks[i] = HieraSamoraBlock(block, lora, fuse)
    position = PositionEmbeddingSine(num_pos_feats=v.prompt_dim, normalize=True, scale=None, temperature=10000)
    neck = FpnNeck(position, v.prompt_dim, trunk.channel_list, fpn_top_down_levels=[2, 3], fpn_interp_model="nearest")
    prompt = build_prompt_encoder(v, img_size, PromptEncoder)
    decoder = build_mask_decoder(v, num_classes, PromptFreeSam2MaskDecoder, TwoWayTransformer)
    return Sam2ImageEncoder(trunk, neck), prompt, decoder, lora_blocks


def map_sam2_state_dict(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Official SAM 2.1 keys -> SamoraNet keys (``sam_prompt_encoder.`` -> ``prompt_encoder.``,
    ``sam_mask_decoder.`` -> ``mask_decoder.``, ``no_mem_embed`` -> ``image_encoder.no_mem_embed``); returns the
    mapped state and the skipped keys (video-only modules and the unused/class-dependent decoder tensors)."""
    mapped, skipped = {}, []
    for key, value in state.items():
        if key.startswith(SAM2_SKIPPED_KEYS):
            skipped.append(key)
            continue
        if key == "no_mem_embed":
            key = "image_encoder.no_mem_embed"
        for old, new in _RENAMES:
            if key.startswith(old):
                key = new + key[len(old) :]
        mapped[key] = value
    return mapped, skipped


def load_sam2_state_dict(
    model: nn.Module, state: dict[str, torch.Tensor], allowed_missing: tuple[str, ...] = (), source: str = "checkpoint"
) -> list[str]:
    """Load an official SAM 2.1 state dict (the ``"model"`` entry of ``sam2.1_hiera_*.pt``) into ``model``.

    Skipped keys are logged and returned; every other unexpected, mis-shaped or missing key (except fragments in
    ``allowed_missing``, e.g. ``".lora."``, and the fresh class-dependent decoder tensors) raises ``ValueError``
    naming it.
    """
    mapped, skipped = map_sam2_state_dict(state)
    load_sam_state_dict(model, mapped, allowed_missing, source)
    logger.info("%s: skipped %d video-only / unused decoder tensors: %s", source, len(skipped), skipped)
    return skipped
