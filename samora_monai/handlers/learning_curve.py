"""Per-epoch learning curve of a training run (validation metric and training time), for run comparisons."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from ignite.engine import Engine, Events

from samora_monai.networks.stages import count_parameters

__all__ = ["LearningCurveWriter"]

CURVE_FILE, INFO_FILE = "learning_curve.csv", "run_info.json"
CURVE_FIELDS = ("epoch", "train_time_s", "val_metric")


class LearningCurveWriter:
    """Attach to a trainer; writes to ``output_dir``:

    - ``run_info.json`` when training starts: ``{"trainable": n, "total": m, "max_epochs": e, "metric": name}``;
    - ``learning_curve.csv``, one row per epoch: ``epoch, train_time_s`` (the epoch's training time, validation
      excluded) and ``val_metric`` (``evaluator.state.metrics[metric]`` when the evaluator ran this epoch, else
      empty). A run that starts at epoch 0 starts a new file; a resumed run appends.

    Attach it after the trainer's ``ValidationHandler`` (e.g. through ``+train#handlers``) so the metric is current.
    """

    def __init__(self, output_dir: str | os.PathLike, evaluator: Engine, metric: str = "val_mean_dice") -> None:
        self.output_dir = Path(output_dir)
        self.evaluator = evaluator
        self.metric = metric

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.start)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def start(self, engine: Engine) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        info = {**count_parameters(engine.network), "max_epochs": engine.state.max_epochs, "metric": self.metric}
        (self.output_dir / INFO_FILE).write_text(json.dumps(info, indent=2))
        curve = self.output_dir / CURVE_FILE
        if engine.state.epoch == 0 or not curve.is_file():
            with open(curve, "w", newline="") as f:
                csv.writer(f).writerow(CURVE_FIELDS)

    def epoch_completed(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        value = ""
        if self.evaluator.state.epoch == epoch and self.metric in self.evaluator.state.metrics:
            value = float(self.evaluator.state.metrics[self.metric])
        with open(self.output_dir / CURVE_FILE, "a", newline="") as f:
            csv.writer(f).writerow([epoch, f"{engine.state.times['EPOCH_COMPLETED']:.4f}", value])
