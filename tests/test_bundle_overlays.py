"""Every recipe overlay (H-SAMora, the SAMed and H-SAM baselines, SAM 2, the ablations) in both bundles: the files
are the same in the two bundles, each cites its source and is listed in the READMEs, and each trains 1 epoch through
MONAI's bundle runner (``monai.bundle.create_workflow`` + ``run`` + ``finalize``, what ``python -m monai.bundle run``
calls; one subprocess per bundle) on the tiny backbone at 32 px, building the network, loss and trainable parameters
the recipe says, and writes a ``model.pt`` that inference.yaml + the same overlay loads and infers with."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from samora_monai.utils import bundle_dir

BUNDLES = ("samora_synapse", "samora_la")
# overlay -> (config files after the base, trainable parameter groups, loss class, levels, rank, decoder, backbone)
STAGE2 = {"fusion", "decoder"}
OVERLAYS = {
    "hsamora": (["hsamora.yaml"], STAGE2 | {"decoder2"}, "DualStageLoss", 3, 4, "hsam", "sam"),
    "samed": (["samed.yaml"], {"lora:image", "decoder"}, "LowResLoss", 1, 4, "sam", "sam"),
    "hsam": (["hsam.yaml"], {"lora:image", "decoder", "decoder2"}, "DualStageLoss", 1, 5, "hsam", "sam"),
    "hsam_la4": (["hsam.yaml", "hsam_la4.yaml"], {"lora:image", "decoder", "decoder2"}, "DualStageLoss", 1, 5,
                 "hsam", "sam"),
    "hsam_promise3": (["hsam.yaml", "hsam_promise3.yaml"], {"lora:image", "decoder", "decoder2"}, "DualStageLoss",
                      1, 5, "hsam", "sam"),
    "sam2": (["sam2.yaml"], STAGE2, "DiceCELoss", 3, 4, "sam", "sam2"),
    "levels_image": (["ablations/levels_image.yaml"], STAGE2, "DiceCELoss", 1, 4, "sam", "sam"),
    "levels_patch": (["ablations/levels_patch.yaml"], STAGE2, "DiceCELoss", 1, 4, "sam", "sam"),
    "levels_pixel": (["ablations/levels_pixel.yaml"], STAGE2, "DiceCELoss", 1, 4, "sam", "sam"),
    "levels_image_patch": (["ablations/levels_image_patch.yaml"], STAGE2, "DiceCELoss", 2, 4, "sam", "sam"),
    "levels_image_pixel": (["ablations/levels_image_pixel.yaml"], STAGE2, "DiceCELoss", 2, 4, "sam", "sam"),
    "levels_patch_pixel": (["ablations/levels_patch_pixel.yaml"], STAGE2, "DiceCELoss", 2, 4, "sam", "sam"),
    "fusion_sum": (["ablations/fusion_sum.yaml"], {"decoder"}, "DiceCELoss", 3, 4, "sam", "sam"),
    "fusion_hl_attn_lite": (["ablations/fusion_hl_attn_lite.yaml"], STAGE2, "DiceCELoss", 3, 4, "sam", "sam"),
    "fusion_init_reference": (["ablations/fusion_init_reference.yaml"], STAGE2, "DiceCELoss", 3, 4, "sam", "sam"),
    "fusion_order_image_first": (["ablations/fusion_order_image_first.yaml"], STAGE2, "DiceCELoss", 3, 4, "sam",
                                 "sam"),
    "rank_8": (["ablations/rank_8.yaml"], STAGE2, "DiceCELoss", 3, 8, "sam", "sam"),
    "no_stage1": (["ablations/no_stage1.yaml"], STAGE2, "DiceCELoss", 3, 4, "sam", "sam"),
}
TINY = {"variant": "tiny", "img_size": 32, "random_init": True, "epochs": 1, "batch_size": 4, "num_workers": 0,
        "slice_batch_size": 8, "val_interval": 1, "allow_missing_experts": True}
DATA = {"samora_synapse": {}, "samora_la": {"label_mapping": None}}

# run in a subprocess, one per bundle: for every overlay train (1 epoch) then infer, recording what was built
RUNNER = r"""
import json, sys
import torch
from monai.bundle import create_workflow

def group(name):
    if ".fusion." in name:
        return "fusion"
    if ".lora.experts." in name:
        return "lora:" + name.split(".lora.experts.")[1].split(".")[0]
    return {"mask_decoder2": "decoder2", "mask_decoder": "decoder"}.get(name.split(".")[0], "other:" + name)

