"""Inferer that returns every output of a network with auxiliary outputs (``network(x, aux=True)``)."""

from __future__ import annotations

from typing import Any

import torch
from monai.inferers import Inferer
from torch import nn

__all__ = ["AuxOutputInferer"]


class AuxOutputInferer(Inferer):
    """``network(inputs, aux=True)``: the dict of logits a :class:`~samora_monai.networks.SamoraNet` returns for
    losses on several outputs (``DualStageLoss``, ``LowResLoss``); use as a ``SupervisedTrainer``'s inferer."""

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        return network(inputs, *args, aux=True, **kwargs)
