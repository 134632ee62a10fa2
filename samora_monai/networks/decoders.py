"""Prompt-free use of SAM's mask decoder (SAMed convention)."""

from __future__ import annotations

import torch
from segment_anything.modeling import MaskDecoder

__all__ = ["PromptFreeMaskDecoder"]


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
        batch = image_embeddings.shape[0]
        tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight]).unsqueeze(0).expand(batch, -1, -1)
        src = image_embeddings + dense_embeddings
        b, c, h, w = src.shape
        hs, src = self.transformer(src, image_pe.expand(batch, -1, -1, -1), tokens)
        mask_tokens = hs[:, 1 : 1 + self.num_mask_tokens]
        similarity = mask_tokens @ src.transpose(1, 2)
        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper = torch.stack([mlp(mask_tokens[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        b, c, h, w = upscaled.shape
        return (hyper @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w), similarity, upscaled
