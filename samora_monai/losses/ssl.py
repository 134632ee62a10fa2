"""The three stage-1 objectives. Each is an ``nn.Module`` holding its frozen teacher (if any) and its trainable
head; ``forward(encode, images...)`` returns a scalar loss, where ``encode(x) -> (tokens, embedding)`` is the
student's encoder (``SamoraNet.encode`` with one expert active): tokens [B, h, w, C] before the neck,
embedding [B, P, h, w] after it, h = w = S / 16.

Only ``head`` (and the student's active expert) are trained: the teacher is frozen and stays in eval mode.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from monai.losses import ContrastiveLoss, SSIMLoss
from monai.networks.layers import GaussianFilter
from monai.utils import look_up_option
from torch import nn

from samora_monai.losses.distance import DISTANCES, feature_distance
from samora_monai.networks.ssl_heads import DenoisingDecoder, ImageProjector, TokenProjector

__all__ = [
    "Encode",
    "ImageLevelLoss",
    "PatchLevelLoss",
    "PixelLevelLoss",
    "gather_tokens",
    "mask_patches",
    "corrupt",
]

Encode = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class _DistillationLoss(nn.Module):
    """Keeps a frozen teacher in eval mode whatever ``train()`` is called with."""

    teacher: nn.Module

    def train(self, mode: bool = True) -> _DistillationLoss:
        super().train(mode)
        self.teacher.eval()
        return self


class ImageLevelLoss(_DistillationLoss):
    """Image level: the student's pooled, projected embedding of each view regresses the teacher's embedding.

    Args:
        teacher: frozen image teacher with ``embed(x) -> [B, D]`` (L2-normalised), e.g. ``ContrastiveTeacher``.
        head: projector from the pooled student map to D.
        distance: ``mse``, ``smooth_l1`` or ``cosine`` (see :func:`feature_distance`).
        source: pool the neck ``embedding`` [B, P, h, w] or the pre-neck ``tokens`` [B, h, w, C].
        contrastive_weight: weight of an NT-Xent term between the student's two views (0 = off).
        temperature: NT-Xent temperature.
    """

    def __init__(
        self,
        teacher: nn.Module,
        head: ImageProjector,
        distance: str = "mse",
        source: str = "embedding",
        contrastive_weight: float = 0.0,
        temperature: float = 0.5,
    ) -> None:
        super().__init__()
        self.teacher = teacher
        self.head = head
        self.distance = look_up_option(distance, DISTANCES)
        self.source = look_up_option(source, ("embedding", "tokens"))
        self.contrastive_weight = contrastive_weight
        self.contrastive = ContrastiveLoss(temperature=temperature)

    def forward(self, encode: Encode, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        """Two augmented views [B, C, S, S] of the same images -> scalar loss (averaged over both views)."""
        views = torch.cat([view1, view2])
        with torch.no_grad():
            target = self.teacher.embed(views)
        tokens, embedding = encode(views)
        feats = embedding if self.source == "embedding" else tokens.permute(0, 3, 1, 2)
        pred = self.head(feats)
        loss = feature_distance(pred, target, self.distance)
        if self.contrastive_weight > 0:
            z1, z2 = pred.chunk(2)
            loss = loss + self.contrastive_weight * self.contrastive(z1, z2)
        return loss


def gather_tokens(tokens: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
    """Student tokens at the teacher's kept positions, in the teacher's order.

    Args:
        tokens: [B, h, w, C] (channels-last grid) or [B, N, C] with N = h * w in row-major order.
        ids_keep: [B, K] row-major patch indices; row i of the result is the token of patch ``ids_keep[b, i]``.

    Returns:
        [B, K, C].
    """
    if tokens.ndim == 4:
        tokens = tokens.flatten(1, 2)
    if ids_keep.shape[0] != tokens.shape[0] or int(ids_keep.max()) >= tokens.shape[1]:
        raise ValueError(f"ids_keep {tuple(ids_keep.shape)} does not index tokens {tuple(tokens.shape)}")
    return torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def mask_patches(images: torch.Tensor, ids_keep: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Zero every patch of images [B, C, S, S] that ``ids_keep`` [B, K] does not keep (EfficientSAM-style input)."""
    b, _, h, w = images.shape
    gh, gw = h // patch_size, w // patch_size
    keep = torch.zeros(b, gh * gw, device=images.device, dtype=images.dtype)
    keep.scatter_(1, ids_keep, 1.0)
    keep = keep.reshape(b, 1, gh, gw).repeat_interleave(patch_size, 2).repeat_interleave(patch_size, 3)
    return images * keep


