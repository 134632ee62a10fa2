"""What a ``samora`` algorithm reports while it trains: ``training.log`` and ``progress.yaml`` in its ``ckpt_path``."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from typing import Any

import yaml
from ignite.engine import Engine, Events

from samora_monai.auto3dseg.config import save_yaml
from samora_monai.utils import atomic_output

__all__ = ["PROGRESS_FILE", "TRAINING_LOG", "TrainingProgress", "read_progress"]

PROGRESS_FILE = "progress.yaml"
TRAINING_LOG = "training.log"


def read_progress(ckpt_path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of ``<ckpt_path>/progress.yaml`` (``[]`` when absent)."""
    path = os.path.join(ckpt_path, PROGRESS_FILE)
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        history = yaml.safe_load(f) or []
    if not isinstance(history, list):
        raise ValueError(f"{path} does not hold a list of progress records")
    return history


class TrainingProgress:
    """Per-epoch report of a stage-2 run built from the bundle's ``train.yaml``.

    ``training.log`` gets the ``header`` lines, then one line per epoch (mean training loss, learning rate, the
    validation Dice when the epoch validated, the best so far, epoch and total time), each also printed. Every
    validation appends a record to ``progress.yaml`` in the form ``BundleAlgo.get_score`` reads (the last record's
    ``best_avg_dice_score``), with ``val_mean_dice`` of that validation. Both files are rewritten atomically.

    Args:
        ckpt_path: the fold's folder.
        header: lines written first (settings, overrides, warm-up).
        metric: the evaluator's key metric.
    """

    def __init__(self, ckpt_path: str | os.PathLike, header: Sequence[str] = (), metric: str = "val_mean_dice") -> None:
        self.ckpt_path = str(ckpt_path)
        self.lines = list(header)
        self.metric = metric
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"best_avg_dice_score": -1.0}
        self.loss_sum, self.loss_count, self.score = 0.0, 0, None
        self.start = self.epoch_start = time.time()

    def attach(self, trainer: Engine, evaluator: Engine) -> None:
        """Call after the bundle's handlers are attached (the validation of an epoch then runs before the report)."""
        trainer.add_event_handler(Events.STARTED, self.started)
        trainer.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)
        evaluator.add_event_handler(Events.EPOCH_COMPLETED, self.validated)

    def _write_log(self) -> None:
        with atomic_output(os.path.join(self.ckpt_path, TRAINING_LOG)) as tmp, open(tmp, "w") as f:
            f.write("\n".join(self.lines) + "\n")

    def log(self, line: str) -> None:
        """Append ``line`` to ``training.log`` and print it."""
        self.lines.append(line)
        print(f"[samora] {line}", flush=True)
        self._write_log()

    def started(self, engine: Engine) -> None:
        self.start = time.time()
        self.log(f"training: {engine.state.max_epochs} epochs of {engine.state.epoch_length} iterations")

    def epoch_started(self, engine: Engine) -> None:
        self.loss_sum, self.loss_count, self.score, self.epoch_start = 0.0, 0, None, time.time()

    def iteration_completed(self, engine: Engine) -> None:
        output = engine.state.output
        first = output[0] if isinstance(output, list) else output  # decollated items share the batch loss
        self.loss_sum += float(first["loss"])
        self.loss_count += 1

    def validated(self, engine: Engine) -> None:
        score = float(engine.state.metrics[self.metric])
        self.score = 0.0 if math.isnan(score) else score

    def epoch_completed(self, engine: Engine) -> None:
        epoch, iteration = int(engine.state.epoch), int(engine.state.iteration)
        loss = self.loss_sum / max(1, self.loss_count)
        lr = engine.optimizer.param_groups[0]["lr"] if hasattr(engine, "optimizer") else float("nan")
        now = time.time()
        line = f"epoch {epoch}/{engine.state.max_epochs} loss {loss:.4f} lr {lr:.3g}"
        if self.score is not None:
            if self.score > self.best["best_avg_dice_score"]:
                self.best = {"best_avg_dice_score": self.score, "best_avg_dice_score_epoch": epoch,
                             "best_avg_dice_score_iteration": iteration}  # fmt: skip
            self.history.append(
                {
                    **self.best,
                    "epoch": epoch,
                    "iteration": iteration,
                    self.metric: self.score,
                    "train_loss": loss,
                    "elapsed_s": round(now - self.start, 2),
                }  # fmt: skip
            )
            save_yaml(self.history, os.path.join(self.ckpt_path, PROGRESS_FILE))
            line += (
                f" {self.metric} {self.score:.4f} (best {self.best['best_avg_dice_score']:.4f} at epoch "
                f"{self.best['best_avg_dice_score_epoch']})"
            )
        self.log(f"{line} time {now - self.epoch_start:.1f}s elapsed {now - self.start:.1f}s")
