"""Prompt-free use of SAM's mask decoder (SAMed convention)."""

from __future__ import annotations

import torch
from segment_anything.modeling import MaskDecoder
from torch import nn

__all__ = ["PromptFreeMaskDecoder", "decode_tokens", "mask_logits"]


def decode_tokens(
    decoder: nn.Module, image_embeddings: torch.Tensor, image_pe: torch.Tensor, dense_embeddings: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two-way transformer of a SAM or SAM 2 mask ``decoder`` run prompt-free (its IoU and mask tokens only):
    image_embeddings [B, P, g, g], image_pe and dense_embeddings [1, P, g, g] -> (mask tokens [B, K+1, P], image
    tokens [B, g*g, P])."""
    batch = image_embeddings.shape[0]
    tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight]).unsqueeze(0).expand(batch, -1, -1)
    hs, src = decoder.transformer(image_embeddings + dense_embeddings, image_pe.expand(batch, -1, -1, -1), tokens)
    return hs[:, 1 : 1 + decoder.num_mask_tokens], src


def mask_logits(decoder: nn.Module, mask_tokens: torch.Tensor, upscaled: torch.Tensor) -> torch.Tensor:
    """Each mask token's hypernetwork MLP applied to the upscaled embedding: mask tokens [B, K+1, P], upscaled
    [B, C, H, W] -> logits [B, K+1, H, W]."""
    hyper = torch.stack([mlp(mask_tokens[:, i]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1)
    b, c, h, w = upscaled.shape
    return (hyper @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)


class PromptFreeMaskDecoder(MaskDecoder):
    """SAM's mask decoder run without prompts: every mask token is returned (no multimask slicing).

    Same parameters and state-dict keys as :class:`segment_anything.modeling.MaskDecoder`, except the IoU
    prediction head, which a prompt-free decoder never uses (it would only add untrainable parameters).
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        del self.iou_prediction_head

    def forward(  # type: ignore[override]
        self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, dense_embeddings: torch.Tensor
    ) -> torch.Tensor:
        """image_embeddings [B, P, g, g], image_pe and dense_embeddings [1, P, g, g] -> logits [B, K+1, 4g, 4g]."""
        return self.forward_features(image_embeddings, image_pe, dense_embeddings)[0]

    def forward_features(
        self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, dense_embeddings: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Same inputs as ``forward`` -> (logits [B, K+1, 4g, 4g], mask-token/image similarity [B, K+1, g*g],
        upsampled embedding [B, P/8, 4g, 4g]); the last two feed H-SAM's second stage."""
        b, c, h, w = image_embeddings.shape
        mask_tokens, src = decode_tokens(self, image_embeddings, image_pe, dense_embeddings)
        similarity = mask_tokens @ src.transpose(1, 2)
        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        return mask_logits(self, mask_tokens, upscaled), similarity, upscaled
