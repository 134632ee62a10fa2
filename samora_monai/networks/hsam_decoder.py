"""H-SAM's second decoder stage (Cheng et al., CVPR 2024), prompt-free, on ``segment_anything``'s classes.

Stage 1 is SAM's decoder with ``K + 1`` mask tokens (:class:`~samora_monai.networks.decoders.PromptFreeMaskDecoder`,
whose ``forward_features`` also returns the mask-token/image similarity and the x4 upsampled embedding). Stage 2
(:class:`HSamStage2Decoder`) refines it:

- prior: stage-1 logits resized to the embedding grid and softmaxed over classes, ``[B, K+1, g*g]``;
- class-balanced mask-guided self-attention (:class:`MaskGuidedSelfAttention`) over the per-class similarity rows,
  reduced to one gate map ``a`` and applied as ``src = src + src * gate(a)``;
- learnable mask cross-attention (:class:`PriorAttention`): post-softmax attention weights multiplied by the prior,
  without renormalisation, in both token-to-image and image-to-token directions;
- upsampling that concatenates the stage-1 upsampled embedding, then skips up to the full input resolution.

``guided_attention="published"`` (default) reproduces the public H-SAM code: ``gate = softmax(a, dim=1)`` over a
singleton channel, i.e. a constant 1, so the branch doubles ``src`` and its weights never receive a gradient (the
published numbers were produced this way). ``"working"`` uses ``gate = sigmoid(a)``, a real spatial gate.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.utils import look_up_option
from segment_anything.modeling.common import LayerNorm2d, MLPBlock
from segment_anything.modeling.mask_decoder import MLP
from segment_anything.modeling.transformer import Attention, TwoWayAttentionBlock, TwoWayTransformer
from torch import nn

from samora_monai.networks.decoders import PromptFreeMaskDecoder

__all__ = [
    "GUIDED_ATTENTION",
    "HSamStage2Decoder",
    "MaskGuidedSelfAttention",
    "PriorAttention",
    "PriorTwoWayTransformer",
    "class_balanced_noise",
]

GUIDED_ATTENTION = ("published", "working")
# noise std per class, rarest class first (H-SAM's ``noise_list``); classes past the list get none
NOISE_SCALES = (0.35, 0.3, 0.3, 0.2, 0.2, 0.1, 0.1, 0.0, 0.0)


class PriorAttention(Attention):
    """SAM attention whose softmax weights [B, heads, Nq, Nk] are multiplied by ``prior`` [B, 1, Nq, Nk]."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        q = self._separate_heads(self.q_proj(q), self.num_heads)
        k = self._separate_heads(self.k_proj(k), self.num_heads)
        v = self._separate_heads(self.v_proj(v), self.num_heads)
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1) * prior
        return self.out_proj(self._recombine_heads(attn @ v))


