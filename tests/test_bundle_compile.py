"""The bundles' ``compile`` option through the real MONAI CLI: a stage-2 training run and an inference run with
``--compile true`` give a model.pt with the eager run's keys and the eager run's predictions. Dynamo traces the real
network; the backend is ``aot_eager`` (forward and backward graphs, no C++ code generation: inductor needs about
10 min per graph on the shared 2-core CPU; its logits equal eager's in test_acceleration.py, marked slow)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

COMPILED = {"compile": True, "compile_kwargs": {"backend": "aot_eager"}}
FALLBACK = "torch.compile failed"
WRAPPED = "SamoraNet runs through torch.compile({'backend': 'aot_eager'})"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, bundle_cli, write_json_datalist, write_nifti_cases):
    """An eager and a compiled 1-epoch training run of samora_synapse on the same 3 NIfTI volumes."""
    work = tmp_path_factory.mktemp("compile")
    items = write_nifti_cases(work / "data", n=3)
    datalist = write_json_datalist(work / "datalist.json", training=items[:2], validation=items[2:])
    logs = {}
    for name, extra in (("eager", {}), ("compiled", COMPILED)):
        result = bundle_cli("synapse", ["run", "training"], ["train.yaml"],
                            {"bundle_root": str(work / name), "datalist": datalist, **extra}, cwd=work)  # fmt: skip
        logs[name] = result.stdout + result.stderr
    return work, items, logs


def test_compiled_training_saves_the_plain_network_keys(runs, assert_model_loads):
    work, _, logs = runs
    assert WRAPPED in logs["compiled"] and WRAPPED not in logs["eager"]
    assert FALLBACK not in logs["compiled"], "the compiled run fell back to eager"
    assert "Epoch: 1/1" in logs["compiled"] and "val_mean_dice" in logs["compiled"]  # trained and validated
    eager, compiled = (torch.load(work / n / "models" / "model.pt", weights_only=True) for n in ("eager", "compiled"))
    assert list(compiled) == list(eager)  # no "_orig_mod." / "network." prefixes
    assert_model_loads("synapse", work / "compiled")
    # the same seeded start and data order: the compiled training steps are the eager ones
    diffs = {k: (compiled[k].float() - eager[k].float()).abs().max().item() for k in eager}
    print("max |compiled - eager| over the state dict:", max(diffs.values()))
    assert max(diffs.values()) < 1e-3, sorted(diffs.items(), key=lambda kv: -kv[1])[:5]


def test_compiled_inference_predicts_as_eager(runs, tmp_path, bundle_cli):
    work, items, _ = runs
    preds = {}
    for name, extra in (("eager", {}), ("compiled", COMPILED)):
        out = tmp_path / name
        result = bundle_cli("synapse", ["run"], ["inference.yaml"],
                            {"bundle_root": str(work / "eager"), "input_images": str(work / "data" / "imagesTr"),
                             "output_dir": str(out), **extra}, cwd=tmp_path)  # fmt: skip
        log = result.stdout + result.stderr
        assert (WRAPPED in log) == bool(extra) and FALLBACK not in log, log[-2000:]
        preds[name] = {p.name: np.asarray(nib.load(p).dataobj) for p in sorted(out.glob("*_seg.nii.gz"))}
    assert sorted(preds["eager"]) == [f"img000{i}_seg.nii.gz" for i in (1, 2, 3)]
    assert preds["compiled"].keys() == preds["eager"].keys()
    for name, label in preds["eager"].items():
        np.testing.assert_array_equal(preds["compiled"][name], label, err_msg=name)
    assert len({int(v) for label in preds["eager"].values() for v in np.unique(label)}) > 1  # not all background
