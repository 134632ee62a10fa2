"""Pretrained teacher weights from local files: torchvision-layout ResNets and official MAE ViT encoders.

Nothing is downloaded; every function takes a local path. A file's weights are unwrapped from a ``state_dict`` or
``model`` entry and stripped of ``module.`` prefixes (DataParallel / DDP checkpoints). A key mapping that leaves
a tensor of the target unloaded, a source tensor unused, or a shape mismatched is an error that names the keys.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F
from torch import nn

from samora_monai.utils import raise_problems, read_torch_file

__all__ = ["read_pretrained_state_dict", "load_torchvision_resnet", "load_mae_encoder"]

logger = logging.getLogger(__name__)

WRAPPER_KEYS = ("state_dict", "model")
#: source keys of an official MAE file that belong to its decoder (visualisation checkpoints): never loaded
MAE_DECODER_PREFIXES = ("decoder_", "mask_token")


def read_pretrained_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a local checkpoint, unwrapped from ``state_dict``/``model`` and without ``module.`` prefixes."""
    path = os.fspath(path)
    state = read_torch_file(path, "pretrained teacher checkpoint")
    while isinstance(state, dict) and any(isinstance(state.get(k), dict) for k in WRAPPER_KEYS):
        state = next(state[k] for k in WRAPPER_KEYS if isinstance(state.get(k), dict))
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} holds no state dict of tensors (looked inside {list(WRAPPER_KEYS)} wrappers)")
    out = {}
    for key, value in state.items():
        while key.startswith("module."):
            key = key[len("module.") :]
        out[key] = value
    return out


def _assign(
    module: nn.Module,
    mapped: dict[str, torch.Tensor],
    unused: list[str],
    source: str,
    skip: tuple[str, ...] = (),
    file_keys: dict[str, str] | None = None,
) -> None:
    """Load ``mapped`` (target key -> tensor) into ``module`` after checking that it covers every target tensor
    except those starting with a prefix in ``skip``, that it has no other key and that every shape matches;
    ``unused`` (source keys the mapping did not place) is an error too. ``file_keys`` (model key -> file key)
    names the file's key beside a model tensor in the messages."""
    target = {k: v for k, v in module.state_dict().items() if not k.startswith(tuple(skip))}
    file_keys = file_keys or {}
    missing = sorted(
        f"{k} (file key {file_keys[k]!r})" if k in file_keys else k
        for k in target
        if k not in mapped and not k.endswith("num_batches_tracked")
    )
    shapes = sorted(
        f"{file_keys.get(k, k)} -> {k}: file {tuple(v.shape)} vs model {tuple(target[k].shape)}"
        for k, v in mapped.items()
        if k in target and v.shape != target[k].shape
    )
    unused = [*unused, *(f"{k} (mapped to no model tensor)" for k in mapped if k not in target)]
    problems = {"model tensors not loaded:": missing, "unexpected tensors in the file:": sorted(unused),
                "shape mismatches:": shapes}
    raise_problems(f"{source}: weights do not match {type(module).__name__}; ", problems)
    module.load_state_dict(mapped, strict=False)


def load_torchvision_resnet(backbone: nn.Module, path: str | os.PathLike) -> None:
    """Load a torchvision-layout ResNet state dict (ImageNet weights, or a SimCLR checkpoint in that layout:
    ``conv1``, ``bn1``, ``layerN.M.{conv,bn}K``, ``layerN.0.downsample``, optional ``fc``) into ``backbone``.

    The classifier ``fc`` is not part of the teacher (``backbone.fc`` is an identity): it is skipped when present.
    BatchNorm ``num_batches_tracked`` counters may be absent (older torchvision files).
    """
    source = os.fspath(path)
    state = read_pretrained_state_dict(source)
    skipped = [k for k in state if k.startswith("fc.")]
    mapped = {k: v for k, v in state.items() if not k.startswith("fc.")}
    _assign(backbone, mapped, [], source)
    logger.info("image teacher: loaded %d tensors from %s (skipped classifier %s)", len(mapped), source, skipped)


