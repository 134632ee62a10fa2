"""The bundle's protocol: model.pt without labels outside the training budget, experts required in stage 2, a full
model.pt loaded at inference without warnings, the transunet evaluation protocol, and runs that fail with their
reason as the last line."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
import torch
from monai.bundle import ConfigWorkflow

from samora_monai.engines import latest_checkpoint
from samora_monai.inferers import TransUNetSliceInferer


def _workflow(bundles, files, workflow_type="train", **overrides) -> ConfigWorkflow:
    configs = bundles["synapse"] / "configs"
    wf = ConfigWorkflow(config_file=[str(configs / f) for f in files], workflow_type=workflow_type,
                        logging_file=False, **overrides)
    wf.initialize()
    return wf


def _run(bundles, files, workflow_type="train", **overrides) -> ConfigWorkflow:
    wf = _workflow(bundles, files, workflow_type, **overrides)
    wf.run()
    wf.finalize()
    return wf


def _state(path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("model", state) if isinstance(state.get("model"), dict) else state


@pytest.fixture(scope="module")
def cases(tmp_path_factory, write_nifti_cases):
    """Three BTCV-style cases (raw ids 1, 6, 11: classes 1, 5, 8 under the Synapse mapping)."""
    return write_nifti_cases(tmp_path_factory.mktemp("cases"), ids=(1, 6, 11), n=3)


@pytest.fixture(scope="module")
def last_epoch_run(tmp_path_factory, bundles, tiny, cases, write_json_datalist):
    """A 2-epoch stage-2 run whose datalist has no validation section (the 10%-style setting)."""
    root = tmp_path_factory.mktemp("last_epoch")
    datalist = write_json_datalist(root / "datalist.json", training=cases[:2], testing=cases[2:])
    with _LogRecords() as records:
        _run(bundles, ["train.yaml"], **{**tiny, "epochs": 2}, bundle_root=str(root), datalist=datalist)
    return root, datalist, records


class _LogRecords(logging.Handler):
    """Collects the package's messages logged while active (module-scoped fixtures cannot use caplog)."""

    def __enter__(self):
        self.messages: list[str] = []
        package = logging.getLogger("samora_monai")
        self.level = package.level
        package.addHandler(self)
        package.setLevel(logging.INFO)
        return self.messages

    def __exit__(self, *exc):
        logging.getLogger("samora_monai").removeHandler(self)
        logging.getLogger("samora_monai").setLevel(self.level)

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_model_pt_is_the_last_epoch_network_without_validation_section(last_epoch_run):
    root, _, messages = last_epoch_run
    final = latest_checkpoint(root / "models" / "checkpoints")
    assert final.endswith("epoch=2.pt")
    model, last = _state(root / "models" / "model.pt"), _state(final)
    assert model.keys() == last.keys()
    assert all(torch.equal(model[k], last[k]) for k in model)
    assert any("to log fitting only" in m for m in messages), messages
    assert any("ABLATION (allow_missing_experts: true)" in m for m in messages)  # the no-stage-1 run says so
    meta = json.loads((root / "models" / "model_meta.json").read_text())
    info = meta["training"]
    assert meta["random_init"] and info["ablation"].startswith("no stage 1") and info["stage1_experts"] == {}
    assert info["model_selection"] == "last epoch" and info["fusion"] == "hl_attn"


def test_validation_overlapping_training_is_refused(tmp_path, bundles, tiny, cases, write_json_datalist):
    datalist = write_json_datalist(tmp_path / "datalist.json", training=cases[:2], validation=cases[1:2],
                                   testing=cases[2:])
    with pytest.raises(Exception) as err:
        _run(bundles, ["train.yaml"], **tiny, bundle_root=str(tmp_path), datalist=datalist)
    text = "".join(str(e) for e in _chain(err.value))
    assert "'validation' section overlaps the training items or the test split" in text
    assert os.path.basename(cases[1]["image"]) in text
    assert not (tmp_path / "models" / "model.pt").exists()


