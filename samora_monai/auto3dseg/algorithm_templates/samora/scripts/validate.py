"""Score a trained fold: ``python scripts/validate.py run --config_file <configs>``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import fire

from samora_monai.auto3dseg.config import load_settings
from samora_monai.auto3dseg.workflow import validate


def run(config_file: str | Sequence[str], **override: Any) -> dict:
    """Mean foreground Dice of ``model.pt`` on the fold's validation volumes with the bundle's ``evaluate.yaml``
    (also written to ``<ckpt_path>/validation.yaml``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return validate(load_settings(config_file, override))


if __name__ == "__main__":
    fire.Fire()
