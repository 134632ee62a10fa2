"""The two training phases of the stand-in SAM pre-training, on segment_anything's own ``Sam`` model.

Phase (a), masked image modelling (SimMIM-style, the MAE family SAM's encoder was initialised with): a share of the
16 x 16 patch tokens is replaced by a learned mask token before the encoder blocks, and a linear head on the last
block's tokens regresses the pixels of the masked patches (L1). Phase (b), promptable class-agnostic segmentation
(SAM's own task): boxes or single points of random shapes go through the real prompt encoder; the mask decoder's
single-mask output answers a box, its three multimask outputs a point (the best one is trained, as in SAM), with
20 x focal + Dice on the masks and MSE of the IoU head against the measured IoU. The helper modules (mask token,
pixel head) are discarded; only the ``Sam`` state dict is kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from torch import nn

from samora_monai.networks.sam_backbone import (
    PATCH_SIZE,
    build_image_encoder,
    build_mask_decoder,
    build_prompt_encoder,
)

__all__ = ["build_standin_sam", "masked_image_modeling", "promptable_segmentation", "cosine_lr"]

SAM_MULTIMASK_OUTPUTS = 3  # SAM's standard decoder: 3 multimask tokens + 1 single-mask token, and the IoU head


def build_standin_sam(variant: str, img_size: int) -> Sam:
    """segment_anything's ``Sam`` with the given variant's encoder, prompt encoder and standard mask decoder."""
    return Sam(
        image_encoder=build_image_encoder(variant, img_size),
        prompt_encoder=build_prompt_encoder(variant, img_size),
        mask_decoder=build_mask_decoder(variant, SAM_MULTIMASK_OUTPUTS),
    )


def cosine_lr(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``steps``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return 0.5 * peak * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def _train(params: list[nn.Parameter], steps: int, lr: float, loss_fn: Callable[[int], torch.Tensor]) -> list[float]:
    """AdamW (weight decay 0.05) with warm-up + cosine decay; returns the loss of every step."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    losses = []
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, steps, lr, warmup=max(1, steps // 20))
        loss = loss_fn(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def _augment(rng: np.random.Generator, *arrays: np.ndarray) -> list[np.ndarray]:
    """The same random flip and quarter turn of the last two axes of every array."""
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    out = [np.rot90(a, k, axes=(-2, -1)) for a in arrays]
    return [np.ascontiguousarray(a[..., ::-1] if flip else a) for a in out]


def masked_image_modeling(
    sam: Sam, slices: np.ndarray, steps: int, batch_size: int, lr: float, mask_ratio: float, rng: np.random.Generator
) -> list[float]:
    """Phase (a): train ``sam.image_encoder`` (patch embedding, position embedding, blocks) on ``slices``
    [N, S, S] in [0, 1] by masked-patch regression; returns the loss of every step."""
    encoder = sam.image_encoder
    width = encoder.patch_embed.proj.out_channels
    mask_token = nn.Parameter(torch.zeros(1, 1, 1, width))
    head = nn.Linear(width, PATCH_SIZE * PATCH_SIZE)
    grid = slices.shape[-1] // PATCH_SIZE
    params = [p for n, p in encoder.named_parameters() if not n.startswith("neck.")]

    def loss_fn(step: int) -> torch.Tensor:
        pick = rng.choice(len(slices), size=batch_size, replace=len(slices) < batch_size)
        x = torch.from_numpy(np.stack(_augment(rng, slices[pick])[0]))[:, None]  # [B, 1, S, S]
        masked = torch.from_numpy(rng.random((batch_size, grid, grid)) < mask_ratio)  # [B, g, g]
        tokens = encoder.patch_embed(x.expand(-1, 3, -1, -1))  # [B, g, g, C]
        tokens = torch.where(masked[..., None], mask_token.to(tokens.dtype), tokens) + encoder.pos_embed
        for block in encoder.blocks:
            tokens = block(tokens)
        pred = head(tokens)  # [B, g, g, 16 * 16]
        target = F.unfold(x, PATCH_SIZE, stride=PATCH_SIZE).transpose(1, 2).reshape(pred.shape)
        return (pred - target).abs().mean(-1)[masked].mean()

    return _train([*params, mask_token, *head.parameters()], steps, lr, loss_fn)


def _mask_losses(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [N, M, S, S], target [N, 1, S, S] in {0, 1} -> (20 x focal + Dice [N, M], IoU of logits > 0 [N, M])."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target.expand_as(logits), reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    alpha = 0.25 * target + 0.75 * (1 - target)
    focal = (alpha * (1 - p_t) ** 2 * ce).mean((-2, -1))
    inter = (prob * target).sum((-2, -1))
    dice = 1 - (2 * inter + 1) / (prob.sum((-2, -1)) + target.sum((-2, -1)) + 1)
    hard = (logits > 0).float()
    hard_inter = (hard * target).sum((-2, -1))
    iou = hard_inter / (hard.sum((-2, -1)) + target.sum((-2, -1)) - hard_inter).clamp_min(1.0)
    return 20 * focal + dice, iou


def promptable_segmentation(
    sam: Sam, samples: Sequence[tuple[np.ndarray, np.ndarray]], steps: int, batch_size: int, lr: float,
    max_prompts: int, rng: np.random.Generator,
) -> list[float]:
    """Phase (b): train the whole ``sam`` on ``samples`` (image [S, S] in [0, 1], masks [N, S, S] bool) with box
    or point prompts; returns the loss of every step."""
    from samora_monai.apps.shapes import box_prompt, point_prompt

    size = samples[0][0].shape[-1]

    def image_loss(embedding: torch.Tensor, masks: np.ndarray) -> torch.Tensor:
        masks = masks[rng.permutation(len(masks))[:max_prompts]]
        target = torch.from_numpy(masks[:, None].astype(np.float32))  # [N, 1, S, S]
        use_box = bool(rng.integers(2))
        if use_box:
            boxes = torch.from_numpy(np.stack([box_prompt(rng, m) for m in masks]))  # [N, 4]
            sparse, dense = sam.prompt_encoder(points=None, boxes=boxes, masks=None)
        else:
            coords = torch.from_numpy(np.stack([point_prompt(rng, m) for m in masks]))[:, None]  # [N, 1, 2]
            sparse, dense = sam.prompt_encoder(points=(coords, torch.ones(len(masks), 1)), boxes=None, masks=None)
        low_res, iou_pred = sam.mask_decoder(embedding, sam.prompt_encoder.get_dense_pe(), sparse, dense,
                                             multimask_output=not use_box)  # [N, M, 4g, 4g], [N, M]
        logits = F.interpolate(low_res, size=(size, size), mode="bilinear", align_corners=False)
        losses, iou = _mask_losses(logits, target)
        best = losses.argmin(1, keepdim=True)  # SAM trains only the best of the multimask outputs
        return losses.gather(1, best).mean() + F.mse_loss(iou_pred.gather(1, best), iou.gather(1, best).detach())

    def loss_fn(step: int) -> torch.Tensor:
        picked = [_augment(rng, *samples[i]) for i in rng.choice(len(samples), size=batch_size)]
        x = torch.from_numpy(np.stack([image for image, _ in picked]))[:, None]  # [B, 1, S, S]
        embeddings = sam.image_encoder(x.expand(-1, 3, -1, -1))  # [B, P, g, g]
        return torch.stack([image_loss(embeddings[i : i + 1], masks) for i, (_, masks) in enumerate(picked)]).mean()

    return _train(list(sam.parameters()), steps, lr, loss_fn)
