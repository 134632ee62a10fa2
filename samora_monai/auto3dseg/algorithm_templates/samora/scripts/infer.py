"""Inference of a trained fold; ``InferClass`` is what ``BundleAlgo.predict`` and the ensemblers call.

``python scripts/infer.py run --config_file <configs>`` writes label volumes of the datalist's ``testing`` images to
``infer#output_path``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import fire
import torch
from monai.auto3dseg.utils import datafold_read

from samora_monai.auto3dseg.config import load_settings
from samora_monai.auto3dseg.workflow import SamoraPredictor
from samora_monai.inferers import prediction_path

# prediction parameters that EnsembleRunner passes to every algorithm and that are not config keys
ENSEMBLE_KEYS = ("rank", "image_save_func")


class InferClass:
    """``InferClass(config_file, **override).infer(image_file)`` -> ``[K+1, X, Y, Z]`` softmax probabilities
    (a ``MetaTensor`` in the input file's geometry); with ``save_mask=True`` the argmax ``[1, X, Y, Z]`` is written to
    ``infer#output_path`` and returned instead."""

    def __init__(self, config_file: str | Sequence[str], **override: Any) -> None:
        for key in ENSEMBLE_KEYS:
            override.pop(key, None)
        self.settings = load_settings(config_file, override)
        self.predictor = SamoraPredictor(self.settings)

    @torch.no_grad()
    def infer(self, image_file: str | dict, save_mask: bool = False) -> torch.Tensor:
        prob = self.predictor(image_file)
        if save_mask:
            return self.predictor.save_mask(prob, self.settings.infer["output_path"])
        return prob

    def batch_infer(self) -> list[str]:
        """Write the masks of every image in the datalist section ``infer#data_list_key`` (the bundle's inference
        workflow)."""
        settings = self.settings
        key, output_dir = settings.infer["data_list_key"], settings.infer["output_path"]
        files, _ = datafold_read(settings.data_list_file_path, settings.data_file_base_dir, fold=-1, key=key)
        images = [item["image"] for item in files]
        self.predictor.batch(images, output_dir)
        return [str(prediction_path(image, output_dir)) for image in images]


def run(config_file: str | Sequence[str], **override: Any) -> list[str]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return InferClass(config_file, **override).batch_infer()


if __name__ == "__main__":
    fire.Fire()
