"""Patch-level teacher: a 2D masked auto-encoder ViT in MONAI style that returns its keep-indices.

MONAI's ``MaskedAutoEncoderViT`` needs ``einops`` (not installed here) and hides its masking indices, so the
encoder is built from MONAI's ``PatchEmbeddingBlock`` (conv projection, sin-cos positions) and pre-norm
``torch.nn.TransformerEncoderLayer`` blocks.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from monai.networks.blocks import PatchEmbeddingBlock
from monai.networks.blocks.pos_embed_utils import build_sincos_position_embedding
from monai.networks.layers import trunc_normal_
from torch import nn

from samora_monai.teachers.pretrained import load_mae_encoder

__all__ = ["MAETeacher", "patchify", "random_keep_indices"]


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, N, p*p*C] with patches in row-major order (the order of the ViT's patch tokens)."""
    b, c, h, w = x.shape
    gh, gw = h // patch_size, w // patch_size
    x = x.reshape(b, c, gh, patch_size, gw, patch_size)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, patch_size * patch_size * c)


def random_keep_indices(
    batch: int, num_patches: int, mask_ratio: float, device: torch.device | str | None = None
) -> torch.Tensor:
    """Random, per-sample subset of kept patch indices [B, K], K = int(N * (1 - mask_ratio)), in random order."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    keep = int(num_patches * (1.0 - mask_ratio))
    if keep < 1:
        raise ValueError(f"mask_ratio={mask_ratio} keeps no patch out of {num_patches}")
    return torch.rand(batch, num_patches, device=device).argsort(dim=1)[:, :keep]


def _gather(tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """tokens [B, N, D], ids [B, K] -> [B, K, D] (row i is tokens[b, ids[b, i]])."""
    return torch.gather(tokens, 1, ids.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def _vit_blocks(width: int, mlp_dim: int, num_heads: int, depth: int) -> nn.Sequential:
    """``depth`` pre-norm transformer blocks on [B, L, width] followed by a final LayerNorm.

    The official ViT/MAE block: LayerNorm eps 1e-6, qkv with bias, exact GELU MLP of width ``mlp_dim``.
    """
    layers = [
        nn.TransformerEncoderLayer(
            width,
            num_heads,
            mlp_dim,
            dropout=0.0,
            activation="gelu",
            layer_norm_eps=1e-6,
            batch_first=True,
            norm_first=True,
        )
        for _ in range(depth)
    ]
    return nn.Sequential(*layers, nn.LayerNorm(width, eps=1e-6))


class MAETeacher(nn.Module):
    """A 2D masked auto-encoder (ViT encoder + light decoder) for [0, 1] slices.

    Trained with :meth:`reconstruction_loss` (normalised-pixel MSE on the masked patches); as a teacher,
    :meth:`encode_visible` gives the visible tokens' features and the kept indices in the teacher's own order.

    Args:
        img_size: square input size S; the patch grid is (S / patch_size)^2.
        patch_size: 16, the SAM patch size, so the teacher grid equals the student token grid.
        in_channels: image channels (3-channel input is averaged when this is 1).
        hidden_size, mlp_dim, num_layers, num_heads: encoder (default ViT-B).
        decoder_hidden_size, decoder_mlp_dim, decoder_num_layers, decoder_num_heads: MAE decoder.
        mask_ratio: default fraction of masked patches.
        norm_pix_loss: normalise each target patch to zero mean and unit variance (MAE's default).
        pretrained: local official MAE checkpoint (``mae_pretrain_vit_base.pth``: ``{"model": encoder state}``)
            whose encoder is loaded at this ``img_size`` (position embedding resized); the decoder starts fresh.
            The encoder arguments must match the file (ViT-B: 768, 3072, 12, 12; ViT-L: 1024, 4096, 24, 16).
            See :func:`samora_monai.teachers.pretrained.load_mae_encoder`.
    """

    kind = "mae"
    level = "patch"

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_channels: int = 1,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_layers: int = 12,
        num_heads: int = 12,
        decoder_hidden_size: int = 512,
        decoder_mlp_dim: int = 2048,
        decoder_num_layers: int = 8,
        decoder_num_heads: int = 16,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
        pretrained: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size={img_size} must be a multiple of patch_size={patch_size}")
        # the constructor arguments, recorded in the teacher checkpoint to rebuild the network (the weights it holds
        # replace the ``pretrained`` file, which is recorded apart as provenance)
        self.config: dict[str, Any] = {
            k: v for k, v in locals().items() if k not in {"self", "__class__", "pretrained"}
        }
        random_keep_indices(1, 4, mask_ratio)  # validates the ratio early
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.embed_dim = hidden_size
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]

        self.patch_embedding = PatchEmbeddingBlock(
            in_channels=in_channels,
            img_size=img_size,
            patch_size=patch_size,
            hidden_size=hidden_size,
            num_heads=num_heads,
            proj_type="conv",
            pos_embed_type="sincos",
            spatial_dims=2,
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.blocks = _vit_blocks(hidden_size, mlp_dim, num_heads, num_layers)
        self.decoder_embed = nn.Linear(hidden_size, decoder_hidden_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_hidden_size))
        pos = build_sincos_position_embedding(self.grid_size, decoder_hidden_size, 2).data
        self.register_buffer("decoder_pos_embedding", pos)  # fixed sin-cos, [1, N, decoder_hidden_size]
        self.decoder_blocks = _vit_blocks(decoder_hidden_size, decoder_mlp_dim, decoder_num_heads, decoder_num_layers)
        self.decoder_pred = nn.Linear(decoder_hidden_size, patch_size * patch_size * in_channels)
        trunc_normal_(self.cls_token, mean=0.0, std=0.02, a=-2.0, b=2.0)
        trunc_normal_(self.mask_token, mean=0.0, std=0.02, a=-2.0, b=2.0)
        self.pretrained = None if pretrained is None else os.fspath(pretrained)
        if self.pretrained is not None:
            load_mae_encoder(self, self.pretrained)

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            raise ValueError(
                f"MAETeacher built for {self.img_size}x{self.img_size} images got input of shape {tuple(x.shape)}"
            )
        if x.shape[1] == 3 and self.in_channels == 1:
            x = x.mean(dim=1, keepdim=True)
        return x

    def _encode(self, x: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """Encoder output [B, 1 + K, D] (CLS first) for the kept patches of a checked input."""
        visible = _gather(self.patch_embedding(x), ids_keep)  # position embedding added before gathering
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return self.blocks(torch.cat([cls, visible], dim=1))

    def encode_visible(
        self, x: torch.Tensor, mask_ratio: float | None = None, ids_keep: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode only the kept patches of x [B, C, S, S].

        Args:
            x: images in [0, 1].
            mask_ratio: fraction to mask when ``ids_keep`` is not given (default: the configured ratio).
            ids_keep: [B, K] patch indices (row-major) to keep, in the order the features are returned.

        Returns:
            features [B, K, hidden_size] of the kept patches (after the encoder's final LayerNorm, no CLS) and
            ``ids_keep`` [B, K]: ``features[b, i]`` belongs to patch ``ids_keep[b, i]``.
        """
        x = self._check_input(x)
        if ids_keep is None:
            ratio = self.mask_ratio if mask_ratio is None else mask_ratio
            ids_keep = random_keep_indices(x.shape[0], self.num_patches, ratio, device=x.device)
        return self._encode(x, ids_keep)[:, 1:], ids_keep

    def forward(self, x: torch.Tensor, mask_ratio: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """MAE forward: per-patch pixel predictions [B, N, p*p*C] and the mask [B, N] (1 = masked)."""
        x = self._check_input(x)
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        ids_keep = random_keep_indices(x.shape[0], self.num_patches, ratio, device=x.device)
        latent = self.decoder_embed(self._encode(x, ids_keep))
        rows = torch.arange(x.shape[0], device=x.device).unsqueeze(-1)
        full = self.mask_token.expand(x.shape[0], self.num_patches, -1).clone()
        full[rows, ids_keep] = latent[:, 1:]
        full = full + self.decoder_pos_embedding
        pred = self.decoder_pred(self.decoder_blocks(torch.cat([latent[:, :1], full], dim=1)))[:, 1:]
        mask = torch.ones(x.shape[0], self.num_patches, device=x.device)
        mask[rows, ids_keep] = 0.0
        return pred, mask

    def reconstruction_loss(self, x: torch.Tensor, mask_ratio: float | None = None) -> torch.Tensor:
        """MAE training loss: MSE on the masked patches of x [B, C, S, S], per-patch normalised targets."""
        pred, mask = self(x, mask_ratio)
        target = patchify(self._check_input(x), self.patch_size)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6).sqrt()
        per_patch = ((pred - target) ** 2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum()