class PriorTwoWayBlock(TwoWayAttentionBlock):
    """H-SAM's stage-2 block: token-to-image mask cross-attention first (dropout on its output), then token
    self-attention, MLP, and image-to-token mask cross-attention; both cross-attentions are weighted by the prior."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, skip_first_layer_pe: bool, dropout: float = 0.2):
        super().__init__(dim, num_heads, mlp_dim, nn.ReLU, 2, skip_first_layer_pe)
        self.cross_attn_token_to_image = PriorAttention(dim, num_heads)
        self.cross_attn_image_to_token = PriorAttention(dim, num_heads)
        self.dropout = nn.Dropout(dropout)

    def forward(  # type: ignore[override]
        self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor,
        prior: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """queries [B, T, C], keys [B, N, C], prior [B, T, N] -> updated (queries, keys)."""
        out = self.cross_attn_token_to_image(queries + query_pe, keys + key_pe, keys, prior.unsqueeze(1))
        queries = self.norm2(queries + self.dropout(out))
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        queries = self.norm1(queries)
        queries = self.norm3(queries + self.mlp(queries))
        out = self.cross_attn_image_to_token(keys + key_pe, queries + query_pe, queries, prior.transpose(1, 2)[:, None])
        return queries, self.norm4(keys + out)


class PriorTwoWayTransformer(TwoWayTransformer):
    """SAM's two-way transformer built from :class:`PriorTwoWayBlock` layers; ``forward`` takes the prior."""

    def __init__(self, depth: int, embedding_dim: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__(depth, embedding_dim, num_heads, mlp_dim)
        self.layers = nn.ModuleList(
            PriorTwoWayBlock(embedding_dim, num_heads, mlp_dim, skip_first_layer_pe=i == 0) for i in range(depth)
        )

    def forward(  # type: ignore[override]
        self, image_embedding: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor, prior: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embedding, image_pe [B, C, g, g], tokens [B, T, C], prior [B, T, g*g] -> ([B, T, C], [B, N, C])."""
        keys = image_embedding.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe, prior)
        out = self.final_attn_token_to_image(q=queries + tokens, k=keys + key_pe, v=keys)
        return self.norm_final_attn(queries + out), keys


def class_balanced_noise(rows: torch.Tensor, labels: torch.Tensor, scales=NOISE_SCALES) -> torch.Tensor:
    """Noise for similarity rows [B, T, N] given per-position classes [B, N]: ``randn * s_c + mean(rows)`` where
    ``s_c`` follows the batch frequency rank of class ``c`` (rarest first, ``scales``)."""
    classes, counts = labels.unique(return_counts=True)
    table = torch.zeros(int(classes.max()) + 1, dtype=rows.dtype, device=rows.device)
    for rank, c in enumerate(classes[counts.argsort(stable=True)].tolist()):
        table[c] = scales[rank] if rank < len(scales) else 0.0
    return torch.randn_like(rows) * table[labels].unsqueeze(1) + rows.detach().mean()


class MaskGuidedSelfAttention(nn.Module):
    """H-SAM's class-balanced mask-guided self-attention: per-class similarity rows [B, T, N] (N = g*g positions)
    -> gate [B, 1, g, g]. Training adds dropout (0.1) and :func:`class_balanced_noise`, with classes taken from the
    prior's argmax (the public code uses the ground truth, which a prompt-free network does not see)."""

    def __init__(self, num_tokens: int, num_positions: int, mode: str = "published", mlp_dim: int = 2048) -> None:
        super().__init__()
        self.mode = look_up_option(mode, GUIDED_ATTENTION)
        heads = math.gcd(num_positions, 7)  # 7 heads over 196 positions at 224 px, as published
        self.self_attn = Attention(num_positions, heads)
        self.norm1 = nn.LayerNorm(num_positions)
        self.self_attn2 = Attention(num_positions, heads)
        self.norm2 = nn.LayerNorm(num_positions)
        self.mlp = MLPBlock(num_positions, mlp_dim, nn.ReLU)
        self.select = nn.Sequential(nn.Linear(num_tokens, 1), nn.ReLU())
        self.dropout = nn.Dropout(0.1)

    def forward(self, rows: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        """rows, prior [B, T, N] -> gate [B, 1, g, g] (all ones in ``"published"`` mode)."""
        x = self.dropout(rows)
        if self.training:
            x = x + class_balanced_noise(x, prior.argmax(1))
        x = self.norm1(self.self_attn(x, x, x))
        x = self.self_attn2(x, x, x)
        x = self.norm2(x + self.mlp(x))
        grid = math.isqrt(x.shape[-1])
        a = self.select(x.transpose(1, 2)).transpose(1, 2).reshape(x.shape[0], 1, grid, grid)
        return torch.softmax(a, dim=1) if self.mode == "published" else torch.sigmoid(a)


class HSamStage2Decoder(nn.Module):
    """H-SAM's second mask decoder (only mask tokens, no IoU head), trained from scratch.

    Args:
        transformer_dim: decoder width P (SAM: 256).
        num_classes: foreground classes K (K + 1 mask tokens).
        grid: embedding grid g (img_size / 16).
        num_heads, mlp_dim: heads and MLP width of the two-way transformer (SAM: 8, 2048).
        guided_attention: ``"published"`` (inert, as in the public code) or ``"working"``; see the module docstring.
        noise: std of the Gaussian noise added to the image embedding in training, as a fraction of its range.
    """

    def __init__(
        self, transformer_dim: int, num_classes: int, grid: int, num_heads: int = 8, mlp_dim: int = 2048,
        guided_attention: str = "published", noise: float = 0.2,
    ) -> None:  # fmt: skip
        super().__init__()
        c, tokens = transformer_dim, num_classes + 1
        self.grid, self.noise = grid, noise
        self.mask_tokens = nn.Embedding(tokens, c)
        self.transformer = PriorTwoWayTransformer(2, c, num_heads, mlp_dim)
        self.guided_attention = MaskGuidedSelfAttention(tokens, grid * grid, guided_attention)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(c, c // 4, 2, 2), LayerNorm2d(c // 4), nn.GELU(),
            nn.ConvTranspose2d(c // 4, c // 8, 2, 2), nn.GELU(),
        )  # fmt: skip
        self.skip_connect = nn.Sequential(
            nn.ConvTranspose2d(c // 4, c // 8, 2, 2), LayerNorm2d(c // 8), nn.GELU(),
            nn.ConvTranspose2d(c // 8, c // 16, 2, 2), LayerNorm2d(c // 16), nn.GELU(),
        )  # fmt: skip
        self.output_hypernetworks_mlps = nn.ModuleList(MLP(c, c, c // 16, 5) for _ in range(tokens))

    def forward(
        self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, dense_embeddings: torch.Tensor,
        stage1_logits: torch.Tensor, similarity: torch.Tensor, upscaled: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        """image_embeddings [B, P, g, g], image_pe/dense [1, P, g, g], stage1_logits [B, T, 4g, 4g], similarity
        [B, T, g*g], upscaled [B, P/8, 4g, 4g] -> logits [B, T, 16g, 16g] (T = K + 1)."""
        b = image_embeddings.shape[0]
        if self.training and self.noise > 0:
            span = (image_embeddings.max() - image_embeddings.min()).detach()
            image_embeddings = image_embeddings + torch.randn_like(image_embeddings) * self.noise * span
        prior = F.interpolate(stage1_logits, size=image_embeddings.shape[-2:], mode="bilinear", align_corners=False)
        prior = torch.softmax(prior, dim=1).flatten(2)
        src = image_embeddings + dense_embeddings
        src = src + src * self.guided_attention(similarity, prior)
        tokens = self.mask_tokens.weight.unsqueeze(0).expand(b, -1, -1)
        hs, keys = self.transformer(src, image_pe.expand(b, -1, -1, -1), tokens, prior)
        up = self.output_upscaling(keys.transpose(1, 2).reshape(src.shape))
        up = self.skip_connect(torch.cat([up, upscaled], dim=1))
        hyper = torch.stack([mlp(hs[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        return (hyper @ up.flatten(2)).reshape(b, -1, *up.shape[-2:])

    def two_stage(
        self, stage1: PromptFreeMaskDecoder, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
        dense_embeddings: torch.Tensor, size: tuple[int, int],
    ) -> dict[str, torch.Tensor]:  # fmt: skip
        """Run both stages. Returns ``low_res_logits`` (stage 1, [B, T, 4g, 4g]), ``logits1`` and ``logits2`` (each
        stage at ``size``) and ``logits`` (their average, the inference output)."""
        low_res, similarity, upscaled = stage1.forward_features(image_embeddings, image_pe, dense_embeddings)
        full = self(image_embeddings, image_pe, dense_embeddings, low_res, similarity, upscaled)
        logits1 = F.interpolate(low_res, size=size, mode="bilinear", align_corners=False)
        logits2 = full if tuple(full.shape[-2:]) == tuple(size) else F.interpolate(
            full, size=size, mode="bilinear", align_corners=False
        )  # fmt: skip
        return {"logits": (logits1 + logits2) / 2, "low_res_logits": low_res, "logits1": logits1, "logits2": logits2}
