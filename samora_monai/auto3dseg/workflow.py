"""Training, validation and inference of one ``samora`` Auto3DSeg algorithm (one fold), called by the template's
``scripts/train.py``, ``scripts/validate.py`` and ``scripts/infer.py``.

Each runs the bundle's own workflow (:mod:`samora_monai.auto3dseg.bundle_run`): ``train.yaml`` trains stage 2 on
2D slices of the fold's training volumes and validates on its validation volumes (the bundle saves the best model
as ``<ckpt_path>/model.pt``; :class:`~samora_monai.auto3dseg.progress.TrainingProgress` writes ``training.log`` and
``progress.yaml``), ``evaluate.yaml`` scores a trained fold, ``inference.yaml`` supplies the predictor.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch
from monai.auto3dseg.utils import datafold_read
from monai.data import MetaTensor

from samora_monai.apps.stage1_pipeline import LEVELS
from samora_monai.auto3dseg.bundle_run import bundle_workflow, write_fold_datalist
from samora_monai.auto3dseg.config import SamoraSettings, save_yaml
from samora_monai.auto3dseg.progress import TrainingProgress
from samora_monai.auto3dseg.ssl import run_ssl
from samora_monai.inferers import SaveLabelVolumed
from samora_monai.utils import bundle_dir

__all__ = ["SamoraPredictor", "expert_folder", "fold_files", "train", "validate"]

logger = logging.getLogger(__name__)


def fold_files(settings: SamoraSettings) -> tuple[list[dict], list[dict]]:
    """The fold's training and validation items (absolute paths) of ``data_list_file_path``."""
    datalist = settings.data_list_file_path
    if not datalist or not os.path.isfile(datalist):
        raise FileNotFoundError(f"datalist not found: {datalist}")
    train_files, val_files = datafold_read(datalist, settings.data_file_base_dir, fold=settings.fold)
    if not train_files or not val_files:
        raise ValueError(
            f"{datalist}: fold {settings.fold} has {len(train_files)} training and {len(val_files)} validation "
            "cases; both need at least one (give the 'training' items 'fold' keys)"
        )
    return train_files, val_files


def expert_folder(settings: SamoraSettings) -> tuple[str, str]:
    """``(folder of the stage-1 expert files, how they came)``: ``expert_dir`` when given, else none with
    ``allow_missing_experts: true`` (the "no stage 1" ablation), else the fold's ``ssl: run`` output."""
    if settings.expert_dir:
        return os.path.abspath(settings.expert_dir), f"experts from expert_dir {settings.expert_dir}"
    if settings.allow_missing_experts:
        return os.path.join(settings.ckpt_path, "no_experts"), (
            "ABLATION (allow_missing_experts: true): no stage 1, zero-initialised experts (SAM + HL-Attn, not SAMora)"
        )
    if settings.ssl == "run":
        return os.path.join(settings.ckpt_path, "ssl", "models", "experts"), "experts trained by ssl: run (stage 1)"
    raise ValueError(
        "ssl: skip needs expert_dir (a folder with the stage-1 files image.pt, patch.pt, pixel.pt from the bundle's "
        "pretrain_* workflows); use ssl: run to train them here, or allow_missing_experts: true for the no-stage-1 "
        "ablation"
    )


def _check_experts(folder: str) -> None:
    missing = [f"{lv}.pt" for lv in LEVELS if not os.path.isfile(os.path.join(folder, f"{lv}.pt"))]
    if missing:
        raise FileNotFoundError(f"expert_dir {folder}: missing stage-1 expert files {missing}")


def _run(workflow: Any, initialize: bool = True) -> None:
    if initialize:
        workflow.initialize()
    workflow.run()
    workflow.finalize()


def train(settings: SamoraSettings) -> dict[str, Any]:
    """Train one fold through the bundle's ``train.yaml``; returns the best validation record."""
    os.makedirs(settings.ckpt_path, exist_ok=True)
    train_files, val_files = fold_files(settings)
    experts, how = expert_folder(settings)
    if how.startswith("experts trained by ssl"):
        experts = run_ssl(settings, train_files, val_files)
    if "ABLATION" in how:
        logger.warning(how)
    else:
        _check_experts(experts)
    datalist = write_fold_datalist(settings, train_files, val_files)
    wf = bundle_workflow(settings, "train", experts, {"datalist": datalist})
    wf.initialize()
    trainer = wf.parser.get_parsed_content("train#trainer")
    evaluator = wf.parser.get_parsed_content("validate#evaluator")
    epochs, interval = int(trainer.state.max_epochs), int(wf.parser.get_parsed_content("val_interval"))
    if interval > epochs:
        raise ValueError(f"val_interval={interval} > {epochs} epochs: the fold would never validate")
    header = [
        f"samora fold {settings.fold}: bundle {bundle_dir(settings.bundle)} (train.yaml)",
        f"data: {len(train_files)} training, {len(val_files)} validation volumes ({datalist})",
        f"{how}: {experts}",
        f"epochs {epochs}, batch size {wf.parser.get_parsed_content('batch_size')}, "
        f"learning rate {wf.parser.get_parsed_content('learning_rate')}, warm-up "
        f"{wf.parser.get_parsed_content('warmup_iters')} of {epochs * len(trainer.data_loader)} iterations "
        f"(bundle/user value {wf.parser.get_parsed_content('auto3dseg_warmup_iters')}), validation every {interval}",
        f"img_size {settings.img_size}, slice_axis {settings.slice_axis}, modality {settings.modality}, "
        f"classes {settings.foreground_names}",
    ]
    header += [f"user value replaces the derived one: {k} = {v['given']!r} (derived {v['derived']!r})"
               for k, v in settings.replaced_derived.items()]  # fmt: skip
    progress = TrainingProgress(settings.ckpt_path, header)
    progress.attach(trainer, evaluator)
    _run(wf, initialize=False)  # initialised above: a second initialize would rebuild the engines
    model = os.path.join(settings.ckpt_path, "model.pt")
    if not os.path.isfile(model):
        raise RuntimeError(f"training finished without writing {model}")
    return progress.best


