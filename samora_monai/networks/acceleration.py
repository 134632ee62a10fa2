"""Speed helpers for training and inference: guarded ``torch.compile`` and mixed-precision autocast.

``compile_network(net)`` returns a :class:`CompiledNetwork`: the forward runs through ``torch.compile`` and falls
back to eager execution, with one warning, where compilation fails (no compiler, an unsupported op); its
``state_dict`` / ``load_state_dict`` are the wrapped network's own, so checkpoints keep their keys.
``autocast(device, amp_dtype)`` is ``torch.autocast`` for ``"bf16"`` / ``"fp16"`` and a no-op for ``"none"``;
SAMora's attention softmaxes run in float32 under it (see :class:`~samora_monai.networks.SamoraBlock`).
``preferred_amp_dtype(device)`` is the bundles' default: ``"bf16"`` on a GPU that has it (no loss scaling needed,
float32's range), else ``"fp16"``.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from monai.data import MetaTensor
from monai.utils import look_up_option
from torch import nn

from samora_monai.utils import as_bool

__all__ = [
    "AMP_DTYPES", "CompiledNetwork", "autocast", "compile_network", "preferred_amp_dtype", "resolve_amp_dtype"
]

logger = logging.getLogger(__name__)

AMP_DTYPES: dict[str, torch.dtype | None] = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_amp_dtype(amp_dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"none"`` / ``None`` -> ``None``; ``"bf16"``, ``"fp16"`` or a ``torch.bfloat16``/``float16`` dtype."""
    if amp_dtype is None or isinstance(amp_dtype, torch.dtype):
        if amp_dtype not in (None, torch.bfloat16, torch.float16):
            raise ValueError(f"amp_dtype must be bfloat16 or float16, got {amp_dtype}.")
        return amp_dtype
    return look_up_option(amp_dtype, AMP_DTYPES)


def preferred_amp_dtype(device: torch.device | str) -> str:
    """``"bf16"`` on a CUDA ``device`` that supports bfloat16 (Ampere and later), else ``"fp16"``."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp16"


def autocast(device: torch.device | str, amp_dtype: str | torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device``'s type with ``amp_dtype`` (``"bf16"``/``"fp16"``), or a no-op context."""
    dtype = resolve_amp_dtype(amp_dtype)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


class CompiledNetwork(nn.Module):
    """``network`` run through ``torch.compile``, with a fallback to eager execution where compiling fails.

    Attribute access that the wrapper does not define goes to the network (``set_mode``, ``num_classes``, ...);
    ``state_dict`` and ``load_state_dict`` are the network's, with its keys. ``MetaTensor`` arguments reach the
    compiled forward as plain tensors (as MONAI's ``SupervisedTrainer(compile=True)`` does).

    Args:
        network: the module to compile.
        compile_kwargs: keyword arguments of ``torch.compile`` (e.g. ``{"mode": "max-autotune"}``).
    """

    def __init__(self, network: nn.Module, compile_kwargs: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.network = network
        self.failure: str | None = None  # why compiling failed, once it has
        object.__setattr__(self, "_compiled", torch.compile(network, **dict(compile_kwargs or {})))

    @property
    def compiled(self) -> bool:
        """False once compilation has failed and the forward runs eagerly."""
        return self.failure is None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.failure is None:
            args = tuple(a.as_tensor() if isinstance(a, MetaTensor) else a for a in args)
            try:
                return self._compiled(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - any compiler failure falls back to eager
                self.failure = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
                name = type(self.network).__name__
                warnings.warn(f"torch.compile failed, running {name} eagerly ({self.failure})", stacklevel=2)
        return self.network(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("network"), name)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict:
        return self.network.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        return self.network.load_state_dict(state_dict, strict=strict, assign=assign)


def compile_network(
    network: nn.Module, enabled: bool | str = True, compile_kwargs: Mapping[str, Any] | None = None
) -> nn.Module:
    """``network`` wrapped in :class:`CompiledNetwork` when ``enabled`` (a bool, or ``"true"``/``"false"`` from a
    command line) and ``torch.compile`` exists, else ``network`` itself.

    For a bundle: ``compiled_network: "$samora_monai.networks.compile_network(@network, @compile, @compile_kwargs)"``
    for the engines, while checkpoints and the optimizer keep ``@network``.
    """
    if not as_bool(enabled):
        return network
    if not hasattr(torch, "compile"):
        warnings.warn("torch.compile is not available in this PyTorch; running eagerly", stacklevel=2)
        return network
    logger.info("%s runs through torch.compile(%s)", type(network).__name__, dict(compile_kwargs or {}))
    return CompiledNetwork(network, compile_kwargs)
