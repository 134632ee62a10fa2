"""Test instrument for tests/test_faults_resume.py, imported by the bundle run in a subprocess (added to its
handlers by an overlay config): records the trained weights and the optimizer step when the run starts (after the
resume loader) and holds the first run inside an epoch so that the test's SIGKILL lands mid-epoch, never at an
epoch boundary. It changes no value of the run."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from ignite.engine import Engine, Events
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
