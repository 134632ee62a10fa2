"""``SamoraAlgo``: fills the template configs from the ``DataAnalyzer`` statistics."""

from __future__ import annotations

import logging
import os
from typing import Any

import fire
from monai.apps.auto3dseg import BundleAlgo
from monai.bundle import ConfigParser

from samora_monai.auto3dseg.config import DERIVED_KEYS, HYPER_PARAMETERS, bundle_train_config, save_yaml
from samora_monai.auto3dseg.settings import derive_hyper_parameters

logger = logging.getLogger(__name__)
USER_SECTION = "samora"  # optional section of the input config with user settings (variant, sam_checkpoint, ...)


class SamoraAlgo(BundleAlgo):
    """SAMora (SAM + hierarchical LoRA experts + HL-Attn, prompt-free decoder) as an Auto3DSeg algorithm.

    ``fill_template_config`` derives the number of classes, modality and intensity window, input channels, slice axis
    and in-plane input size from the data statistics. User settings (``variant``, ``sam_checkpoint``, ``lora_rank``,
    ``expert_dir``, ...) come from the optional ``samora:`` section of the input config; keyword arguments whose keys
    exist in ``hyper_parameters.yaml`` (``fold`` from ``BundleGen.generate``) override both; a user value replacing
    a derived one is logged and recorded in ``replaced_derived``. Keys of the bundle's ``train.yaml`` (e.g.
    ``learning_rate``) go to ``bundle_overrides``. ``max_img_size`` and
    ``anisotropy_threshold`` keyword arguments tune the derivation. Training parameters
    (``algo.train(train_params)``, ``AutoRunner.set_training_params``) override everything at training time.
    """

    def fill_template_config(self, data_stats_filename: str, output_path: str, **kwargs: Any) -> dict:
        if not data_stats_filename or not os.path.isfile(data_stats_filename):
            raise FileNotFoundError(f"data statistics file not found: {data_stats_filename!r} (run DataAnalyzer)")
        if not self.data_list_file or not os.path.isfile(self.data_list_file):
            raise FileNotFoundError(f"data source config not found: {self.data_list_file!r}")
        data_src = ConfigParser.load_config_file(self.data_list_file)
        for key in ("dataroot", "datalist", "modality"):
            if key not in data_src:
                raise ValueError(f"{self.data_list_file}: the input config needs '{key}'")
        if data_src.get("sigmoid", False):
            raise ValueError(f"{self.data_list_file}: samora predicts exclusive classes (softmax), not sigmoid")
        stats = ConfigParser.load_config_file(data_stats_filename)
        derived = derive_hyper_parameters(
            stats,
            data_src["modality"],
            max_img_size=int(kwargs.pop("max_img_size", 224)),
            anisotropy_threshold=float(kwargs.pop("anisotropy_threshold", 2.0)),
        )
        fill = {
            "bundle_root": os.path.abspath(output_path),
            "data_file_base_dir": os.path.abspath(data_src["dataroot"]),
            "data_list_file_path": os.path.abspath(data_src["datalist"]),
            **derived,
        }
        class_names = data_src.get("class_names")
        if class_names:
            if not all(isinstance(c, str) for c in class_names):
                raise ValueError(f"{self.data_list_file}: samora takes plain class names, not region definitions")
            if len(class_names) + 1 != derived["output_classes"]:
                raise ValueError(
                    f"{self.data_list_file}: {len(class_names)} class_names but the labels hold "
                    f"{derived['output_classes'] - 1} foreground classes"
                )
            fill["class_names"] = list(class_names)
        config_file = os.path.join(output_path, "configs", HYPER_PARAMETERS)
        config = ConfigParser.load_config_file(config_file)
        user = dict(data_src.get(USER_SECTION) or {})
        user.update({k: v for k, v in kwargs.items() if k in config})
        bundle_keys = set(bundle_train_config(user.get("bundle", config["bundle"])))
        unknown = sorted(set(user) - set(config) - bundle_keys)
        if unknown:
            raise ValueError(f"{self.data_list_file}: '{USER_SECTION}' has keys unknown to the template: {unknown}")
        to_bundle = {k: user.pop(k) for k in list(user) if k not in config}
        user["bundle_overrides"] = {**dict(user.get("bundle_overrides") or {}), **to_bundle}
        replaced = {k: {"derived": derived[k], "given": v} for k, v in user.items() if k in DERIVED_KEYS
                    and v != derived[k]}  # fmt: skip
        for key, value in replaced.items():
            logger.warning("%s: the user's %r replaces the value derived from the data (%r)", key, value["given"],
                           value["derived"])  # fmt: skip
        fill.update(user, replaced_derived=replaced)
        config.update(fill)
        save_yaml(config, config_file)
        return {HYPER_PARAMETERS: fill}


if __name__ == "__main__":
    fire.Fire({"SamoraAlgo": SamoraAlgo})
