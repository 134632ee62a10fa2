"""Image-level teacher: a ResNet trained with SimCLR-style NT-Xent on two augmented views of unlabeled slices."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from monai.losses import ContrastiveLoss
from monai.transforms import (
    Compose,
    MapTransform,
    RandAdjustContrast,
    RandFlip,
    RandGaussianSmooth,
    Randomizable,
    RandRotate90,
    RandScaleIntensity,
    RandShiftIntensity,
    RandSpatialCrop,
    Resize,
    ScaleIntensityRange,
)
from monai.utils import look_up_option
from torch import nn
from torchvision import models

from samora_monai.teachers.pretrained import load_torchvision_resnet

__all__ = ["ContrastiveTeacher", "contrastive_augment", "TwoViewd", "as_three_channels"]

EMBED_SOURCES = ("backbone", "projection")


def as_three_channels(x: torch.Tensor) -> torch.Tensor:
    """Replicate a single-channel batch [B, 1, H, W] to [B, 3, H, W]; 3-channel input is returned unchanged."""
    if x.shape[1] == 1:
        return x.expand(-1, 3, -1, -1)
    if x.shape[1] != 3:
        raise ValueError(f"expected 1 or 3 input channels, got input of shape {tuple(x.shape)}")
    return x


class ContrastiveTeacher(nn.Module):
    """A torchvision ResNet (random init or local pretrained weights, nothing downloaded) with a SimCLR projection MLP.

    Args:
        arch: torchvision ResNet constructor name (``resnet50`` by default; tests use ``resnet18``).
        proj_hidden_dim: hidden width of the projection MLP.
        proj_dim: output width of the projection MLP (the space NT-Xent works in).
        temperature: NT-Xent temperature.
        embed_from: which vector :meth:`embed` returns as the distillation target: the pooled ``backbone``
            feature (SimCLR's representation) or the ``projection``.
        img_size: training image size, recorded in checkpoints (the ResNet itself accepts any size).
        pretrained: local torchvision-layout state dict of ``arch`` to start from (ImageNet weights, or a SimCLR
            checkpoint in that layout; ``state_dict``/``model`` wrappers and ``module.`` prefixes are accepted,
            the classifier ``fc`` is skipped); contrastive training then continues from it. The projection MLP
            starts fresh. See :func:`samora_monai.teachers.pretrained.load_torchvision_resnet`.
    """

    kind = "contrastive"
    level = "image"

    def __init__(
        self,
        arch: str = "resnet50",
        proj_hidden_dim: int = 2048,
        proj_dim: int = 128,
        temperature: float = 0.1,
        embed_from: str = "backbone",
        img_size: int = 224,
        pretrained: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        if not arch.startswith("resnet") and not arch.startswith("wide_resnet"):
            raise ValueError(f"ContrastiveTeacher needs a torchvision ResNet, got arch={arch!r}")
        embed_from = look_up_option(embed_from, EMBED_SOURCES)
        # the constructor arguments, recorded in the teacher checkpoint to rebuild the network (the weights it holds
        # replace the ``pretrained`` file, which is recorded apart as provenance)
        self.config: dict[str, Any] = {
            k: v for k, v in locals().items() if k not in {"self", "__class__", "pretrained"}
        }
        self.img_size = img_size
        self.backbone = models.get_model(arch, weights=None)
        feat_dim = self.backbone.fc.in_features
        self.backbone.fc = nn.Identity()
        self.pretrained = None if pretrained is None else os.fspath(pretrained)
        if self.pretrained is not None:
            load_torchvision_resnet(self.backbone, self.pretrained)
        self.projector = nn.Sequential(
            nn.Linear(feat_dim, proj_hidden_dim, bias=False),
            nn.BatchNorm1d(proj_hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(proj_hidden_dim, proj_dim),
        )
        self.feature_dim = feat_dim
        self.contrastive_loss = ContrastiveLoss(temperature=temperature)

    @property
    def embed_dim(self) -> int:
        """Width of the vector returned by :meth:`embed`."""
        return self.feature_dim if self.config["embed_from"] == "backbone" else self.config["proj_dim"]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone feature [B, F] of images x [B, 1 or 3, H, W] in [0, 1]."""
        return self.backbone(as_three_channels(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Projection [B, proj_dim] (the NT-Xent space)."""
        return self.projector(self.features(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised global embedding [B, embed_dim], the image-level distillation target."""
        h = self.features(x)
        if self.config["embed_from"] == "projection":
            h = self.projector(h)
        return F.normalize(h, dim=-1)

    def training_loss(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        """NT-Xent between the projections of two augmented views [B, C, H, W] of the same B images (B >= 2)."""
        if view1.shape[0] < 2:
            raise ValueError("NT-Xent needs at least 2 images per batch (the other images are the negatives)")
        z = self(torch.cat([view1, view2]))
        z1, z2 = z.chunk(2)
        return self.contrastive_loss(z1, z2)


def contrastive_augment(
    img_size: int,
    min_crop: float = 0.6,
    flip_prob: float = 0.5,
    rot90_prob: float = 0.5,
    intensity_prob: float = 0.8,
    contrast_gamma: tuple[float, float] = (0.7, 1.5),
    scale: float = 0.15,
    shift: float = 0.15,
    blur_prob: float = 0.3,
    blur_sigma: tuple[float, float] = (0.6, 1.4),
) -> Compose:
    """One random view of a [1, S, S] image in [0, 1]: random resized crop, flips/rot90, intensity jitter, blur.

    The result is [1, img_size, img_size], clipped to [0, 1]. Apply it twice (see :class:`TwoViewd`) for a pair.
    """
    min_roi = max(1, int(round(min_crop * img_size)))
    return Compose(
        [
            Resize((img_size, img_size), mode="bilinear"),
            RandSpatialCrop((min_roi, min_roi), max_roi_size=(img_size, img_size), random_size=True),
            Resize((img_size, img_size), mode="bilinear"),
            RandFlip(prob=flip_prob, spatial_axis=0),
            RandFlip(prob=flip_prob, spatial_axis=1),
            RandRotate90(prob=rot90_prob, spatial_axes=(0, 1)),
            RandAdjustContrast(prob=intensity_prob, gamma=contrast_gamma),
            RandScaleIntensity(factors=scale, prob=intensity_prob),
            RandShiftIntensity(offsets=shift, prob=intensity_prob),
            RandGaussianSmooth(sigma_x=blur_sigma, sigma_y=blur_sigma, prob=blur_prob),
            ScaleIntensityRange(a_min=0.0, a_max=1.0, b_min=0.0, b_max=1.0, clip=True),
        ]
    )


class TwoViewd(MapTransform, Randomizable):
    """Write two independent random views of ``data[key]`` to ``data[names[0]]`` and ``data[names[1]]``."""

    def __init__(self, keys: str, transform: Compose, names: tuple[str, str] = ("view1", "view2")) -> None:
        super().__init__(keys)
        if len(self.keys) != 1:
            raise ValueError(f"TwoViewd takes one key, got {self.keys}")
        self.transform = transform
        self.names = names

    def set_random_state(self, seed: int | None = None, state=None) -> TwoViewd:
        super().set_random_state(seed, state)
        self.transform.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        """Randomness lives in ``transform``; each call draws new parameters."""

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        img = d[self.keys[0]]
        d[self.names[0]] = self.transform(img)
        d[self.names[1]] = self.transform(img)
        return d
