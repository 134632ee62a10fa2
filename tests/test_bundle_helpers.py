"""The package functions that keep the bundle configs short: lazy subpackages (``$import samora_monai`` is the only
import a config needs), the leakage-guarded training items and unlabeled datalist, the resume-checkpoint content,
the recorded stage-2 ablation and the process-group set-up of ``multi_gpu_train.yaml``."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import ignite.distributed as idist
import pytest
import torch
import torch.distributed as dist
from torch import nn

from samora_monai.apps.distributed import init_distributed, is_worker_rank, local_device
from samora_monai.data.bundle_data import checked_unlabeled_datalist, training_items
from samora_monai.engines import stage2_ablation
from samora_monai.handlers import resume_state
from samora_monai.utils import submodule_getattr

LEVELS = ["image", "patch", "pixel"]


def test_import_samora_monai_loads_subpackages_on_first_access():
    code = (
        "import sys, samora_monai\n"
        "before = sorted(m for m in sys.modules if m.startswith('samora_monai.'))\n"
        "f = samora_monai.data.bundle_data.training_items\n"
        "g = samora_monai.apps.bundle_run.guard_run\n"
        "print(before, f.__module__, g.__module__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["['samora_monai.utils']", "samora_monai.data.bundle_data", "samora_monai.apps.bundle_run"]


def test_submodule_getattr_errors(tmp_path, monkeypatch):
    import samora_monai

    with pytest.raises(AttributeError, match="module 'samora_monai' has no attribute 'no_such_module'"):
        samora_monai.no_such_module  # noqa: B018
    with pytest.raises(AttributeError):
        samora_monai._private  # noqa: B018
    # a submodule whose own import fails reports that failure, not a missing attribute
    (tmp_path / "lazy_pkg").mkdir()
    (tmp_path / "lazy_pkg" / "__init__.py").write_text("")
    (tmp_path / "lazy_pkg" / "broken.py").write_text("import not_a_module_anywhere_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="not_a_module_anywhere_xyz"):
        submodule_getattr("lazy_pkg")("broken")


def test_training_items_refuse_test_cases():
    train = [{"image": "/d/img0005.nii.gz", "label": "/d/label0005.nii.gz", "slices": [3]}]
    splits = {"training": train, "testing": [{"image": "/d/img0040.nii.gz"}]}
    assert training_items(splits) == train
    assert training_items(splits, ["synapse_test"]) == train  # case 5 is a Synapse training case
    with pytest.raises(ValueError, match="img0035"):
        training_items({"training": [*train, {"image": "/d/img0035.nii.gz"}]}, ["synapse_test"])
    with pytest.raises(ValueError, match="img0040"):
        training_items({**splits, "training": [*train, {"image": "/d/img0040.nii.gz"}]})
    with pytest.raises(ValueError, match="no items in"):
        training_items({"testing": splits["testing"]})


def test_checked_unlabeled_datalist(tmp_path):
    missing = str(tmp_path / "none.json")
    assert checked_unlabeled_datalist(missing, ["synapse_test"]) == missing  # the dataset reports a missing file
    unlabeled = tmp_path / "unlabeled.json"
    unlabeled.write_text(json.dumps({"training": [{"image": "/s/a.npy", "source": "/d/img0005.nii.gz"}]}))
    assert checked_unlabeled_datalist(unlabeled, ["synapse_test"]) == str(unlabeled)
    assert checked_unlabeled_datalist(unlabeled, ["synapse_test"], "null") == str(unlabeled)
    stage2 = tmp_path / "datalist.json"
    stage2.write_text(json.dumps({"training": [{"image": "/d/img0001.nii.gz", "label": "/d/label0001.nii.gz"}],
                                  "testing": [{"image": "/d/img0005.nii.gz", "label": "/d/label0005.nii.gz"}]}))
    with pytest.raises(ValueError, match=r"unlabeled\.json.*img0005"):
        checked_unlabeled_datalist(unlabeled, [], stage2)
    unlabeled.write_text(json.dumps({"training": [{"image": "/s/b.npy", "source": "/d/img0035.nii.gz"}]}))
    with pytest.raises(ValueError, match="img0035"):
        checked_unlabeled_datalist(unlabeled, ["synapse_test"])


def test_resume_state():
    net, head = nn.Linear(2, 2), nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
    saver = object()
    assert resume_state(net, opt, sched, best_model=None) == {"model": net, "optimizer": opt, "lr_scheduler": sched}
    assert resume_state(net, opt, sched, best_model=saver)["best_model"] is saver
    state = resume_state({"expert": net, "head": head}, opt, sched, summary=saver)
    assert list(state) == ["expert", "head", "optimizer", "lr_scheduler", "summary"] and state["head"] is head


def test_stage2_ablation():
    full = {lv: f"{lv}.pt" for lv in LEVELS}
    assert stage2_ablation(False, full, LEVELS) is None
    assert stage2_ablation("true", full, LEVELS) is None  # nothing was missing
    assert stage2_ablation(False, {}, ["image"]) is None  # SAMed / H-SAM: no experts asked for, no ablation
    assert stage2_ablation("true", {"image": "image.pt"}, LEVELS).startswith("no stage 1: zero-initialised experts")
    assert stage2_ablation(True, {}, ["pixel"]) is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU branch (the CUDA one runs under torchrun)")
def test_distributed_set_up_on_cpu(monkeypatch):
    assert local_device() == torch.device("cpu")
    env = {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert not dist.is_initialized()
    try:
        assert init_distributed("gloo", local_device()) is True
        assert dist.is_initialized() and dist.get_backend() == "gloo" and dist.get_world_size() == 1
        assert is_worker_rank() is False
        assert init_distributed("gloo", "cpu") is True  # an existing process group is kept
    finally:
        if dist.is_initialized():
            idist.finalize()  # destroys the process group and puts ignite back in serial mode for later tests
    assert not dist.is_initialized() and idist.get_world_size() == 1 and idist.model_name() == "serial"
