"""Test instruments imported by bundle runs in subprocesses (appended to ``train#handlers`` by an overlay config);
they record, and change no value of the run.

- :class:`FaultProbe` (tests/test_faults_resume.py): the trained weights and the optimizer step when the run starts
  (after the resume loader); holds the first run inside an epoch so that the test's SIGKILL lands mid-epoch;
- :class:`RankWeights` (tests/test_ddp_equivalence.py): every rank's parameters when training completes;
- :class:`LossRecorder` (tests/test_determinism.py): every iteration's loss, at full precision;
- :class:`ThresholdNet` (tests/test_inference_geometry.py): a stand-in for the network only (``network_def``
  override), whose output is known: class 1 where the normalised intensity exceeds a threshold stored in
  ``model.pt``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.handlers import from_engine
from torch import nn
from torch.optim import Optimizer

HOLD_MARKER = "FAULT-PROBE: holding"


def optimizer_steps(state: dict) -> list[int]:
    """The per-parameter ``step`` counters of an Adam/AdamW ``state_dict``."""
    return [int(s["step"]) for s in state["state"].values()]


class FaultProbe:
    """``STARTED``: save ``{weights, steps, epoch, iteration}`` to ``<folder>/start_<n>.pt`` (n = run number).
    ``ITERATION_COMPLETED``: in the first run only, at iteration ``hold_at`` of epoch ``hold_epoch``, save the live
    weights to ``<folder>/held.pt``, print :data:`HOLD_MARKER` and sleep until killed."""

    def __init__(self, folder: str, module: nn.Module, optimizer: Optimizer, hold_epoch: int = 2, hold_at: int = 2):
        self.folder, self.module, self.optimizer = Path(folder), module, optimizer
        self.hold_epoch, self.hold_at = hold_epoch, hold_at
        self.folder.mkdir(parents=True, exist_ok=True)
        self.run = len(list(self.folder.glob("start_*.pt")))

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.maybe_hold)

    def snapshot(self, engine: Engine) -> dict:
        return {
            "weights": {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()},
            "steps": optimizer_steps(self.optimizer.state_dict()),
            "epoch": engine.state.epoch,
            "iteration": engine.state.iteration,
        }

    def started(self, engine: Engine) -> None:
        torch.save(self.snapshot(engine), self.folder / f"start_{self.run}.pt")

    def maybe_hold(self, engine: Engine) -> None:
        in_epoch = (engine.state.iteration - 1) % engine.state.epoch_length + 1
        if self.run == 0 and engine.state.epoch == self.hold_epoch and in_epoch == self.hold_at:
            torch.save(self.snapshot(engine), self.folder / "held.pt")
            print(HOLD_MARKER, engine.state.epoch, in_epoch, engine.state.epoch_length, flush=True)
            sys.stdout.flush()
            time.sleep(600)


class RankWeights:
    """``STARTED`` / ``COMPLETED``: save the module's ``state_dict`` to ``<folder>/rank<r>_started.pt`` /
    ``rank<r>_completed.pt`` (r = process rank, 0 if not distributed)."""

    def __init__(self, folder: str, module: nn.Module) -> None:
        self.folder, self.module = Path(folder), module
        self.folder.mkdir(parents=True, exist_ok=True)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.save, "started")
        engine.add_event_handler(Events.COMPLETED, self.save, "completed")

    def save(self, engine: Engine, tag: str) -> None:
        rank = dist.get_rank() if dist.is_initialized() else 0
        state = {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}
        torch.save(state, self.folder / f"rank{rank}_{tag}.pt")


class ThresholdNet(nn.Module):
    """``x [N, 1, H, W]`` -> logits ``[N, 2, H, W]``: background 0, class 1 ``scale * (x - threshold)``.

    ``threshold`` and ``scale`` are parameters, so their values come from the loaded checkpoint (the defaults
    segment nothing)."""

    def __init__(self) -> None:
        super().__init__()
        self.threshold = nn.Parameter(torch.tensor(2.0))
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logit = self.scale * (x - self.threshold)
        return torch.cat([torch.zeros_like(logit), logit], dim=1)


class LossRecorder:
    """``ITERATION_COMPLETED``: append ``[epoch, iteration, float(loss)]``; ``COMPLETED``: write the list as JSON to
    ``path``."""

    def __init__(self, path: str) -> None:
        self.path, self.losses = Path(path), []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.record)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def record(self, engine: Engine) -> None:
        loss = from_engine(["loss"], first=True)(engine.state.output)
        self.losses.append([engine.state.epoch, engine.state.iteration, float(loss)])

    def write(self, engine: Engine) -> None:
        self.path.write_text(json.dumps(self.losses))
