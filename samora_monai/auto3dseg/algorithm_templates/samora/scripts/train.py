"""Train one fold of the ``samora`` algorithm: ``python scripts/train.py run --config_file <configs> [--key value]``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import fire

from samora_monai.auto3dseg.workflow import load_config, train


def run(config_file: str | Sequence[str], **override: Any) -> dict:
    """Train on 2D slices of the fold's training volumes, validate on whole volumes; writes
    ``<ckpt_path>/best_metric_model.pt`` and ``<ckpt_path>/progress.yaml``. ``override`` replaces config keys and
    is recorded in ``hyper_parameters.yaml``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return train(load_config(config_file, override, persist=True))


if __name__ == "__main__":
    fire.Fire()