def _resize_positions(pos: torch.Tensor, grid: tuple[int, int], source: str) -> torch.Tensor:
    """[1, n*n, D] square-grid position embedding -> [1, grid[0]*grid[1], D] (bicubic, as MAE fine-tuning does)."""
    side = round(pos.shape[1] ** 0.5)
    if side * side != pos.shape[1]:
        raise ValueError(f"{source}: pos_embed has {pos.shape[1]} patch positions, not a square grid")
    if (side, side) == tuple(grid):
        return pos
    image = pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    image = F.interpolate(image.float(), size=grid, mode="bicubic", align_corners=False)
    return image.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1).to(pos.dtype)


#: official MAE / timm ViT block tensor -> nn.TransformerEncoderLayer tensor
MAE_BLOCK_KEYS = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "attn.qkv.weight": "self_attn.in_proj_weight",  # rows [q; k; v], as nn.MultiheadAttention packs them
    "attn.qkv.bias": "self_attn.in_proj_bias",
    "attn.proj.weight": "self_attn.out_proj.weight",
    "attn.proj.bias": "self_attn.out_proj.bias",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "mlp.fc1.weight": "linear1.weight",
    "mlp.fc1.bias": "linear1.bias",
    "mlp.fc2.weight": "linear2.weight",
    "mlp.fc2.bias": "linear2.bias",
}


def _mae_keys(depth: int) -> dict[str, str]:
    """Every encoder tensor of an official MAE file -> the MAETeacher tensor it fills (depth ``depth``)."""
    keys = {
        "cls_token": "cls_token",
        "pos_embed": "patch_embedding.position_embeddings",
        "patch_embed.proj.weight": "patch_embedding.patch_embeddings.weight",
        "patch_embed.proj.bias": "patch_embedding.patch_embeddings.bias",
        "norm.weight": f"blocks.{depth}.weight",
        "norm.bias": f"blocks.{depth}.bias",
    }
    for i in range(depth):
        keys.update({f"blocks.{i}.{src}": f"blocks.{i}.{dst}" for src, dst in MAE_BLOCK_KEYS.items()})
    return keys


def load_mae_encoder(teacher: nn.Module, path: str | os.PathLike) -> None:
    """Load an official MAE checkpoint's encoder (``mae_pretrain_vit_{base,large,huge}.pth``) into a MAETeacher.

    ``patch_embed.proj`` -> ``patch_embedding.patch_embeddings`` (3-channel weights are summed over the input
    channels for a 1-channel teacher, which equals feeding the gray slice replicated to RGB); ``pos_embed[:, 1:]``
    -> ``patch_embedding.position_embeddings``, resized bicubically to the teacher's patch grid; the CLS position
    ``pos_embed[:, :1]`` is added to ``cls_token`` (MAE adds it there; zero in the official files);
    ``blocks.N.*`` -> the pre-norm transformer blocks; ``norm`` -> the encoder's final LayerNorm. The decoder
    (and ``mask_token``) start fresh; decoder tensors in the file are ignored.
    """
    source = os.fspath(path)
    state = read_pretrained_state_dict(source)
    keys = _mae_keys(teacher.config["num_layers"])
    mapped, unused = {}, []
    for key, value in state.items():
        if key.startswith(MAE_DECODER_PREFIXES):
            continue
        if key not in keys:
            unused.append(key)
        elif key == "cls_token":  # MAE adds the CLS position to the CLS token
            position = state.get("pos_embed")
            matches = position is not None and position.shape[-1] == value.shape[-1]
            mapped[keys[key]] = value + position[:, :1] if matches else value
        elif key == "pos_embed":
            mapped[keys[key]] = _resize_positions(value[:, 1:], teacher.grid_size, source)
        elif key == "patch_embed.proj.weight" and value.shape[1] == 3 and teacher.in_channels == 1:
            mapped[keys[key]] = value.sum(1, keepdim=True)
        else:
            mapped[keys[key]] = value
    file_keys = {dst: src for src, dst in keys.items()}
    _assign(teacher, mapped, unused, source, skip=("decoder", "mask_token"), file_keys=file_keys)
    logger.info("patch teacher: loaded the MAE encoder from %s (%d tensors; decoder starts fresh)", source, len(mapped))
