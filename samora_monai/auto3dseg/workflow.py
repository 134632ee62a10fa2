"""Training, validation and inference of one ``samora`` Auto3DSeg algorithm (one fold), called by the template's
``scripts/train.py``, ``scripts/validate.py`` and ``scripts/infer.py``.

Training is stage 2 of SAMora on 2D slices of the fold's training volumes (HL-Attn + mask decoder train, the SAM
encoder and the LoRA experts stay frozen), validation runs whole volumes through :class:`ResizedSliceInferer` and
scores the mean foreground Dice. The best model is ``<ckpt_path>/best_metric_model.pt`` and every improvement is
appended to ``<ckpt_path>/progress.yaml`` as ``BundleAlgo.get_score`` reads it.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from ignite.engine import Engine, Events
from monai.auto3dseg.utils import datafold_read
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset, MetaTensor
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import LrScheduleHandler, MeanDice, StatsHandler, from_engine
from monai.transforms import Activationsd, AsDiscreted, Compose, Transposed
from monai.utils import set_determinism

from samora_monai.apps.stage1_pipeline import LEVELS, STAGE1_STEPS, run_stage1
from samora_monai.data import VolumeSliceDataset, prepare_unlabeled, slice_augmentations, volume_transforms
from samora_monai.data.datalists import write_datalist
from samora_monai.engines import expert_files, stage2_network, trainable_parameters
from samora_monai.inferers import ResizedSliceInferer, SaveLabelVolumed
from samora_monai.losses import segmentation_loss
from samora_monai.networks import SamoraNet
from samora_monai.optimizers import warmup_poly_lr
from samora_monai.utils import as_bool

__all__ = [
    "HYPER_PARAMETERS",
    "SamoraPredictor",
    "append_progress",
    "build_network",
    "load_config",
    "run_ssl",
    "train",
    "validate",
]

logger = logging.getLogger(__name__)

HYPER_PARAMETERS = "hyper_parameters.yaml"
SSL_MODES = ("skip", "run")
# the samora_synapse bundle of a source checkout (the package sits next to bundles/)
DEFAULT_SSL_BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "samora_synapse"


def _atomic_yaml(obj: Any, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".yaml.tmp")
    try:
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(obj, f, sort_keys=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_config(
    config_file: str | Sequence[str], override: Mapping[str, Any] | None = None, persist: bool = False
) -> dict[str, Any]:
    """Parse the template configs with ``override`` applied; returns the resolved top-level dict.

    ``persist=True`` (training) also writes the overrides of keys that ``hyper_parameters.yaml`` has back into it, so
    ``get_score``, validation and inference later see the settings training used (e.g. ``variant``, ``img_size``).
    Unknown override keys are ignored with a warning (``AutoRunner`` passes one set of training parameters to every
    algorithm).
    """
    files = [config_file] if isinstance(config_file, str) else list(config_file)
    for f in files:
        if not os.path.isfile(f):
            raise FileNotFoundError(f"config file not found: {f}")
    parser = ConfigParser()
    parser.read_config(files)
    override = dict(override or {})
    unknown = [k for k in override if k.split("#")[0] not in parser.config]
    if unknown:
        logger.warning("ignoring parameters unknown to the samora template: %s", unknown)
    known = {k: v for k, v in override.items() if k not in unknown}
    for key, value in known.items():
        parser[key] = value
    if persist and known:
        hyper = next((f for f in files if os.path.basename(f) == HYPER_PARAMETERS), None)
        if hyper is None:
            raise ValueError(f"cannot record the training parameters: no {HYPER_PARAMETERS} in {files}")
        raw = ConfigParser(ConfigParser.load_config_file(hyper))
        for key, value in known.items():
            if key.split("#")[0] in raw.config:
                raw[key] = value
        _atomic_yaml(raw.config, hyper)
    if parser.get("bundle_root") is None:
        raise ValueError(f"bundle_root is not set in {files}; generate the algorithm with BundleGen first")
    return parser.get_parsed_content()


def _device(cfg: Mapping) -> torch.device:
    if cfg.get("device"):
        return torch.device(cfg["device"])
    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


def build_network(cfg: Mapping, device: torch.device | str = "cpu", stage2: bool = False) -> SamoraNet:
    """``SamoraNet`` from the template settings; ``stage2=True`` freezes all but HL-Attn and the mask decoder."""
    experts = expert_files(cfg["expert_dir"]) if cfg.get("expert_dir") else None
    random_init = as_bool(cfg["random_init"])
    net = SamoraNet(
        num_classes=int(cfg["output_classes"]) - 1,
        variant=str(cfg["variant"]),
        img_size=int(cfg["img_size"]),
        in_channels=int(cfg["input_channels"]),
        lora_rank=int(cfg["lora_rank"]),
        sam_checkpoint=None if random_init else cfg["sam_checkpoint"],
        random_init=random_init,
        expert_checkpoints=experts,
    )
    return stage2_network(net, device) if stage2 else net.to(device)


def _preprocessing(cfg: Mapping, with_label: bool = True, slice_axis_last: bool = False) -> Compose:
    """Load, check and normalise; ``slice_axis_last`` moves the slice axis last (what the slice dataset cuts)."""
    steps = [
        volume_transforms(
            modality=cfg["modality"],
            label_key="label" if with_label else None,
            num_classes=int(cfg["output_classes"]) - 1 if with_label else None,
            window=cfg["intensity_window"],
            percentiles=cfg["percentiles"],
        )
    ]
    axis = int(cfg["slice_axis"])
    if slice_axis_last and axis != 2:
        order = [0] + [i + 1 for i in range(3) if i != axis] + [axis + 1]
        steps.append(Transposed(["image", "label"] if with_label else ["image"], order))
    return Compose(steps)


def _inferer(cfg: Mapping, device: torch.device) -> ResizedSliceInferer:
    return ResizedSliceInferer(
        spatial_size=int(cfg["img_size"]),
        spatial_dim=int(cfg["slice_axis"]),
        sw_batch_size=int(cfg["slice_batch_size"]),
        amp=as_bool(cfg["amp"]) and device.type == "cuda",
    )


def _fold_files(cfg: Mapping) -> tuple[list[dict], list[dict]]:
    datalist = cfg["data_list_file_path"]
    if not datalist or not os.path.isfile(datalist):
        raise FileNotFoundError(f"datalist not found: {datalist}")
    train_files, val_files = datafold_read(datalist, cfg["data_file_base_dir"], fold=int(cfg["fold"]))
    if not train_files or not val_files:
        raise ValueError(
            f"{datalist}: fold {cfg['fold']} has {len(train_files)} training and {len(val_files)} validation cases; "
            "both need at least one (give the 'training' items 'fold' keys)"
        )
    return train_files, val_files


def _evaluator(cfg: Mapping, network: SamoraNet, files: list[dict], device: torch.device) -> SupervisedEvaluator:
    k = int(cfg["output_classes"])
    loader = DataLoader(
        Dataset(files, transform=_preprocessing(cfg)), batch_size=1, num_workers=int(cfg["num_workers"])
    )
    post = Compose(
        [
            Activationsd("pred", softmax=True),
            AsDiscreted(["pred", "label"], argmax=[True, False], to_onehot=[k, k]),
        ]
    )
    return SupervisedEvaluator(
        device=device,
        val_data_loader=loader,
        network=network,
        inferer=_inferer(cfg, device),
        postprocessing=post,
        key_val_metric={
            "val_mean_dice": MeanDice(include_background=False, output_transform=from_engine(["pred", "label"]))
        },
        val_handlers=[StatsHandler(iteration_log=False)],
    )


def append_progress(ckpt_path: str, record: Mapping[str, Any]) -> str:
    """Append ``record`` to the list in ``<ckpt_path>/progress.yaml`` (``BundleAlgo.get_score`` reads the last)."""
    path = os.path.join(ckpt_path, "progress.yaml")
    history = []
    if os.path.isfile(path):
        with open(path) as f:
            history = yaml.safe_load(f) or []
        if not isinstance(history, list):
            raise ValueError(f"{path} does not hold a list of progress records")
    history.append(dict(record))
    _atomic_yaml(history, path)
    return path


def _save_state(network: torch.nn.Module, path: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".pt.tmp")
    os.close(fd)
    try:
        torch.save(network.state_dict(), tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _check_ssl(cfg: Mapping) -> str:
    mode = str(cfg.get("ssl", "skip")).lower()
    if mode not in SSL_MODES:
        raise ValueError(f"ssl must be one of {SSL_MODES}, got {mode!r}")
    return mode


def _ssl_configs(cfg: Mapping) -> Path:
    """The folder of the stage-1 ``pretrain_*.yaml`` configs: ``<ssl_bundle>/configs`` (or ``ssl_bundle`` itself)."""
    bundle = cfg.get("ssl_bundle")
    if not bundle:
        if not (DEFAULT_SSL_BUNDLE / "configs" / "pretrain_image.yaml").is_file():
            raise FileNotFoundError(
                f"ssl='run' needs the stage-1 bundle configs and the default {DEFAULT_SSL_BUNDLE} does not exist "
                "(samora_monai is not run from a source checkout): set ssl_bundle to a bundle folder with "
                "configs/pretrain_teacher_{image,patch}.yaml and configs/pretrain_{image,patch,pixel}.yaml"
            )
        bundle = DEFAULT_SSL_BUNDLE
    bundle = Path(bundle)
    configs = bundle / "configs" if (bundle / "configs").is_dir() else bundle
    if not (configs / "pretrain_image.yaml").is_file():
        raise FileNotFoundError(f"ssl_bundle {bundle}: no pretrain_*.yaml configs in {configs}")
    return configs


def _datalist_images(datalist: str, base_dir: str | None, key: str) -> list[str]:
    """``image`` paths of section ``key`` of ``datalist`` joined to ``base_dir`` as ``datafold_read`` does (none
    when the section is absent)."""
    items = ConfigParser.load_config_file(datalist).get(key) or []
    return [os.path.join(base_dir, item["image"]) if base_dir else item["image"] for item in items]


def _case_names(paths: Sequence[str]) -> dict[str, str]:
    """Path -> case name: the file name without its suffixes, or the folder when those repeat (LA
    ``<ID>/mri_norm2.h5``)."""
    unique = set(paths)
    stems = {p: Path(p).name.split(".")[0] for p in unique}
    if len(set(stems.values())) < len(unique):
        return {p: Path(p).parent.name for p in unique}
    return stems


def _ssl_overrides(cfg: Mapping) -> dict[str, list[str]]:
    """``ssl_overrides``: bundle CLI arguments per stage-1 step name (or ``all``), e.g.
    ``{"teacher_image": ["--network_def#arch", "resnet18"]}``."""
    raw = dict(cfg.get("ssl_overrides") or {})
    known = {"all", *(step[0] for step in STAGE1_STEPS)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"ssl_overrides: unknown step(s) {unknown}; use {sorted(known)}")
    return {k: [str(a) for a in v] for k, v in raw.items()}


def run_ssl(cfg: Mapping, train_files: Sequence[dict], val_files: Sequence[dict]) -> str:
    """SAMora stage 1 for one fold; returns the folder of the expert files ``image.pt``/``patch.pt``/``pixel.pt``.

    The unlabeled pool is the fold's training images plus the datalist's ``unlabeled`` items, less any case of the
    fold's validation images or the ``testing`` items (also passed to the leakage guard of
    :func:`~samora_monai.data.prepare_unlabeled`). Slices are cut at the algorithm's ``img_size`` and intensity
    settings under ``<ckpt_path>/ssl/data/unlabeled``; teachers and experts are trained by
    :func:`~samora_monai.apps.stage1_pipeline.run_stage1` with the configs of ``ssl_bundle`` into
    ``<ckpt_path>/ssl/models`` (step logs in ``<ckpt_path>/ssl/logs``).
    """
    if int(cfg["slice_axis"]) != 2:
        raise ValueError(
            f"ssl='run' cuts stage-1 slices along the last axis but slice_axis={cfg['slice_axis']}; train the experts "
            "separately (prepare_unlabeled + the bundle's pretrain workflows) and set expert_dir"
        )
    configs = _ssl_configs(cfg)
    datalist, base = cfg["data_list_file_path"], cfg["data_file_base_dir"]
    held_out = [f["image"] for f in val_files] + _datalist_images(datalist, base, "testing")
    pool = [f["image"] for f in train_files] + _datalist_images(datalist, base, "unlabeled")
    names = _case_names([*pool, *held_out])
    excluded = sorted({names[p] for p in held_out})
    kept = [p for p in dict.fromkeys(pool) if names[p] not in excluded]
    dropped = sorted({names[p] for p in pool} & set(excluded))
    if dropped:
        logger.warning("stage 1: leaving out %s (validation or testing cases of fold %s)", dropped, cfg["fold"])
    if not kept:
        raise ValueError(f"{datalist}: no image of fold {cfg['fold']} is left for stage 1 after the exclusions")

    out = Path(cfg["ckpt_path"]) / "ssl"
    pool_file = write_datalist({"training": [{"image": p} for p in kept]}, out / "ssl_pool.json")
    img_size, modality = int(cfg["img_size"]), str(cfg["modality"])
    slices = prepare_unlabeled(
        str(out / "data" / "unlabeled"), datalist=str(pool_file), modality=modality, spatial_size=img_size,
        exclude=excluded, window=cfg["intensity_window"], percentiles=cfg["percentiles"],
    )  # fmt: skip

    random_init = as_bool(cfg["random_init"])
    backbone = ["--variant", str(cfg["variant"]), "--lora_rank", str(cfg["lora_rank"]),
                "--random_init", str(random_init).lower()]  # fmt: skip
    if not random_init:
        if not cfg.get("sam_checkpoint"):
            raise ValueError("ssl='run' needs sam_checkpoint (a local SAM checkpoint) unless random_init is true")
        backbone += ["--sam_checkpoint", os.path.abspath(str(cfg["sam_checkpoint"]))]
    extra = _ssl_overrides(cfg)
    common = ["--img_size", str(img_size), "--modality", modality, "--epochs", str(int(cfg["ssl_epochs"])),
              "--batch_size", str(int(cfg["num_images_per_batch"])), "--num_workers", str(int(cfg["num_workers"])),
              *extra.get("all", [])]  # fmt: skip
    written = run_stage1(
        configs, out, slices, overrides=common,
        teacher_overrides={lv: extra.get(f"teacher_{lv}", []) for lv in ("image", "patch")},
        expert_overrides={lv: [*backbone, *extra.get(f"expert_{lv}", [])] for lv in LEVELS},
    )  # fmt: skip
    logger.info("stage-1 experts of fold %s: %s", cfg["fold"], {lv: written[f"expert_{lv}"] for lv in LEVELS})
    return os.path.dirname(written["expert_image"])


def train(cfg: Mapping) -> dict[str, Any]:
    """Train one fold; returns ``{"best_avg_dice_score", "best_avg_dice_score_epoch", ...}``."""
    ssl = _check_ssl(cfg)
    ckpt_path = cfg["ckpt_path"]
    os.makedirs(ckpt_path, exist_ok=True)
    train_files, val_files = _fold_files(cfg)
    if ssl == "run":
        cfg = {**cfg, "expert_dir": run_ssl(cfg, train_files, val_files)}
    set_determinism(seed=int(cfg["seed"]))
    device = _device(cfg)
    logger.info("fold %s: %d training, %d validation volumes", cfg["fold"], len(train_files), len(val_files))

    network = build_network(cfg, device, stage2=True)
    dataset = VolumeSliceDataset(
        train_files,
        transform=_preprocessing(cfg, slice_axis_last=True),
        spatial_size=int(cfg["img_size"]),
        foreground_only=as_bool(cfg["foreground_slices_only"]),
        slice_transform=slice_augmentations(),
    )
    if len(dataset) == 0:
        raise ValueError(f"no training slices in fold {cfg['fold']} of {cfg['data_list_file_path']}")
    loader = DataLoader(
        dataset, batch_size=int(cfg["num_images_per_batch"]), shuffle=True, num_workers=int(cfg["num_workers"])
    )
    epochs = int(cfg["num_epochs"])
    optimizer = torch.optim.AdamW(
        trainable_parameters(network), lr=float(cfg["learning_rate"]), weight_decay=float(cfg["weight_decay"])
    )
    scheduler = warmup_poly_lr(optimizer, max_iters=epochs * len(loader), warmup_iters=int(cfg["warmup_iters"]))
    trainer = SupervisedTrainer(
        device=device,
        max_epochs=epochs,
        train_data_loader=loader,
        network=network,
        optimizer=optimizer,
        loss_function=segmentation_loss(),
        amp=as_bool(cfg["amp"]) and device.type == "cuda",
        train_handlers=[
            LrScheduleHandler(scheduler, epoch_level=False, print_lr=False),
            StatsHandler(tag_name="train_loss", output_transform=from_engine(["loss"], first=True)),
        ],
    )
    evaluator = _evaluator(cfg, network, val_files, device)
    best: dict[str, Any] = {"best_avg_dice_score": -1.0}
    interval = max(1, int(cfg["val_interval"]))

    @trainer.on(Events.EPOCH_COMPLETED(event_filter=lambda _, e: e % interval == 0 or e == epochs))
    def _validate(engine: Engine) -> None:
        evaluator.run(engine.state.epoch)
        score = float(evaluator.state.metrics["val_mean_dice"])
        score = 0.0 if math.isnan(score) else score
        logger.info("epoch %d: validation mean Dice %.4f", engine.state.epoch, score)
        if score > best["best_avg_dice_score"]:
            best.update(
                best_avg_dice_score=score,
                best_avg_dice_score_epoch=int(engine.state.epoch),
                best_avg_dice_score_iteration=int(engine.state.iteration),
            )
            _save_state(network, os.path.join(ckpt_path, "best_metric_model.pt"))
            append_progress(ckpt_path, best)

    trainer.run()
    return best


def _load_weights(network: torch.nn.Module, path: str, device: torch.device) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model checkpoint not found: {path} (train the algorithm first)")
    network.load_state_dict(torch.load(path, map_location=device, weights_only=True))
    network.eval()


def validate(cfg: Mapping) -> dict[str, Any]:
    """Score ``best_metric_model.pt`` on the fold's validation volumes; writes ``<ckpt_path>/validation.yaml``."""
    device = _device(cfg)
    network = build_network(cfg, device)
    _load_weights(network, cfg["infer"]["ckpt_name"], device)
    _, val_files = _fold_files(cfg)
    evaluator = _evaluator(cfg, network, val_files, device)
    evaluator.run()
    score = float(evaluator.state.metrics["val_mean_dice"])
    result = {"mean_dice": 0.0 if math.isnan(score) else score, "n_cases": len(val_files), "fold": int(cfg["fold"])}
    _atomic_yaml(result, os.path.join(cfg["ckpt_path"], "validation.yaml"))
    logger.info("fold %s validation: %s", cfg["fold"], result)
    return result


class SamoraPredictor:
    """Probability maps of whole volumes from a trained fold.

    ``predictor(image_file)`` -> ``MetaTensor`` ``[K+1, X, Y, Z]`` softmax probabilities in the geometry of the input
    file (no resampling or reorientation is applied, so shape and affine are the file's).
    """

    def __init__(self, cfg: Mapping) -> None:
        self.cfg = cfg
        self.device = _device(cfg)
        self.network = build_network(cfg, self.device)
        _load_weights(self.network, cfg["infer"]["ckpt_name"], self.device)
        self.preprocessing = _preprocessing(cfg, with_label=False)
        self.inferer = _inferer(cfg, self.device)

    @torch.no_grad()
    def __call__(self, image_file: str | Mapping[str, str]) -> MetaTensor:
        """``image_file``: a path, or a datalist item ``{"image": path, ...}`` (what ``EnsembleRunner`` passes)."""
        if isinstance(image_file, Mapping):
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
