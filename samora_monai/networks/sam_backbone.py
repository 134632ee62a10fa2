"""Build SAM's modules from ``segment_anything`` at any input size and load official checkpoints into them."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer
from torch import nn

from samora_monai.utils import raise_problems

logger = logging.getLogger(__name__)

__all__ = [
    "SAM_VARIANTS",
    "SamVariant",
    "CLASS_DEPENDENT_DECODER_KEYS",
    "build_image_encoder",
    "build_prompt_encoder",
    "build_mask_decoder",
    "read_checkpoint",
    "adapt_sam_state_dict",
    "load_sam_state_dict",
]

PATCH_SIZE = 16


@dataclass(frozen=True)
class SamVariant:
    """Hyper-parameters of one SAM configuration (encoder width/depth, decoder width)."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    window_size: int = 14
    prompt_dim: int = 256
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8


SAM_VARIANTS: dict[str, SamVariant] = {
    "vit_b": SamVariant(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamVariant(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamVariant(1280, 32, 16, (7, 15, 23, 31)),
    # Same classes as the official models, small enough for CPU tests and the demo.
    "tiny": SamVariant(64, 4, 4, (1, 3), window_size=4, prompt_dim=32, decoder_mlp_dim=128, decoder_heads=2),
}

# Decoder tensors whose shape or meaning depends on the number of output masks; never loaded from SAM.
CLASS_DEPENDENT_DECODER_KEYS = (
    "mask_decoder.mask_tokens.",
    "mask_decoder.output_hypernetworks_mlps.",
    "mask_decoder.iou_prediction_head.",
)


def get_variant(variant: str) -> SamVariant:
    if variant not in SAM_VARIANTS:
        raise ValueError(f"Unknown SAM variant {variant!r}; choose one of {sorted(SAM_VARIANTS)}.")
    return SAM_VARIANTS[variant]


def _check_img_size(img_size: int) -> int:
    if img_size % PATCH_SIZE != 0 or img_size <= 0:
        raise ValueError(f"img_size must be a positive multiple of {PATCH_SIZE}, got {img_size}.")
    return img_size // PATCH_SIZE


def build_image_encoder(variant: str, img_size: int) -> ImageEncoderViT:
    """SAM's ViT image encoder for ``img_size`` x ``img_size`` inputs; output [B, prompt_dim, S/16, S/16]."""
    _check_img_size(img_size)
    v = get_variant(variant)
    return ImageEncoderViT(
        depth=v.depth,
        embed_dim=v.embed_dim,
        img_size=img_size,
        mlp_ratio=4,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        num_heads=v.num_heads,
        patch_size=PATCH_SIZE,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=v.global_attn_indexes,
        window_size=v.window_size,
        out_chans=v.prompt_dim,
    )


def _head_variant(variant: str | SamVariant) -> SamVariant:
    """A SAM variant by name, or any variant object with ``prompt_dim``, ``decoder_mlp_dim`` and ``decoder_heads``
    (SAM 2's too: its prompt encoder and mask decoder take the same arguments)."""
    return get_variant(variant) if isinstance(variant, str) else variant


def build_prompt_encoder(
    variant: str | SamVariant, img_size: int, encoder_cls: type[nn.Module] = PromptEncoder
) -> nn.Module:
    """SAM's prompt encoder (``encoder_cls``: SAM 2's for that backbone); used prompt-free, for its no-mask embedding
    and dense positional encoding."""
    grid = _check_img_size(img_size)
    v = _head_variant(variant)
    return encoder_cls(
        embed_dim=v.prompt_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(img_size, img_size),
        mask_in_chans=16,
    )


def build_mask_decoder(
    variant: str | SamVariant,
    num_classes: int,
    decoder_cls: type[nn.Module] = MaskDecoder,
    transformer_cls: type[nn.Module] = TwoWayTransformer,
) -> nn.Module:
    """SAM's mask decoder with ``num_classes + 1`` mask tokens (background + classes, SAMed convention);
    ``decoder_cls``/``transformer_cls``: the prompt-free subclass, and SAM 2's classes for that backbone."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    v = _head_variant(variant)
    return decoder_cls(
        num_multimask_outputs=num_classes,
        transformer=transformer_cls(
            depth=2, embedding_dim=v.prompt_dim, mlp_dim=v.decoder_mlp_dim, num_heads=v.decoder_heads
        ),
        transformer_dim=v.prompt_dim,
        iou_head_depth=3,
        iou_head_hidden_dim=v.prompt_dim,
    )


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a SAM checkpoint (a plain state dict, or one nested under ``"model"``/``"state_dict"``)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"SAM checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or non-torch files
        raise RuntimeError(f"SAM checkpoint {path} is corrupt or not a PyTorch file: {e}") from e
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise RuntimeError(f"SAM checkpoint {path} does not hold a state dict of tensors.")
    return obj


def _resize_pos_embed(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """[1, G, G, C] -> [1, grid, grid, C] by bilinear interpolation."""
    resized = F.interpolate(pos.permute(0, 3, 1, 2).float(), size=(grid, grid), mode="bilinear", align_corners=False)
    return resized.permute(0, 2, 3, 1).to(pos.dtype)


def _resize_rel_pos(rel: torch.Tensor, length: int) -> torch.Tensor:
    """[L, head_dim] -> [length, head_dim] by linear interpolation along the relative-distance axis."""
    resized = F.interpolate(rel.T.unsqueeze(0).float(), size=length, mode="linear", align_corners=False)
    return resized[0].T.to(rel.dtype)


def adapt_sam_state_dict(
    state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Map an official SAM state dict onto ``target`` (the state dict of the model to load into).

    Resizes the absolute position embedding and relative-position tables to the target input size, drops the
    class-dependent decoder tensors, and raises ``ValueError`` naming every other key that is unexpected or
    has the wrong shape.
    """
    adapted: dict[str, torch.Tensor] = {}
    unexpected, wrong_shape = [], []
    for key, value in state.items():
        if key.startswith(CLASS_DEPENDENT_DECODER_KEYS):
            continue
        if key not in target:
            unexpected.append(key)
            continue
        want = target[key].shape
        if value.shape != want:
            if key.endswith("pos_embed") and value.ndim == 4 and value.shape[-1] == want[-1]:
                value = _resize_pos_embed(value, want[1])
            elif key.endswith(("rel_pos_h", "rel_pos_w")) and value.ndim == 2 and value.shape[1] == want[1]:
                value = _resize_rel_pos(value, want[0])
            else:
                wrong_shape.append(f"{key}: {tuple(value.shape)} in {source}, {tuple(want)} in the model")
                continue
        adapted[key] = value
    raise_problems(f"{source} does not match this SAM architecture: ",
                   {"unexpected keys": unexpected, "shape mismatches": wrong_shape})
    return adapted


def load_sam_state_dict(
    model: nn.Module, state: dict[str, torch.Tensor], allowed_missing: tuple[str, ...] = (), source: str = "checkpoint"
) -> None:
    """Load an official SAM state dict into ``model`` (keys ``image_encoder.*``, ``prompt_encoder.*``, ...).

    ``allowed_missing`` are key fragments of modules the checkpoint cannot provide (e.g. ``".lora."``); the
    class-dependent decoder keys are always allowed. Any other missing key is an error naming the keys.
    """
    target = model.state_dict()
    adapted = adapt_sam_state_dict(state, target, source)
    allowed = tuple(allowed_missing) + CLASS_DEPENDENT_DECODER_KEYS
    missing = [k for k in target if k not in adapted and not any(a in k for a in allowed)]
    if missing:
        raise ValueError(f"{source} lacks keys required by this SAM architecture: {missing}")
    model.load_state_dict(adapted, strict=False)
    logger.info("Loaded %d SAM tensors from %s.", len(adapted), source)
