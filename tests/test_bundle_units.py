"""Bundle helpers and in-process bundle workflows (tiny SAM, generated volumes): LR schedule, datalists, resume
files, ConfigWorkflow properties, and bad-input errors with no partial predictions (data writers: conftest.py)."""

from __future__ import annotations

import inspect
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from samora_monai.data.bundle_data import datalist_section, find_images, load_datalist
from samora_monai.engines import expert_files, latest_checkpoint
from samora_monai.networks import SamoraNet
from samora_monai.optimizers import warmup_poly_lr
from samora_monai.utils import as_bool, bundle_dir

AFFINE = np.array([[-0.8, 0, 0, 20.0], [0, 0.8, 0, -15.0], [0, 0, 2.5, 30.0], [0, 0, 0, 1]])


def chain_text(exc: BaseException) -> str:
    """Messages of an exception and every cause, as the traceback shows them."""
    parts = []
    while exc is not None:
        parts.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------------------- helpers


def test_warmup_poly_lr_follows_samora_schedule():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    sched = warmup_poly_lr(opt, max_iters=10, warmup_iters=4, power=0.9)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.01 * (i + 1) / 4 for i in range(4)] + [0.01 * (1 - (i - 4) / 6) ** 0.9 for i in range(4, 10)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-6)
    assert lrs[3] == pytest.approx(0.01) and lrs[-1] < 0.0025
    with pytest.raises(ValueError, match="max_iters"):
        warmup_poly_lr(opt, max_iters=0)


def test_as_bool_parses_cli_strings():
    assert as_bool("true") and as_bool("True") and as_bool(True) and as_bool(1)
    assert not as_bool("false") and not as_bool("False") and not as_bool(False)
    with pytest.raises(ValueError, match="maybe"):
        as_bool("maybe")


def test_datalists_sections_and_fallbacks(tmp_path, write_json_datalist, write_nifti_cases):
    items = write_nifti_cases(tmp_path / "d", n=2)
    slices = [{**items[0], "slices": [1, 2]}]
    path = write_json_datalist(tmp_path / "dl.json", training=slices, testing=items[1:])
    data = load_datalist(path)
    assert data["validation"] == [] and data["training"][0]["slices"] == [1, 2]
    val = datalist_section(data, ["validation", "training"], keys=["image", "label"])
    assert val == [{"image": items[0]["image"], "label": items[0]["label"]}]
    assert datalist_section(data, "testing") == items[1:]
    with pytest.raises(ValueError, match="no items"):
        datalist_section(data, "unlabeled")
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_datalist(tmp_path / "nope.json")
    with pytest.raises(ValueError, match="unknown setting"):
        load_datalist(None, tmp_path, "acdc")
    msd = load_datalist(None, tmp_path / "d", "btcv")
    assert [Path(d["image"]).name for d in msd["training"]] == ["img0001.nii.gz", "img0002.nii.gz"]


