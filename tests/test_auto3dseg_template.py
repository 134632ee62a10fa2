"""The samora Auto3DSeg template: derived settings (fast) and the offline DataAnalyzer -> BundleGen -> train -> score
-> ensemble chain and AutoRunner end to end (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import yaml
from monai.data import create_test_image_3d

from samora_monai.auto3dseg import ALGO_NAME, derive_hyper_parameters, get_template_path
from samora_monai.auto3dseg.settings import in_plane_size, slice_axis_from_spacing

SHAPE = (32, 28, 8)
SPACING = (1.0, 1.0, 3.0)
# tiny settings for every training run: 2 epochs of a few slice batches, the tiny random backbone at 32x32, on CPU;
# warmup_iters is a key of the bundle's train.yaml (it reaches the bundle through bundle_overrides)
TRAIN_PARAMS = {
    "num_epochs": 2,
    "num_images_per_batch": 8,
    "variant": "tiny",
    "random_init": True,
    "num_workers": 0,
    "warmup_iters": 1,
    "slice_batch_size": 8,
    "device": "cpu",
}
ABLATION = {"allow_missing_experts": True}  # no stage 1: keeps the BundleGen test fast (ssl: run has its own test)


def _stats(labels=(0, 1, 2), shape=(512, 512, 90), spacing=(0.8, 0.8, 3.0), channels=1, p=(-90.0, 260.0)) -> dict:
    return {
        "stats_summary": {
            "n_cases": 4,
            "label_stats": {"labels": list(labels)},
            "image_stats": {
                "shape": {"max": list(shape)},
                "spacing": {"median": list(spacing)},
                "channels": {"max": channels},
            },
            "image_foreground_stats": {"intensity": {"percentile_00_5": p[0], "percentile_99_5": p[1]}},
        }
    }


def test_derive_ct_anisotropic():
    out = derive_hyper_parameters(_stats(), "CT")
    assert out["output_classes"] == 3 and out["input_channels"] == 1 and out["modality"] == "ct"
    assert out["intensity_window"] == [-90.0, 260.0]
    assert out["slice_axis"] == 2 and out["img_size"] == 224 and out["n_cases"] == 4


def test_derive_mr_sagittal_small():
    out = derive_hyper_parameters(_stats(shape=(20, 40, 37), spacing=(4.0, 1.0, 1.0)), "mri", max_img_size=64)
    assert out["modality"] == "mr" and out["percentiles"] == [0.5, 99.5]
    assert out["slice_axis"] == 0 and out["img_size"] == 48  # in-plane 40 x 37 -> 48 (multiple of 16)


def test_settings_rules_and_errors():
    assert slice_axis_from_spacing((1.0, 1.0, 1.2)) == 2
    assert slice_axis_from_spacing((0.7, 5.0, 0.7)) == 1
    assert in_plane_size((1000, 800, 10), 2, max_img_size=224) == 224
    assert in_plane_size((17, 3, 10), 2) == 32
    with pytest.raises(ValueError, match="modality"):
        derive_hyper_parameters(_stats(), "pet")
    with pytest.raises(ValueError, match="channels"):
        derive_hyper_parameters(_stats(channels=2), "ct")
    with pytest.raises(ValueError, match="foreground"):
        derive_hyper_parameters(_stats(labels=(0,)), "ct")
    with pytest.raises(KeyError, match="label_stats"):
        derive_hyper_parameters({"stats_summary": {}}, "ct")


def test_template_path_layout():
    path = get_template_path()
    root = os.path.join(path, ALGO_NAME)
    for rel in ("configs/hyper_parameters.yaml", "scripts/algo.py", "scripts/train.py", "scripts/infer.py"):
        assert os.path.isfile(os.path.join(root, rel)), rel
    with open(os.path.join(root, "configs", "hyper_parameters.yaml")) as f:
        cfg = yaml.safe_load(f)
    assert cfg["ckpt_path"] == "$@bundle_root + '/model_fold' + str(@fold)" and cfg["ssl"] == "run"
    # the recipe lives in the bundle: hyper_parameters.yaml restates none of it
    for key in ("learning_rate", "weight_decay", "warmup_iters", "lambda_dice", "epochs", "batch_size"):
        assert key not in cfg, key


def _make_data(root, **extra) -> tuple[str, str]:
    """5 labelled 32x28x8 volumes (2 classes, folds 0/1) and the input config (plus ``extra`` keys); returns
    (input yaml, test image)."""
    root = str(root)
    os.makedirs(os.path.join(root, "data"), exist_ok=True)
    items = []
    for i in range(5):
        image, label = create_test_image_3d(
            *SHAPE, num_objs=4, rad_max=3, rad_min=2, num_seg_classes=2, noise_max=0.1,
            random_state=np.random.RandomState(i),
        )  # fmt: skip
        affine = np.diag([*SPACING, 1.0])
        nib.save(nib.Nifti1Image(image.astype(np.float32) * 400 - 100, affine), f"{root}/data/img{i}.nii.gz")
        nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), f"{root}/data/lab{i}.nii.gz")
        items.append({"image": f"img{i}.nii.gz", "label": f"lab{i}.nii.gz", "fold": int(i >= 2)})
    datalist = os.path.join(root, "datalist.json")
    with open(datalist, "w") as f:
        json.dump({"training": items, "testing": [{"image": "img4.nii.gz"}]}, f)
    input_yaml = os.path.join(root, "input.yaml")
    with open(input_yaml, "w") as f:
        yaml.safe_dump(
            {"modality": "CT", "dataroot": os.path.join(root, "data"), "datalist": datalist, "name": "tiny", **extra}, f
        )
    return input_yaml, os.path.join(root, "data", "img4.nii.gz")


@pytest.fixture
def offline_python(monkeypatch):
    """Train subprocesses run with this interpreter (Auto3DSeg's default command prefix is a bare ``python``)."""
    monkeypatch.setenv("CMD_PREFIX", sys.executable)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


def _generate(tmp_path, input_yaml) -> list[dict]:
    """DataAnalyzer + BundleGen of the samora template for one fold; returns the BundleGen history."""
    from monai.apps.auto3dseg import BundleGen, DataAnalyzer
    from monai.bundle import ConfigParser

    src = ConfigParser.load_config_file(input_yaml)
    work = tmp_path / "work"
    work.mkdir()
    stats_file = str(work / "datastats.yaml")
    DataAnalyzer(src["datalist"], src["dataroot"], output_path=stats_file, device="cpu", worker=0).get_all_case_stats()

    gen = BundleGen(
        algo_path=str(work),
        templates_path_or_url=get_template_path(),
        algos=[ALGO_NAME],
        data_stats_filename=stats_file,
        data_src_cfg_name=input_yaml,
    )
    gen.generate(str(work), num_fold=1)
    return gen.get_history()


@pytest.mark.slow
def test_bundlegen_train_score_ensemble(tmp_path, offline_python):
    from monai.apps.auto3dseg import AlgoEnsembleBestN, AlgoEnsembleBuilder
    from monai.bundle import ConfigParser

    input_yaml, test_image = _make_data(tmp_path)
    history = _generate(tmp_path, input_yaml)
    assert len(history) == 1
    algo = history[0]["algo_instance"]
    assert history[0]["identifier"] == "samora_0" and type(algo).__name__ == "SamoraAlgo"
    cfg = ConfigParser.load_config_file(os.path.join(algo.get_output_path(), "configs", "hyper_parameters.yaml"))
    assert cfg["output_classes"] == 3 and cfg["modality"] == "ct" and cfg["slice_axis"] == 2
    assert cfg["img_size"] == 32 and cfg["fold"] == 0 and cfg["bundle_root"] == algo.get_output_path()
    lo, hi = cfg["intensity_window"]
    assert -100 <= lo < hi <= 300

    algo.train(train_params={**TRAIN_PARAMS, **ABLATION, "val_interval": 1})
    ckpt = os.path.join(algo.get_output_path(), "model_fold0")
    assert os.path.isfile(os.path.join(ckpt, "model.pt"))
    with open(os.path.join(ckpt, "training.log")) as f:
        log = f.read()
    epoch_lines = [line for line in log.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 2 and all(" loss " in line and "val_mean_dice" in line for line in epoch_lines)
    assert epoch_lines[0].startswith("epoch 1/2") and epoch_lines[1].startswith("epoch 2/2")
    assert "ABLATION (allow_missing_experts: true)" in log
    mask = os.umask(0)
    os.umask(mask)
    for name in ("model.pt", "training.log", "progress.yaml", "datalist_fold0.json"):  # normal, not 0600
        assert os.stat(os.path.join(ckpt, name)).st_mode & 0o777 == 0o666 & ~mask, name
    with open(os.path.join(ckpt, "progress.yaml")) as f:
        progress = yaml.safe_load(f)
    assert [r["epoch"] for r in progress] == [1, 2]  # every validation, not only improvements
    best = max(r["val_mean_dice"] for r in progress)
    assert progress[-1]["best_avg_dice_score"] == pytest.approx(best)
    assert progress[-1]["best_avg_dice_score_epoch"] == [r["epoch"] for r in progress if r["val_mean_dice"] == best][0]
    score = algo.get_score()
    assert 0.0 <= score <= 1.0 and score == progress[-1]["best_avg_dice_score"]
    trained = ConfigParser.load_config_file(os.path.join(algo.get_output_path(), "configs", "hyper_parameters.yaml"))
    assert trained["variant"] == "tiny" and trained["num_epochs"] == 2  # training parameters recorded
    assert trained["bundle_overrides"] == {"warmup_iters": 1}

    prob = algo.predict([test_image])[0]
    assert tuple(prob.shape) == (3, *SHAPE)
    np.testing.assert_allclose(prob.sum(0).numpy(), 1.0, atol=1e-4)
    np.testing.assert_allclose(np.asarray(prob.affine), np.diag([*SPACING, 1.0]), atol=1e-5)

    configs = [os.path.join(algo.get_output_path(), "configs", "hyper_parameters.yaml")]
    validate = os.path.join(algo.get_output_path(), "scripts", "validate.py")
    subprocess.run([sys.executable, validate, "run", f"--config_file={configs}"], check=True)
    with open(os.path.join(ckpt, "validation.yaml")) as f:
        assert yaml.safe_load(f)["mean_dice"] == pytest.approx(score, abs=1e-4)  # same model, same volumes
    with open(os.path.join(ckpt, "validation", "metrics_monai.json")) as f:
        assert json.load(f)["num_cases"] == 2  # fold 0 validates on img0, img1

    # the datalist's testing images through the bundle's inference workflow, then one image through InferClass
    infer = os.path.join(algo.get_output_path(), "scripts", "infer.py")
    subprocess.run([sys.executable, infer, "run", f"--config_file={configs}"], check=True)
    saved_path = os.path.join(algo.get_output_path(), "prediction_testing", "img4_seg.nii.gz")
    batch = nib.load(saved_path).get_fdata()
    os.remove(saved_path)
    mask = algo.get_inferer().infer(test_image, save_mask=True)
    saved = nib.load(saved_path)
    np.testing.assert_array_equal(batch, saved.get_fdata())
    assert tuple(mask.shape) == (1, *SHAPE) and saved.shape == SHAPE
    np.testing.assert_array_equal(saved.get_fdata(), mask[0].numpy())
    np.testing.assert_array_equal(mask[0].numpy(), prob.argmax(0).numpy())

    builder = AlgoEnsembleBuilder(history, input_yaml)
    builder.set_ensemble_method(AlgoEnsembleBestN(n_best=1))
    ensemble = builder.get_ensemble()
    preds = ensemble(pred_param={"infer_files": [test_image]})
    assert len(preds) == 1 and tuple(preds[0].shape) == (1, *SHAPE)
    assert set(np.unique(preds[0].numpy()).tolist()) <= {0, 1, 2}


def _write_experts(folder, variant="tiny", img_size=32) -> str:
    """Expert files image.pt / patch.pt / pixel.pt of a random tiny backbone (non-zero LoRA B, so they count)."""
    import torch

    from samora_monai.networks import SamoraNet
    from samora_monai.networks.expert_io import save_expert

    torch.manual_seed(0)
    net = SamoraNet(num_classes=1, variant=variant, img_size=img_size, random_init=True)
    with torch.no_grad():
        for name, param in net.named_parameters():
            if ".lora.experts." in name:
                param.normal_(0, 0.02)
    os.makedirs(folder, exist_ok=True)
    for level in ("image", "patch", "pixel"):
        save_expert(net, level, os.path.join(folder, f"{level}.pt"))
    return str(folder)


@pytest.mark.slow
def test_autorunner_end_to_end(tmp_path, offline_python):
    from monai.apps.auto3dseg import AutoRunner

    # the backbone and the experts come from the input config's "samora" section (what the CLI uses), the rest from
    # set_training_params: without random_init reaching the template, training would fail for want of a SAM checkpoint
    experts = _write_experts(tmp_path / "experts")
    backbone = {"variant": "tiny", "random_init": True, "expert_dir": experts}
    input_yaml, test_image = _make_data(tmp_path, samora=backbone)
    work = tmp_path / "work"
    runner = AutoRunner(
        work_dir=str(work), input=input_yaml, algos=[ALGO_NAME], templates_path_or_url=get_template_path()
    )
    runner.set_num_fold(1)
    runner.set_analyze_params({"device": "cpu", "worker": 0, "do_ccp": False})
    runner.set_training_params({**{k: v for k, v in TRAIN_PARAMS.items() if k not in backbone}, "num_epochs": 1})
    runner.set_device_info(cuda_visible_devices=[], cmd_prefix=sys.executable)
    runner.run()

    assert os.path.isfile(work / "datastats.yaml")
    with open(work / "samora_0" / "configs" / "hyper_parameters.yaml") as f:
        cfg = yaml.safe_load(f)
    assert cfg["variant"] == "tiny" and cfg["random_init"] is True and cfg["num_epochs"] == 1
    with open(work / "samora_0" / "model_fold0" / "progress.yaml") as f:
        assert 0.0 <= yaml.safe_load(f)[-1]["best_avg_dice_score"] <= 1.0
    with open(work / "samora_0" / "model_fold0" / "training.log") as f:
        assert f"experts from expert_dir {experts}" in f.read()
    out = work / "ensemble_output" / "img4_ensemble.nii.gz"
    assert out.is_file()
    seg = nib.load(str(out))
    assert seg.shape == SHAPE and set(np.unique(seg.get_fdata()).tolist()) <= {0.0, 1.0, 2.0}
    np.testing.assert_allclose(seg.affine, nib.load(test_image).affine, atol=1e-5)


def _template_config(tmp_path, **values) -> str:
    import shutil

    cfg_file = str(tmp_path / "hyper_parameters.yaml")
    shutil.copy(os.path.join(get_template_path(), ALGO_NAME, "configs", "hyper_parameters.yaml"), cfg_file)
    if values:
        with open(cfg_file) as f:
            cfg = yaml.safe_load(f)
        cfg.update(values)
        with open(cfg_file, "w") as f:
            yaml.safe_dump(cfg, f)
    return cfg_file


def test_load_settings_typed_overrides_persist_and_errors(tmp_path, caplog):
    from samora_monai.auto3dseg import load_settings

    cfg_file = _template_config(tmp_path, random_init=True)
    with pytest.raises(ValueError, match="bundle_root"):
        load_settings(cfg_file)
    override = {"bundle_root": "/b", "fold": "2", "variant": "tiny", "img_size": 64, "random_init": "true",
                "learning_rate": 0.01, "no_such_key": 1}  # fmt: skip
    with caplog.at_level("WARNING"):
        settings = load_settings([cfg_file], override, persist=True)
    assert "img_size: the given 64 replaces the value derived from the data (224)" in caplog.text
    assert "no_such_key" in caplog.text
    assert settings.fold == 2 and settings.random_init is True and settings.ssl == "run"  # typed once
    assert settings.ckpt_path == "/b/model_fold2" and settings.infer["ckpt_name"] == "/b/model_fold2/model.pt"
    assert settings.bundle_overrides == {"learning_rate": 0.01}  # a train.yaml key goes to the bundle
    with open(cfg_file) as f:
        saved = yaml.safe_load(f)
    assert saved["variant"] == "tiny" and saved["fold"] == "2" and "no_such_key" not in saved
    assert saved["bundle_overrides"] == {"learning_rate": 0.01}
    assert saved["replaced_derived"] == {"img_size": {"derived": 224, "given": 64}}
    assert os.stat(cfg_file).st_mode & 0o777 == 0o666 & ~_umask()
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_settings(str(tmp_path / "missing.yaml"))
    for bad, match in [({"ssl": "maybe"}, "maybe"), ({"slice_axis": 3}, "3"), ({"random_init": "perhaps"}, "perhaps"),
                       ({"random_init": False}, "sam_checkpoint"), ({"num_epochs": 0}, "num_epochs")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            load_settings(cfg_file, {"bundle_root": "/b", **bad})


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_experts_required_unless_ablation(tmp_path):
    from samora_monai.auto3dseg import load_settings
    from samora_monai.auto3dseg.workflow import _check_experts, expert_folder

    cfg_file = _template_config(tmp_path, random_init=True, bundle_root=str(tmp_path))
    assert expert_folder(load_settings(cfg_file))[0] == str(tmp_path / "model_fold0" / "ssl" / "models" / "experts")
    with pytest.raises(ValueError, match="allow_missing_experts"):
        expert_folder(load_settings(cfg_file, {"ssl": "skip"}))
    assert "ABLATION" in expert_folder(load_settings(cfg_file, {"ssl": "skip", "allow_missing_experts": True}))[1]
    given = expert_folder(load_settings(cfg_file, {"expert_dir": str(tmp_path / "e")}))[0]
    assert given == str(tmp_path / "e")
    with pytest.raises(FileNotFoundError, match="image.pt"):
        _check_experts(given)


def test_ssl_settings_errors(tmp_path):
    from samora_monai.auto3dseg import load_settings
    from samora_monai.auto3dseg.ssl import ssl_overrides
    from samora_monai.utils import bundle_dir

    assert (bundle_dir("samora_synapse") / "configs" / "pretrain_image.yaml").is_file()
    with pytest.raises(FileNotFoundError, match="no_bundle"):
        bundle_dir(str(tmp_path / "no_bundle"))
    cfg_file = _template_config(tmp_path, random_init=True, bundle_root=str(tmp_path))
    settings = load_settings(cfg_file, {"ssl_overrides": {"all": ["--log_interval", 1]}})
    assert ssl_overrides(settings) == {"all": ["--log_interval", "1"]}
    with pytest.raises(ValueError, match="teacher_pixel"):
        ssl_overrides(load_settings(cfg_file, {"ssl_overrides": {"teacher_pixel": []}}))


# tiny stage-1 teachers and heads, as the quick demo uses them
SSL_OVERRIDES = {
    "all": ["--log_interval", "1"],
    "teacher_image": ["--network_def#arch", "resnet18", "--network_def#proj_hidden_dim", "32",
                      "--network_def#proj_dim", "16"],
    "teacher_patch": ["--network_def#hidden_size", "32", "--network_def#mlp_dim", "64", "--network_def#num_layers",
                      "1", "--network_def#num_heads", "2", "--network_def#decoder_hidden_size", "32",
                      "--network_def#decoder_mlp_dim", "64", "--network_def#decoder_num_layers", "1",
                      "--network_def#decoder_num_heads", "2"],
    "expert_image": ["--head#hidden_dim", "32"],
    "expert_patch": ["--head#hidden_dim", "32"],
    "expert_pixel": ["--head#channels", "[16,8,8,8]"],
}  # fmt: skip


@pytest.mark.slow
def test_bundlegen_train_with_ssl_run(tmp_path, offline_python):
    from samora_monai.networks.expert_io import read_expert_file

    # ssl_overrides (a dict) goes through the input config: Auto3DSeg refuses dict-valued training parameters
    input_yaml, _ = _make_data(tmp_path, samora={"ssl_overrides": SSL_OVERRIDES})
    datalist = tmp_path / "datalist.json"
    items = json.loads(datalist.read_text())
    image, _ = create_test_image_3d(*SHAPE, num_objs=4, rad_max=3, rad_min=2, random_state=np.random.RandomState(5))
    nib.save(nib.Nifti1Image(image.astype(np.float32) * 400 - 100, np.diag([*SPACING, 1.0])),
             str(tmp_path / "data" / "img5.nii.gz"))  # fmt: skip
    # an unlabeled volume, and a validation case of fold 0 listed as unlabeled too (it must stay out of stage 1)
    items["unlabeled"] = [{"image": "img5.nii.gz"}, {"image": "img0.nii.gz"}]
    datalist.write_text(json.dumps(items))
    algo = _generate(tmp_path, input_yaml)[0]["algo_instance"]

    algo.train(train_params={**TRAIN_PARAMS, "ssl": "run", "ssl_epochs": 1})
    ssl = os.path.join(algo.get_output_path(), "model_fold0", "ssl")
    with open(os.path.join(ssl, "data", "unlabeled", "unlabeled_datalist.json")) as f:
        sources = sorted(os.path.basename(item["source"]) for item in json.load(f)["training"])
    # fold 0: img0/img1 validate, img2-img4 train, img4 is also the testing case
    assert sources == ["img2.nii.gz", "img3.nii.gz", "img5.nii.gz"]
    for level in ("image", "patch", "pixel"):
        record = read_expert_file(os.path.join(ssl, "models", "experts", f"{level}.pt"))
        assert (record["level"], record["variant"], record["img_size"]) == (level, "tiny", 32)
    for level in ("image", "patch"):
        assert os.path.isfile(os.path.join(ssl, "models", "teachers", f"{level}.pt"))
    assert 0.0 <= algo.get_score() <= 1.0
    with open(os.path.join(algo.get_output_path(), "configs", "hyper_parameters.yaml")) as f:
        assert yaml.safe_load(f)["ssl"] == "run"
