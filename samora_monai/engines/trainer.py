"""Stage-1 trainer: :class:`SelfSupervisedTrainer` (a ``SupervisedTrainer`` minimising ``loss_function(*inputs)``)
and :class:`StudentLoss` (a stage-1 objective bound to the student's SAM encoder)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from torch import nn
from torch.optim import Optimizer

from samora_monai.networks import SamoraNet

__all__ = ["SelfSupervisedTrainer", "StudentLoss"]


class StudentLoss(nn.Module):
    """A stage-1 objective bound to the student's encoder: ``forward(*inputs) = objective(network.encode, *inputs)``.

    The network is not registered as a submodule (the trainer owns it); ``train()`` reaches the objective's head
    and keeps its frozen teacher in eval mode.
    """

    def __init__(self, objective: nn.Module, network: SamoraNet) -> None:
        super().__init__()
        self.objective = objective
        self._encode = network.encode

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.objective(self._encode, *inputs)


class SelfSupervisedTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` for self-supervision: one iteration puts ``network`` (and ``loss_function`` when it is a
    module) in train mode, computes ``loss = loss_function(*[batch[k] for k in input_keys])``, back-propagates and
    steps the optimiser; ``engine.state.output`` is ``{"loss": loss.detach()}``.

    Args:
        device, max_epochs, train_data_loader, optimizer, train_handlers, amp: as ``SupervisedTrainer``.
        network: the module whose trainable parameters the optimiser holds (teacher, or student ``SamoraNet``).
        loss_function: callable on the batch tensors returning a scalar, e.g. ``teacher.training_loss``
            (two views), ``teacher.reconstruction_loss`` or :class:`StudentLoss`.
        input_keys: batch keys passed to ``loss_function`` in this order, e.g. ``("view1", "view2")``.
        kwargs: further ``SupervisedTrainer`` arguments (``epoch_length``, ``inferer``, ...).
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Any,
        network: nn.Module,
        optimizer: Optimizer,
        loss_function: Callable[..., torch.Tensor],
        input_keys: Sequence[str] = ("image",),
        train_handlers: Sequence | None = None,
        amp: bool = False,
        **kwargs: Any,
    ) -> None:
        if hasattr(train_data_loader, "__len__") and len(train_data_loader) == 0:
            dataset = getattr(train_data_loader, "dataset", None)
            size = len(dataset) if dataset is not None and hasattr(dataset, "__len__") else "?"
            raise ValueError(
                f"the training data loader yields no batch ({size} samples; with drop_last the batch size must not "
                "exceed the number of slices): prepare more unlabeled slices or lower batch_size"
            )
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            train_handlers=train_handlers,
            amp=amp,
            decollate=False,
            **kwargs,
        )
        self.input_keys = tuple(input_keys)

    def _iteration(self, engine: SelfSupervisedTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        missing = [k for k in self.input_keys if k not in batchdata]
        if missing:
            raise KeyError(f"batch has no {missing} (keys: {sorted(batchdata)}); check the preprocessing transforms")
        inputs = [
            torch.as_tensor(batchdata[k]).to(engine.state.device, non_blocking=engine.non_blocking)
            for k in self.input_keys
        ]
        engine.network.train()
        if isinstance(engine.loss_function, nn.Module):
            engine.loss_function.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        if engine.amp and engine.scaler is not None:
            with torch.autocast("cuda", **engine.amp_kwargs):
                loss = engine.loss_function(*inputs)
            engine.state.output = {"loss": loss}
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
            engine.scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss = engine.loss_function(*inputs)
            engine.state.output = {"loss": loss}
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {float(loss)} at iteration {engine.state.iteration}")
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        engine.state.output = {"loss": loss.detach()}
        return engine.state.output