def test_find_images(tmp_path, write_nifti_cases):
    items = write_nifti_cases(tmp_path, n=2)
    assert find_images(tmp_path / "imagesTr") == [d["image"] for d in items]
    assert find_images(items[0]["image"]) == [items[0]["image"]]
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        find_images(tmp_path / "missing.nii.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        find_images(tmp_path / "empty")


def test_latest_checkpoint_and_expert_files(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for e in (2, 10, 9):
        (tmp_path / f"latest_checkpoint_epoch={e}.pt").write_bytes(b"x")
    assert latest_checkpoint(tmp_path).endswith("latest_checkpoint_epoch=10.pt")
    (tmp_path / "image.pt").write_bytes(b"x")
    (tmp_path / "pixel.pt").write_bytes(b"x")
    assert expert_files(tmp_path) == {"image": str(tmp_path / "image.pt"), "pixel": str(tmp_path / "pixel.pt")}


# ------------------------------------------------------------------------------------------ in-process workflows


@pytest.fixture(scope="session", name="workflow")
def workflow_fixture(tiny):
    """``workflow(bundle, files, workflow_type, **override)``: the bundle's ``ConfigWorkflow`` with the tiny
    overrides under ``override``."""

    def workflow(bundle: str, files: list[str], workflow_type: str, **override) -> ConfigWorkflow:
        configs = bundle_dir(f"samora_{bundle}") / "configs"
        return ConfigWorkflow(
            workflow_type=workflow_type,
            config_file=[str(configs / f) for f in files],
            meta_file=str(configs / "metadata.json"),
            logging_file=str(configs / "logging.conf"),
            **{**tiny, **override},
        )

    return workflow


@pytest.fixture(scope="module")
def synapse_root(tmp_path_factory, write_json_datalist, write_nifti_cases):
    """Bundle root with a random tiny model.pt and a BTCV-style dataset."""
    root = tmp_path_factory.mktemp("bundle")
    items = write_nifti_cases(root / "data", n=4)
    (root / "models").mkdir()
    net = SamoraNet(num_classes=8, variant="tiny", img_size=64, random_init=True)
    torch.save(net.state_dict(), root / "models" / "model.pt")
    datalist = write_json_datalist(root / "datalist.json", training=items[:2], validation=items[2:3],
                                   testing=items[3:])
    return root, items, datalist


@pytest.mark.parametrize("bundle", ["synapse", "la"])
def test_check_properties_train_and_infer(bundle, synapse_root, workflow, write_json_datalist, write_msd_heart):
    root, items, datalist = synapse_root
    common = {"bundle_root": str(root), "datalist": datalist}
    if bundle == "la":
        la_items = write_msd_heart(root / "msd", n=2)
        common["datalist"] = write_json_datalist(root / "la.json", training=la_items[:1], validation=la_items[1:])
    train = workflow(bundle, ["train.yaml"], "train", **common)
    train.initialize()
    assert train.check_properties() == []
    run = train.parser["run"]
    assert train.parser["training"] == run and len(run) == 1 and run[0].endswith("trainer.run()")
    assert train.parser.get_parsed_content("train#trainer#max_epochs") == 1
    iters_per_epoch = len(train.parser.get_parsed_content("train#dataloader"))
    assert train.parser.get_parsed_content("lr_scheduler#max_iters") == iters_per_epoch
    # MONAI Label sets train#trainer#max_epochs, not epochs: the LR schedule must follow it
    longer = workflow(bundle, ["train.yaml"], "train", **common, **{"train#trainer#max_epochs": 3})
    longer.initialize()
    assert longer.parser.get_parsed_content("lr_scheduler#max_iters") == 3 * iters_per_epoch
    infer = workflow(bundle, ["inference.yaml"], "infer", bundle_root=str(root), input_images=items[0]["image"])
    infer.initialize()
    assert infer.check_properties() == []
    evaluate = workflow(bundle, ["train.yaml", "evaluate.yaml"], "train", **common)
    evaluate.initialize()
    assert evaluate.parser["evaluating"] == evaluate.parser["run"]
    assert evaluate.parser["run"][0].endswith("evaluator.run()")


@pytest.mark.parametrize("bundle", ["synapse", "la"])
def test_monailabel_drops_the_prediction_saver(bundle, tmp_path):
    """MONAI Label's BundleInferTask filters its default ``post_filter`` classes out of ``postprocessing``: our
    saver must be among them, or every /infer/ request writes a file into the installed bundle."""
    bundle_task = pytest.importorskip("monailabel.tasks.infer.bundle", reason="MONAI Label extra not installed")
    task = bundle_task.BundleInferTask
    post_filter = inspect.signature(task.__init__).parameters["post_filter"].default
    configs = bundle_dir(f"samora_{bundle}") / "configs"
    for files, post_id in (
        (["inference.yaml"], "postprocessing"),
        (["train.yaml", "evaluate.yaml"], "validate#postprocessing"),
    ):
        parser = ConfigParser()
        parser.read_config([str(configs / f) for f in files])
        parser["bundle_root"] = str(tmp_path)
        parser["save_predictions"] = True  # evaluate.yaml; samora_la's default is false
        transforms = list(parser.get_parsed_content(post_id).transforms)
        names = [type(t).__name__ for t in transforms]
        assert names == ["Activationsd", "AsDiscreted", "SaveLabelVolumed"], (files, names)
        kept = task._filter_transforms(None, transforms, post_filter)  # does not use self
        assert [type(t).__name__ for t in kept] == ["Activationsd", "AsDiscreted"], files


def _run_expect_error(workflow: ConfigWorkflow, *fragments: str) -> str:
    workflow.initialize()
    with pytest.raises(Exception) as info:  # noqa: B017 - the message is what matters
        workflow.run()
    text = chain_text(info.value)
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in:\n{text}"
    return text


def _assert_no_outputs(folder: Path, bad_stem: str) -> None:
    files = [p.name for p in folder.rglob("*")] if folder.exists() else []
    assert not [f for f in files if f.startswith(".tmp") or bad_stem in f], files


def test_inference_bad_inputs_name_the_file_and_leave_no_prediction(synapse_root, tmp_path, workflow):
    root, items, _ = synapse_root
    out = tmp_path / "pred"
    missing = tmp_path / "img_missing.nii.gz"
    corrupt = tmp_path / "img_corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b\x08\x00 not really a nifti")
    flat = tmp_path / "img_flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((48, 48), np.int16), np.eye(4)), flat)
    cases = [(missing, "file not found"), (corrupt, "cannot read image file"), (flat, "expected a 3D volume")]
    for path, problem in cases:
        wf = workflow("synapse", ["inference.yaml"], "infer", bundle_root=str(root), output_dir=str(out),
                       input_images=[str(path)])  # fmt: skip
        _run_expect_error(wf, str(path), problem)
        _assert_no_outputs(out, path.name.split(".")[0])


def test_evaluation_bad_labels_name_the_file_and_leave_no_prediction(
    synapse_root, tmp_path, phantom, workflow, write_json_datalist
):
    root, items, _ = synapse_root
    image, label = phantom(7, (1, 6, 11))
    data = tmp_path / "data"
    data.mkdir()
    img, short, raw = data / "img0007.nii.gz", data / "label0007_short.nii.gz", data / "label0007_raw.nii.gz"
    nib.save(nib.Nifti1Image(image.astype(np.int16), AFFINE), img)
    nib.save(nib.Nifti1Image(label[..., :5], AFFINE), short)
    nib.save(nib.Nifti1Image(label, AFFINE), raw)
    cases = [
        (short, {}, "does not match image shape"),
        (raw, {"label_mapping": None}, "expected 0..8"),  # raw BTCV id 11 without the 13 -> 8 mapping
    ]
    for lab, extra, problem in cases:
        datalist = write_json_datalist(tmp_path / "dl.json", testing=[{"image": str(img), "label": str(lab)}])
        out = tmp_path / f"eval_{lab.name.split('.')[0]}"
        wf = workflow("synapse", ["train.yaml", "evaluate.yaml"], "train", bundle_root=str(root),
                       datalist=datalist, output_dir=str(out), **extra)  # fmt: skip
        _run_expect_error(wf, str(lab), problem)
        _assert_no_outputs(out, "img0007")


def test_network_def_takes_expert_files_and_sam_checkpoint_from_models(tmp_path, tiny):
    from monai.bundle import ConfigParser

    from samora_monai.networks import save_expert

    def build(**override):
        parser = ConfigParser()
        parser.read_config(str(bundle_dir("samora_synapse") / "configs" / "train.yaml"))  # inference: model.pt only
        parser.update({**tiny, "bundle_root": str(tmp_path), **override})
        return parser.get_parsed_content("network_def")

    source = SamoraNet(num_classes=8, variant="tiny", img_size=64, random_init=True)
    block = source.samora_blocks[0].lora.experts["image"]
    with torch.no_grad():
        for p in block.parameters():
            p.fill_(0.5)
    save_expert(source, "image", str(tmp_path / "models" / "experts" / "image.pt"))
    net = build()
    loaded = net.samora_blocks[0].lora.experts["image"]
    assert all(torch.all(p == 0.5) for p in loaded.parameters())
    save_expert(SamoraNet(8, variant="tiny", img_size=32, random_init=True), "image",
                str(tmp_path / "models" / "experts" / "image.pt"))  # fmt: skip
    with pytest.raises(Exception) as info:  # noqa: B017
        build()
    assert "img_size" in chain_text(info.value) and "image.pt" in chain_text(info.value)
    (tmp_path / "models" / "experts" / "image.pt").unlink()
    with pytest.raises(Exception) as info:  # noqa: B017
        build(random_init=False)
    assert "sam_vit_b_01ec64.pth" in chain_text(info.value)
