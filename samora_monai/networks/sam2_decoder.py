"""Prompt-free use of SAM 2's mask decoder with its high-resolution (stride 4 and 8) features."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from sam2.modeling.sam.mask_decoder import MaskDecoder

from samora_monai.networks.decoders import decode_tokens, mask_logits

__all__ = ["PromptFreeSam2MaskDecoder"]


class PromptFreeSam2MaskDecoder(MaskDecoder):
    """SAM 2's mask decoder run without prompts, returning every mask token's logits (``num_classes + 1``).

    Built with ``use_high_res_features=True`` and without object-score prediction; the IoU prediction head,
    which a prompt-free decoder never uses, is removed. Other parameters keep the keys of
    :class:`sam2.modeling.sam.mask_decoder.MaskDecoder` (``conv_s0``/``conv_s1`` project the stride-4/8 maps).
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(use_high_res_features=True, pred_obj_scores=False, **kwargs)
        del self.iou_prediction_head

    def forward(  # type: ignore[override]
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        dense_embeddings: torch.Tensor,
        high_res_features: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """image_embeddings [B, P, g, g], image_pe and dense_embeddings [1, P, g, g], high_res_features the
        neck maps [B, P, 4g, 4g] and [B, P, 2g, 2g] -> logits [B, K+1, 4g, 4g]."""
        if high_res_features is None or len(high_res_features) != 2:
            raise ValueError("SAM 2's mask decoder needs the stride-4 and stride-8 neck maps (high_res_features).")
        b, c, h, w = image_embeddings.shape
        mask_tokens, src = decode_tokens(self, image_embeddings, image_pe, dense_embeddings)
        up1, norm, act1, up2, act2 = self.output_upscaling
        upscaled = act1(norm(up1(src.transpose(1, 2).reshape(b, c, h, w)) + self.conv_s1(high_res_features[1])))
        upscaled = act2(up2(upscaled) + self.conv_s0(high_res_features[0]))
        return mask_logits(self, mask_tokens, upscaled)
