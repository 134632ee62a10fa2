"""Train one fold of the ``samora`` algorithm: ``python scripts/train.py run --config_file <configs> [--key value]``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import fire

from samora_monai.auto3dseg.config import load_settings
from samora_monai.auto3dseg.workflow import train


def run(config_file: str | Sequence[str], **override: Any) -> dict:
    """Train on 2D slices of the fold's training volumes with the bundle's ``train.yaml``, validating on its validation
    volumes; writes ``<ckpt_path>/model.pt``, ``training.log`` and ``progress.yaml``. ``override`` replaces template
    keys (or the bundle's ``train.yaml`` keys, through ``bundle_overrides``) and is recorded in
    ``hyper_parameters.yaml``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return train(load_settings(config_file, override, persist=True))


if __name__ == "__main__":
    fire.Fire()
