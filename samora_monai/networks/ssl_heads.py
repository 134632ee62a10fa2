"""Stage-1 student heads: image projector, patch-token projector and pixel denoising decoder.

They sit on the SAM encoder's outputs (``tokens`` [B, h, w, C] before the neck, ``embedding`` [B, P, h, w] after
it, h = w = S / 16), are trained with one LoRA expert in stage 1 and discarded afterwards.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, UpSample
from monai.utils import look_up_option
from torch import nn

__all__ = ["ImageProjector", "TokenProjector", "DenoisingDecoder"]


def _mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Linear -> LayerNorm -> GELU -> Linear."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim)
    )


class ImageProjector(nn.Module):
    """Global-average-pool a feature map [B, C, h, w] and project it to [B, out_dim] (L2-normalised if asked).

    Args:
        in_dim: channels C of the pooled map (the neck width P, or the encoder width for tokens).
        out_dim: width of the teacher's embedding.
        hidden_dim: MLP hidden width.
        normalize: L2-normalise the output.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, normalize: bool = True) -> None:
        super().__init__()
        self.mlp = _mlp(in_dim, hidden_dim, out_dim)
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, h, w] -> [B, out_dim]."""
        z = self.mlp(x.mean(dim=(2, 3)))
        return F.normalize(z, dim=-1) if self.normalize else z


class TokenProjector(nn.Module):
    """Project student tokens [B, K, C] to the teacher's token width [B, K, out_dim].

    Args:
        in_dim: encoder width C.
        out_dim: teacher token width D.
        hidden_dim: MLP hidden width.
        normalize: L2-normalise each projected token.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, normalize: bool = False) -> None:
        super().__init__()
        self.mlp = _mlp(in_dim, hidden_dim, out_dim)
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, K, C] -> [B, K, out_dim]."""
        z = self.mlp(x)
        return F.normalize(z, dim=-1) if self.normalize else z


OUTPUT_ACTIVATIONS = ("sigmoid", "linear")


class DenoisingDecoder(nn.Module):
    """Light convolutional decoder from the neck embedding [B, P, h, w] to an image [B, out_channels, h*f, w*f].

    A 3x3 conv stem, then log2(f) stages of (2x transposed conv, 3x3 conv-norm-GELU), then a 1x1 conv.
    With ``output="sigmoid"`` the output lies in (0, 1), the range of the clean target; ``"linear"`` leaves it
    unbounded (regressed onto the [0, 1] target with L1/MSE).

    Args:
        in_channels: neck width P.
        out_channels: image channels.
        channels: widths of the up-sampling stages; ``len(channels) == log2(upsample_factor)``.
        upsample_factor: total spatial up-sampling, the encoder's patch size (16).
        norm: MONAI norm name for the conv blocks.
        output: ``"sigmoid"`` or ``"linear"``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 1,
        channels: tuple[int, ...] = (128, 64, 32, 16),
        upsample_factor: int = 16,
        norm: str = "batch",
        output: str = "sigmoid",
    ) -> None:
        super().__init__()
        stages = math.log2(upsample_factor)
        if not stages.is_integer() or len(channels) != int(stages):
            raise ValueError(
                f"upsample_factor={upsample_factor} needs log2(factor) up-sampling stages, got channels={channels}"
            )
        self.output = look_up_option(output, OUTPUT_ACTIVATIONS)
        layers: list[nn.Module] = [Convolution(2, in_channels, channels[0], kernel_size=3, act="GELU", norm=norm)]
        width = channels[0]
        for c in channels:
            layers.append(UpSample(2, width, c, scale_factor=2, mode="deconv"))
            layers.append(Convolution(2, c, c, kernel_size=3, act="GELU", norm=norm))
            width = c
        layers.append(Convolution(2, width, out_channels, kernel_size=1, conv_only=True))
        self.layers = nn.Sequential(*layers)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """embedding [B, P, h, w] -> image [B, out_channels, h * f, w * f]."""
        y = self.layers(embedding)
        return torch.sigmoid(y) if self.output == "sigmoid" else y