class PatchLevelLoss(_DistillationLoss):
    """Patch level: masked-token distillation from an MAE teacher, paired by patch position.

    The teacher keeps a random ``1 - mask_ratio`` of the patches and returns their features with ``ids_keep``;
    the student's tokens are gathered at exactly those positions in that order, projected and regressed onto
    the teacher's tokens.

    Args:
        teacher: frozen patch teacher with ``encode_visible(x, mask_ratio) -> (features [B, K, D], ids_keep [B, K])``,
            ``grid_size`` and ``patch_size`` (e.g. ``MAETeacher``); its grid must equal the student's token grid.
        head: token projector C -> D.
        mask_ratio: fraction of patches the teacher masks.
        distance: ``mse``, ``smooth_l1`` or ``cosine``.
        student_input: ``full`` (the student sees the whole image) or ``masked`` (masked patches zeroed).
    """

    def __init__(
        self,
        teacher: nn.Module,
        head: TokenProjector,
        mask_ratio: float = 0.75,
        distance: str = "mse",
        student_input: str = "full",
    ) -> None:
        super().__init__()
        self.teacher = teacher
        self.head = head
        self.mask_ratio = mask_ratio
        self.distance = look_up_option(distance, DISTANCES)
        self.student_input = look_up_option(student_input, ("full", "masked"))

    def forward(self, encode: Encode, images: torch.Tensor) -> torch.Tensor:
        """images [B, C, S, S] in [0, 1] -> scalar loss."""
        with torch.no_grad():
            target, ids_keep = self.teacher.encode_visible(images, self.mask_ratio)
        student_in = images if self.student_input == "full" else mask_patches(images, ids_keep, self.teacher.patch_size)
        tokens, _ = encode(student_in)
        if tuple(tokens.shape[1:3]) != tuple(self.teacher.grid_size):
            raise ValueError(
                f"teacher patch grid {tuple(self.teacher.grid_size)} differs from the student token grid "
                f"{tuple(tokens.shape[1:3])} (input {tuple(images.shape[-2:])}): build the patch teacher with "
                "patch size 16 at the student's image size"
            )
        pred = self.head(gather_tokens(tokens, ids_keep))
        return feature_distance(pred, target, self.distance)


def corrupt(
    images: torch.Tensor,
    noise_std: float = 0.08,
    blur_prob: float = 0.5,
    blur_sigma: tuple[float, float] = (0.6, 1.4),
) -> torch.Tensor:
    """Additive Gaussian noise (clipped to [0, 1]), then, per image with probability ``blur_prob``, a Gaussian
    blur with sigma drawn from ``blur_sigma``. images [B, C, H, W] in [0, 1] -> same shape."""
    noisy = (images + noise_std * torch.randn_like(images)).clamp(0.0, 1.0)
    if blur_prob <= 0:
        return noisy
    out = []
    for img in noisy.unbind(0):
        if float(torch.rand(())) < blur_prob:
            sigma = blur_sigma[0] + (blur_sigma[1] - blur_sigma[0]) * float(torch.rand(()))
            blur = GaussianFilter(spatial_dims=2, sigma=sigma).to(img.device)
            img = blur(img.unsqueeze(0)).squeeze(0)
        out.append(img)
    return torch.stack(out)


class PixelLevelLoss(nn.Module):
    """Pixel level: denoising. A decoder on the student's embedding of a corrupted image reconstructs the clean one.

    Args:
        head: decoder from the neck embedding to an image of the input's shape.
        noise_std, blur_prob, blur_sigma: corruption, see :func:`corrupt`.
        reconstruction: ``l1`` or ``mse`` between the prediction and the clean [0, 1] image.
        ssim_weight: weight of MONAI's ``SSIMLoss`` (data range 1) added to it (0 = off).
    """

    def __init__(
        self,
        head: DenoisingDecoder,
        noise_std: float = 0.08,
        blur_prob: float = 0.5,
        blur_sigma: tuple[float, float] = (0.6, 1.4),
        reconstruction: str = "l1",
        ssim_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.head = head
        self.noise_std = noise_std
        self.blur_prob = blur_prob
        self.blur_sigma = blur_sigma
        self.reconstruction = look_up_option(reconstruction, {"l1": nn.L1Loss(), "mse": nn.MSELoss()})
        self.ssim_weight = ssim_weight
        self.ssim = SSIMLoss(spatial_dims=2, data_range=1.0)

    def forward(self, encode: Encode, images: torch.Tensor) -> torch.Tensor:
        """Clean images [B, C, S, S] in [0, 1] -> scalar loss."""
        noisy = corrupt(images, self.noise_std, self.blur_prob, self.blur_sigma)
        _, embedding = encode(noisy)
        pred = self.head(embedding)
        if pred.shape != images.shape:
            raise ValueError(f"decoder output {tuple(pred.shape)} does not match the image {tuple(images.shape)}")
        loss = self.reconstruction(pred, images)
        if self.ssim_weight > 0:
            loss = loss + self.ssim_weight * self.ssim(pred, images)
        return loss
