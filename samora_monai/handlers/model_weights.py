"""Loading ``model.pt`` into a network with errors that name the file, the fix and, on a class-count mismatch, the
class counts on both sides.

- :func:`load_model_weights`: ``network.load_state_dict`` from a file, for code outside an ignite engine;
- :class:`ModelCheckpointLoader`: MONAI's ``CheckpointLoader`` with the same messages, for bundle configs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from ignite.engine import Engine
from monai.handlers import CheckpointLoader
from torch import nn

__all__ = ["ModelCheckpointLoader", "checkpoint_problem", "load_model_weights"]

_CLASS_TENSOR = "mask_tokens.weight"  # [K+1, dim] in SAM-style decoders: one token per output channel


def _state_dict(checkpoint: Mapping, key: str = "model") -> Mapping[str, torch.Tensor]:
    """The network's state dict in a checkpoint: the file itself, or its ``key`` entry (``CheckpointSaver`` files)."""
    inner = checkpoint.get(key)
    return inner if isinstance(inner, Mapping) else checkpoint


def _channels(state: Mapping[str, torch.Tensor]) -> int | None:
    shapes = [tuple(v.shape) for k, v in state.items() if k.endswith(_CLASS_TENSOR) and hasattr(v, "shape")]
    return shapes[0][0] if shapes else None


def checkpoint_problem(path: str | os.PathLike, network: nn.Module, state: Mapping[str, torch.Tensor]) -> str | None:
    """Why ``state`` (read from ``path``) does not load into ``network`` strictly, or None when it does."""
    own = network.state_dict()
    shape = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if not (shape or missing or unexpected):
        return None
    ck, net = _channels(state), _channels(own)
    if ck is not None and net is not None and ck != net:
        return (
            f"{path}: the checkpoint was trained for {ck - 1} classes ({ck} output channels with background) but the "
            f"network is built for {net - 1} classes ({net} output channels); set class_names (num_classes) to the "
            f"checkpoint's {ck - 1} classes, or give the model.pt trained for these {net - 1} classes"
        )
    parts = [f"{k}: checkpoint {tuple(state[k].shape)} vs network {tuple(own[k].shape)}" for k in shape[:5]]
    if missing:
        parts.append(f"{len(missing)} network tensors missing from the file (e.g. {missing[:3]})")
    if unexpected:
        parts.append(f"{len(unexpected)} tensors the network does not have (e.g. {unexpected[:3]})")
    return (
        f"{path}: the checkpoint does not match the network ({'; '.join(parts)}); build the network with the settings "
        "the checkpoint was trained with (variant, img_size, class_names, expert levels) or give the matching file"
    )


def _require_file(path: str | os.PathLike) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"checkpoint not found: {path}; train the model first (models/model.pt is written by training) or set "
            "the checkpoint path (--checkpoint <file>)"
        )


def load_model_weights(
    network: nn.Module, path: str | os.PathLike, map_location: str | torch.device = "cpu", key: str = "model"
) -> nn.Module:
    """Load the state dict in ``path`` (or its ``key`` entry) into ``network`` strictly; returns ``network``.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file, the mismatch (class counts
    on both sides for a ``model.pt`` of another number of classes) and the fix.
    """
    _require_file(path)
    state = _state_dict(torch.load(path, map_location=map_location, weights_only=True), key)
    problem = checkpoint_problem(path, network, state)
    if problem:
        raise ValueError(problem)
    network.load_state_dict(state, strict=True)
    return network


class ModelCheckpointLoader(CheckpointLoader):
    """``CheckpointLoader`` whose errors name the checkpoint file, the mismatch and the fix.

    Same arguments as ``monai.handlers.CheckpointLoader``; the ``nn.Module`` entries of ``load_dict`` are checked
    with :func:`checkpoint_problem` when loading fails.
    """

    def __call__(self, engine: Engine) -> None:
        _require_file(self.load_path)
        try:
            super().__call__(engine)
        except RuntimeError as e:
            checkpoint = torch.load(self.load_path, map_location="cpu", weights_only=True)
            for key, obj in self.load_dict.items():
                if isinstance(obj, nn.Module):
                    state = checkpoint if len(self.load_dict) == 1 and key not in checkpoint else checkpoint[key]
                    problem = checkpoint_problem(self.load_path, obj, _state_dict(state, key))
                    if problem:
                        raise ValueError(problem) from e
            raise