job = json.loads(sys.argv[1])
report = {}
for name, (files, root, overrides, images, out) in job.items():
    train = create_workflow(config_file=files[0], run_id="training", bundle_root=root, **overrides)
    train.run()
    net, parser = train.parser.get_parsed_content("network"), train.parser
    report[name] = {
        "trainable": sorted({group(n) for n, p in net.named_parameters() if p.requires_grad}),
        "loss": type(parser.get_parsed_content("loss")).__name__,
        "train_inferer": type(parser.get_parsed_content("train#inferer")).__name__,
        "handlers": [type(h).__name__ for h in parser.get_parsed_content("train#handlers")],
        "max_epochs": parser.get_parsed_content("train#trainer").state.epoch,
        "recipe": {k: parser[k] for k in ("learning_rate", "epochs", "img_size", "seed")},
    }
    train.finalize()
    overrides.pop("datalist")  # inference.yaml's datalist is the list of input_images
    infer = create_workflow(config_file=files[1], run_id="run", bundle_root=root, input_images=images,
                            output_dir=out, **overrides)
    infer.run()
    infer.finalize()
print("REPORT " + json.dumps(report))
"""


def overlay_files(bundle: str, name: str, base: str) -> list[str]:
    configs = bundle_dir(bundle) / "configs"
    return [str(configs / base)] + [str(configs / f) for f in OVERLAYS[name][0]]


def all_overlays(bundle: str) -> list[str]:
    """The overlay files of a bundle: configs/*.yaml other than the workflows' bases, and configs/ablations/*.yaml."""
    configs = bundle_dir(bundle) / "configs"
    bases = {"train", "inference", "evaluate", "multi_gpu_train"}
    dataset = {"promise12"}  # the LA bundle's dataset overlay (tests/test_bundle_configs.py), not a method overlay
    top = [p for p in configs.glob("*.yaml")
           if p.stem not in bases | dataset and not p.stem.startswith("pretrain")]
    return sorted(str(p.relative_to(configs)) for p in [*top, *configs.glob("ablations/*.yaml")])


def test_overlays_are_the_same_in_both_bundles_and_documented():
    files = {b: all_overlays(b) for b in BUNDLES}
    assert files["samora_synapse"] == files["samora_la"]
    assert sorted(f for v in OVERLAYS.values() for f in v[0][-1:]) == files["samora_la"]  # each one is tested below
    for rel in files["samora_la"]:
        texts = [(bundle_dir(b) / "configs" / rel).read_text() for b in BUNDLES]
        assert texts[0] == texts[1], f"{rel} differs between the bundles"
        assert texts[0].startswith("# "), f"{rel}: no one-line summary"
    for bundle in BUNDLES:
        readme = (bundle_dir(bundle) / "docs" / "README.md").read_text()
        sources = readme.split("### Where each overlay's values come from", 1)[1].split("\n#", 1)[0]
        for rel in files[bundle]:
            assert f"configs/{rel}" in readme, f"{bundle}/docs/README.md does not list configs/{rel}"
            levels = rel.startswith("ablations/levels_")
            name = "`configs/ablations/levels_*.yaml`" if levels else f"`configs/{rel}`"
            if rel != "sam2.yaml":  # sam2.yaml: its own README section
                entry = sources.split(name, 1)[1].split("\n- ", 1)[0]
                assert len(entry) > 60, f"{bundle}/docs/README.md does not cite where {rel}'s values come from"


@pytest.mark.parametrize("bundle", BUNDLES)
def test_overlays_layer_on_train_and_inference(bundle, tmp_path):
    """Parsing only: the overlay's values reach both configs (same network settings in training and inference)."""
    for name in OVERLAYS:
        nets = []
        for base in ("train.yaml", "inference.yaml"):
            parser = ConfigParser()
            parser.read_config(overlay_files(bundle, name, base))
            parser["bundle_root"] = str(tmp_path)
            parser["allow_missing_experts"] = True  # stage 2 without expert files (refused by default)
            nets.append({k: parser[f"network_def#{k}"] for k in parser["network_def"] if k != "_target_"})
            nets[-1]["img_size"] = parser["img_size"]
            assert parser.get_parsed_content("expert_checkpoints") == {}
        assert nets[0] == nets[1], name


def _write_data(bundle: str, root: Path, write_nifti_cases, write_msd_heart) -> tuple[str, Path]:
    write = write_nifti_cases if bundle == "samora_synapse" else write_msd_heart
    items = write(root / "data", n=4)  # validation and test cases disjoint from training and each other
    datalist = root / "datalist.json"
    datalist.write_text(json.dumps({"training": items[:2], "validation": items[2:3], "testing": items[3:]}))
    return str(datalist), Path(items[3]["image"])


@pytest.mark.slow
@pytest.mark.parametrize("bundle", BUNDLES)
def test_every_overlay_trains_and_its_model_infers(bundle, tmp_path, write_nifti_cases, write_msd_heart):
    datalist, image = _write_data(bundle, tmp_path, write_nifti_cases, write_msd_heart)
    overrides = {**TINY, **DATA[bundle], "datalist": datalist}
    job = {
        name: ([overlay_files(bundle, name, "train.yaml"), overlay_files(bundle, name, "inference.yaml")],
               str(tmp_path / name), overrides, str(image), str(tmp_path / name / "pred"))
        for name in OVERLAYS
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(job)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-20000:]
    report = json.loads(proc.stdout.split("REPORT ", 1)[1])
    reference = nib.load(str(image))
    for name, (_, trainable, loss, n_levels, rank, decoder, backbone) in OVERLAYS.items():
        got = report[name]
        assert set(got["trainable"]) == trainable, name
        assert got["loss"] == loss, name
        assert got["max_epochs"] == 1, name  # ran at the test's budget, not the recipe's
        aux = loss != "DiceCELoss"
        assert got["train_inferer"] == ("AuxOutputInferer" if aux else "SimpleInferer"), name
        assert ("DualLossEpochHandler" in got["handlers"]) == (loss == "DualStageLoss"), name
        # model.pt holds exactly the network inference.yaml + the overlay builds
        parser = ConfigParser()
        parser.read_config(overlay_files(bundle, name, "inference.yaml"))
        parser.update({**TINY, **DATA[bundle], "bundle_root": str(tmp_path / name)})
        net = parser.get_parsed_content("network_def")
        state = torch.load(tmp_path / name / "models" / "model.pt", map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
        assert set(state) == set(net.state_dict())
        assert (len(net.levels), net.lora_rank, net.decoder, net.backbone) == (n_levels, rank, decoder, backbone), name
        pred = nib.load(str(tmp_path / name / "pred" / image.name.replace(".nii.gz", "_seg.nii.gz")))
        assert pred.shape == reference.shape and np.allclose(pred.affine, reference.affine), name
    recipes = {k: v["recipe"] for k, v in report.items()}
    assert recipes["hsam"] == {"learning_rate": 0.0025, "epochs": 1, "img_size": 32, "seed": 2345}
    assert recipes["hsam_la4"]["learning_rate"] == 0.0028 and recipes["hsam_promise3"]["learning_rate"] == 0.0026
    assert recipes["samed"]["learning_rate"] == 0.005 and recipes["hsamora"]["learning_rate"] == 0.0025


@pytest.mark.parametrize("bundle", BUNDLES)
@pytest.mark.parametrize("level", ["image", "patch", "pixel"])
def test_stage1_overlays_layer_on_the_student_workflows(bundle, level, tmp_path):
    """sam2.yaml and ablations/rank_8.yaml also set up stage 1 (the experts must match the stage-2 network)."""
    configs = bundle_dir(bundle) / "configs"
    size = {"samora_synapse": 224, "samora_la": 512}[bundle]  # img_size is a dataset key (H-SAM's LA value: 512)
    for overlay, expected in (("sam2.yaml", ("sam2", "hiera_t", 224, 4)), ("ablations/rank_8.yaml", ("sam", "vit_b",
                                                                                                        size, 8))):
        parser = ConfigParser()
        parser.read_config([str(configs / f) for f in ("pretrain.yaml", f"pretrain_{level}.yaml", overlay)])
        parser["bundle_root"] = str(tmp_path)
        got = (parser.get("network_def#backbone", "sam"),
               *(parser.get_parsed_content(f"network_def#{k}") for k in ("variant", "img_size", "lora_rank")))
        assert got == expected, overlay
        checkpoint = parser.get_parsed_content("sam_checkpoint")
        assert checkpoint.endswith("/models/sam2.1_hiera_tiny.pt" if overlay == "sam2.yaml" else "sam_vit_b_01ec64.pth")