def _chain(exc: BaseException) -> list[BaseException]:
    out = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def test_best_model_is_not_replaced_by_a_worse_score_after_resume(tmp_path, bundles, tiny, cases, write_json_datalist):
    datalist = write_json_datalist(tmp_path / "datalist.json", training=cases[:1], validation=cases[1:2],
                                   testing=cases[2:])
    common = {**tiny, "bundle_root": str(tmp_path), "datalist": datalist}
    _run(bundles, ["train.yaml"], **common)
    model = tmp_path / "models" / "model.pt"
    ckpt = latest_checkpoint(tmp_path / "models" / "checkpoints")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    (score, name), = state["best_model"]["_saved"]  # the best score so far is part of the resume state
    assert name.startswith("model") and 0.0 <= score <= 1.0
    state["best_model"]["_saved"] = [(2.0, name)]  # a best score no epoch can beat
    torch.save(state, ckpt)
    before = model.read_bytes()
    _run(bundles, ["train.yaml"], **{**common, "epochs": 2})
    assert latest_checkpoint(tmp_path / "models" / "checkpoints").endswith("epoch=2.pt")  # it did train epoch 2
    assert model.read_bytes() == before


def test_stage2_without_experts_stops_naming_folder_and_command(tmp_path, bundles, tiny, cases, write_json_datalist):
    datalist = write_json_datalist(tmp_path / "datalist.json", training=cases[:2], testing=cases[2:])
    with pytest.raises(Exception) as err:
        _run(bundles, ["train.yaml"], **{**tiny, "allow_missing_experts": False}, bundle_root=str(tmp_path),
             datalist=datalist)
    text = "".join(str(e) for e in _chain(err.value))
    assert f"missing in {tmp_path / 'models' / 'experts'}" in text
    assert "configs/pretrain_<name>.yaml" in text and "--allow_missing_experts true" in text
    assert not (tmp_path / "models").exists()


def test_inference_loads_the_experts_of_model_pt_without_warning(last_epoch_run, bundles, tiny, cases, caplog):
    root, _, _ = last_epoch_run
    state = _state(root / "models" / "model.pt")
    experts = {k: torch.randn_like(v) for k, v in state.items() if ".experts." in k}
    assert experts, "the tiny network has LoRA experts"
    full = root / "models" / "model_full.pt"
    torch.save({**state, **experts}, full)
    with caplog.at_level(logging.INFO):
        wf = _run(bundles, ["inference.yaml"], "infer", **tiny, bundle_root=str(root), checkpoint=str(full),
                  input_images=cases[2]["image"], output_dir=str(root / "pred"))
    loaded = wf.parser.get_parsed_content("network").state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in experts.items())
    assert "zero initialisation" not in caplog.text and "no stage-1 expert" not in caplog.text
    assert len(list((root / "pred").glob("*_seg.nii.gz"))) == 1


def test_evaluate_runs_the_transunet_protocol_on_a_decathlon_datalist(last_epoch_run, bundles, tiny, cases,
                                                                      write_json_datalist):
    """Decathlon layout: unlabeled `testing` items are skipped, the labelled `validation` case is evaluated."""
    root, _, _ = last_epoch_run
    datalist = write_json_datalist(root / "decathlon.json", training=cases[:2], validation=cases[2:],
                                   testing=[{"image": c["image"]} for c in cases])
    out = root / "eval_transunet"
    wf = _workflow(bundles, ["train.yaml", "evaluate.yaml"], "eval", **tiny, bundle_root=str(root),
                   datalist=datalist, protocol="transunet", output_dir=str(out))
    assert isinstance(wf.parser.get_parsed_content("validate#inferer"), TransUNetSliceInferer)
    wf.run()
    report = json.loads((out / "metrics_transunet.json").read_text())
    assert report["provenance"]["protocol"] == "transunet"
    assert len(list((out / "predictions").glob("*_seg.nii.gz"))) == 1  # the one testing case