def validate(settings: SamoraSettings) -> dict[str, Any]:
    """Score ``infer#ckpt_name`` on the fold's validation volumes through the bundle's ``evaluate.yaml``; writes
    ``<ckpt_path>/validation.yaml`` (mean foreground Dice, spacing-aware ``monai`` mode) beside the metric files."""
    train_files, val_files = fold_files(settings)
    checkpoint = _checkpoint(settings)
    out_dir = os.path.join(settings.ckpt_path, "validation")
    extra = {
        "datalist": write_fold_datalist(settings, train_files, val_files),
        "eval_sections": ["validation"],
        "checkpoint": checkpoint,
        "output_dir": out_dir,
        "save_predictions": False,
        "metric_modes": ["monai"],
    }
    _run(bundle_workflow(settings, "evaluate", expert_folder(settings)[0], extra))
    with open(os.path.join(out_dir, "metrics_monai.json")) as f:
        mean_dice = json.load(f)["mean_dice"]
    result = {"mean_dice": float(mean_dice or 0.0), "n_cases": len(val_files), "fold": settings.fold}
    save_yaml(result, os.path.join(settings.ckpt_path, "validation.yaml"))
    logger.info("fold %s validation: %s", settings.fold, result)
    return result


def _checkpoint(settings: SamoraSettings) -> str:
    path = str(settings.infer["ckpt_name"])
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model checkpoint not found: {path} (train the algorithm first)")
    return path


class SamoraPredictor:
    """Probability maps of whole volumes from a trained fold, with the bundle's ``inference.yaml`` components
    (network, preprocessing, slice inferer).

    ``predictor(image_file)`` -> ``MetaTensor`` ``[K+1, X, Y, Z]`` softmax probabilities in the geometry of the input
    file (no resampling or reorientation is applied, so shape and affine are the file's).
    """

    def __init__(self, settings: SamoraSettings) -> None:
        self.settings = settings
        self.checkpoint = _checkpoint(settings)
        self.workflow = bundle_workflow(settings, "inference", expert_folder(settings)[0],
                                        {"checkpoint": self.checkpoint})  # fmt: skip
        parser = self.workflow.parser
        self.device = parser.get_parsed_content("device")
        self.network = parser.get_parsed_content("network")
        self.network.load_state_dict(torch.load(self.checkpoint, map_location=self.device, weights_only=True))
        self.network.eval()
        self.preprocessing = parser.get_parsed_content("preprocessing")
        self.inferer = parser.get_parsed_content("inferer")

    @torch.no_grad()
    def __call__(self, image_file: str | dict) -> MetaTensor:
        """``image_file``: a path, or a datalist item ``{"image": path, ...}`` (what ``EnsembleRunner`` passes)."""
        if isinstance(image_file, dict):
            image_file = image_file["image"]
        image = self.preprocessing({"image": image_file})["image"]
        logits = self.inferer(image.unsqueeze(0).to(self.device), self.network)[0]
        prob = torch.softmax(logits.float(), dim=0)
        return MetaTensor(prob.as_tensor() if isinstance(prob, MetaTensor) else prob, meta=dict(image.meta))

    def save_mask(self, prob: MetaTensor, output_dir: str) -> MetaTensor:
        """Argmax of ``prob`` as ``[1, X, Y, Z]``, written to ``<output_dir>/<case>_seg.nii.gz``."""
        mask = MetaTensor(torch.argmax(prob, dim=0, keepdim=True).to(torch.uint8), meta=prob.meta)
        SaveLabelVolumed("pred", output_dir=output_dir, ref_key=None)({"pred": mask})
        return mask

    def batch(self, image_files: list[str], output_dir: str) -> None:
        """Label volumes of ``image_files`` written to ``output_dir`` by the bundle's inference workflow."""
        wf = bundle_workflow(
            self.settings,
            "inference",
            expert_folder(self.settings)[0],
            {"checkpoint": self.checkpoint, "datalist": list(image_files), "output_dir": output_dir},
        )
        _run(wf)
