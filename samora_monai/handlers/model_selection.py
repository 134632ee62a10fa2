"""Which network becomes ``models/model.pt``: the last epoch's (the paper's protocol) or the best on validation.

- :class:`LastModelSaver`: writes the network after the last epoch of a completed run, atomically; a run stopped
  early (non-finite loss, exception) writes nothing.
- :class:`BestModelSaver`: MONAI's key-metric ``CheckpointSaver`` (atomic) whose best score survives a resume: put
  it in the resume checkpoint's ``save_dict``/``load_dict`` and a resumed run only replaces ``model.pt`` with a
  better score.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from torch import nn

from samora_monai.handlers.atomic_checkpoint import AtomicCheckpointSaver
from samora_monai.utils import atomic_output

__all__ = ["BestModelSaver", "LastModelSaver"]

logger = logging.getLogger(__name__)


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class LastModelSaver:
    """Save ``network``'s state dict (``DistributedDataParallel`` unwrapped) to ``path`` when the trainer completes
    its last epoch; rank 0 only. The file is what ``network_def`` loads alone (``load_state_dict``).

    Args:
        network: the trained network.
        path: the file to write, e.g. ``models/model.pt``.
    """

    def __init__(self, network: nn.Module, path: str | os.PathLike) -> None:
        self.network, self.path = network, os.fspath(path)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if engine.should_terminate or engine.state.epoch < engine.state.max_epochs or _rank() > 0:
            return
        net = getattr(self.network, "module", self.network)
        with atomic_output(self.path) as tmp:
            torch.save(net.state_dict(), tmp)
        logger.info("saved the network after the last epoch (%d) to %s", engine.state.epoch, self.path)


class BestModelSaver(AtomicCheckpointSaver):
    """:class:`AtomicCheckpointSaver` for ``save_key_metric`` whose best score is part of the resume state.

    ``state_dict()`` gives the scores of the files it saved; a resume checkpoint that holds it (e.g.
    ``save_dict: {..., best_model: <this saver>}``) restores them with ``load_state_dict``, so the first validation
    after a resume replaces ``model.pt`` only when its score beats the best so far.
    """

    def __init__(self, save_dir: str, save_dict: dict, **kwargs: Any) -> None:
        super().__init__(save_dir, save_dict, save_key_metric=True, **kwargs)

    def state_dict(self) -> dict[str, Any]:
        return dict(self._key_metric_checkpoint.state_dict())

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._key_metric_checkpoint.load_state_dict(state)
        saved = list(state.get("_saved", []))
        if saved:
            logger.info("best model so far: score %.4f; model.pt is replaced only by a better score", saved[-1][0])