def _cli(args, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "monai.bundle", "run", "training", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _args(overrides: dict) -> list[str]:
    return [a for k, v in overrides.items() for a in (f"--{k}", str(v))]


@pytest.mark.slow
def test_cli_null_overrides_and_failure_reason_as_last_line(tmp_path, bundles, tiny, write_nifti_cases):
    """README's `--datalist null --label_mapping null --resume_checkpoint null` through the real CLI; a stage 2 without
    experts ends with its reason as the last line."""
    data = tmp_path / "data"
    write_nifti_cases(data, ids=(1, 5, 7), n=2)  # labels the BTCV mapping would change
    root = tmp_path / "bundle"
    (root / "models" / "checkpoints").mkdir(parents=True)
    (root / "models" / "checkpoints" / "latest_checkpoint_epoch=3.pt").write_bytes(b"not a checkpoint")
    config = ["--config_file", str(bundles["synapse"] / "configs" / "train.yaml")]
    common = {**tiny, "bundle_root": root, "dataset_dir": data, "setting": "btcv", "datalist": "null",
              "label_mapping": "null"}
    done = _cli([*config, *_args({**common, "resume_checkpoint": "null"})], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (root / "models" / "model.pt").is_file()
    # started afresh (loading the stale file would have failed), and the stale file was pruned
    assert os.listdir(root / "models" / "checkpoints") == ["latest_checkpoint_epoch=1.pt"]
    failed = _cli([*config, *_args({**common, "resume_checkpoint": "null", "allow_missing_experts": False})], tmp_path)
    assert failed.returncode != 0
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("samora_monai: run failed: FileNotFoundError: stage 2 needs the stage-1 experts"), last
    assert str(root / "models" / "experts") in last


def test_selection_and_leakage_defaults(tmp_path):
    """Published settings exclude their own test split, a datalist JSON none; validation items are the training
    volumes (once each) without a validation section, refused when they are test cases."""
    from samora_monai.data.bundle_data import published_test_splits, selects_model, validation_items

    assert published_test_splits(None, "synapse_10pct") == ["synapse_test"]
    assert published_test_splits("null", "promise12_3scans") == ["promise12_test"]
    assert published_test_splits(str(tmp_path / "dl.json"), "synapse_full") == [] == published_test_splits(None, "btcv")
    a, b, c = ({"image": f"/d/img000{i}.nii.gz", "label": f"/d/label000{i}.nii.gz"} for i in (1, 2, 3))
    slices = [{**a, "slices": [1]}, {**a, "slices": [2]}, {**b, "slices": [0]}]
    assert validation_items({"training": slices, "testing": [c]}) == [a, b]
    assert not selects_model({"training": slices, "validation": []})
    assert validation_items({"training": [a], "validation": [b], "testing": [c]}) == [b]
    with pytest.raises(ValueError, match="img0003.nii.gz"):
        validation_items({"training": [a], "validation": [c], "testing": [c]})
    with pytest.raises(ValueError, match="synapse_test"):  # case 1 is a published Synapse test case
        validation_items({"training": [b], "validation": [a]}, ["synapse_test"])


def test_loss_resolution_and_stage1_modality_message(tmp_path):
    from samora_monai.engines import unlabeled_dataset
    from samora_monai.losses import LowResLoss, segmentation_loss, stage2_loss

    loss = segmentation_loss()
    assert stage2_loss(loss, "full") is loss and isinstance(stage2_loss(loss, "low"), LowResLoss)
    with pytest.raises(ValueError, match="full"):
        stage2_loss(loss, "half")
    path = tmp_path / "unlabeled_datalist.json"
    path.write_text(json.dumps({"settings": {"modality": "mr"}, "training": []}))
    with pytest.raises(ValueError, match="pass --modality mr to the workflow"):
        unlabeled_dataset(path, modality="ct")


def test_find_images_takes_dicom_series_folders(tmp_path):
    from samora_monai.data.bundle_data import find_images

    series = [tmp_path / "study" / name for name in ("s2", "s1")]
    for folder in series:
        folder.mkdir(parents=True)
        (folder / "0001.dcm").write_bytes(b"")  # found by suffix; the reader checks the content
    assert find_images(series[0]) == [str(series[0])]  # one series folder
    assert find_images(tmp_path / "study") == sorted(str(s) for s in series)  # a folder of series folders
    (tmp_path / "study" / "img.nii.gz").write_bytes(b"")
    assert find_images(tmp_path / "study") == [str(tmp_path / "study" / "img.nii.gz")]  # NIfTI files win


@pytest.mark.parametrize("workflow", ["pretrain_teacher_image", "pretrain_teacher_patch"])
def test_teacher_configs_take_pretrained_weights(bundles, workflow, tmp_path):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    configs = bundles["la"] / "configs"
    parser.read_config([str(configs / "pretrain.yaml"), str(configs / f"{workflow}.yaml")])
    assert parser.get_parsed_content("network_def#pretrained") is None  # random start by default
    parser["teacher_pretrained"] = str(tmp_path / "weights.pth")
    assert parser.get_parsed_content("network_def#pretrained") == str(tmp_path / "weights.pth")
