"""DDP proven by numbers, on CPU with gloo.

1. One optimizer step of the stage-2 network (tiny SAM, HL-Attn + mask decoder trainable) in 2 processes
   (``torch.multiprocessing`` + ``init_process_group("gloo")``, DistributedDataParallel), each on half of a batch,
   gives the same parameters (``atol=1e-6``) as one single-process step on the whole batch. With the bundle's loss
   the Dice term is a *batch* Dice (reduced over the batch per class), computed per rank under DDP: the 2-rank step
   equals the single-process step on the mean of the two halves' losses, which the test shows too.
2. An epoch of the bundle's ``multi_gpu_train.yaml`` through a real ``torchrun --nproc_per_node 2`` leaves both ranks
   with identical parameters (recorded by :class:`run_probes.RankWeights` appended by an overlay config), changed by
   training (DDP's broadcast at start alone would also make them equal) and equal to the saved ``model.pt``. This is
   tests/test_bundle_cli.py's multi-GPU test with the parameters compared instead of only log lines.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from samora_monai.engines import stage2_network, trainable_parameters
from samora_monai.losses import segmentation_loss
from samora_monai.networks import SamoraNet

LR = 0.5
LOSSES = {"ce": {"lambda_dice": 0.0, "lambda_ce": 1.0}, "bundle": {}}  # bundle: segmentation_loss() defaults


def tiny_net() -> SamoraNet:
    return stage2_network(SamoraNet(num_classes=3, variant="tiny", img_size=32, random_init=True))


def sgd_step(net: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], loss_name: str) -> None:
    """One SGD step on the mean of the losses of ``batches`` (a single batch: its loss)."""
    loss_fn = segmentation_loss(**LOSSES[loss_name])
    opt = torch.optim.SGD(trainable_parameters(net.module if hasattr(net, "module") else net), lr=LR)
    opt.zero_grad()
    loss = sum(loss_fn(net(x), y) for x, y in batches) / len(batches)
    loss.backward()
    opt.step()


def _rank_step(rank: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2)
    try:
        data = torch.load(f"{folder}/data.pt", weights_only=True)
        x, y = data["x"][2 * rank : 2 * rank + 2], data["y"][2 * rank : 2 * rank + 2]
        for loss_name in LOSSES:
            net = tiny_net()
            net.load_state_dict(data["init"])
            sgd_step(DistributedDataParallel(net), [(x, y)], loss_name)
            torch.save(net.state_dict(), f"{folder}/{loss_name}_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_step(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("ddp")
    torch.manual_seed(0)
    init = tiny_net().state_dict()
    x = torch.rand(4, 1, 32, 32)
    y = torch.randint(0, 4, (4, 1, 32, 32)).float()
    x[:, :, 8:20, 8:20] += 1.0  # some structure, so the step is not tiny
    torch.save({"init": init, "x": x, "y": y}, folder / "data.pt")
    mp.spawn(_rank_step, args=(str(folder),), nprocs=2, join=True)
    return folder, {"init": init, "x": x, "y": y}


def reference(data: dict, loss_name: str, batches: list[slice]) -> dict[str, torch.Tensor]:
    net = tiny_net()
    net.load_state_dict(data["init"])
    sgd_step(net, [(data["x"][s], data["y"][s]) for s in batches], loss_name)
    return net.state_dict()


def max_diff(a: dict, b: dict, keys: list[str]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in keys)


@pytest.mark.slow
@pytest.mark.parametrize("loss_name", list(LOSSES))
def test_two_rank_gloo_step_equals_single_process_step(ddp_step, loss_name):
    folder, data = ddp_step
    ranks = [torch.load(folder / f"{loss_name}_rank{r}.pt", weights_only=True) for r in (0, 1)]
    trained = [k for k, p in tiny_net().named_parameters() if p.requires_grad]
    assert trained and max_diff(ranks[0], ranks[1], list(ranks[0])) == 0.0  # the ranks agree bit for bit
    # the single-process step on the whole batch (CE: mean over all pixels); for the batch-Dice bundle loss the
    # same objective is the mean of the two halves' losses (each rank's Dice is reduced over its own half)
    halves = [slice(0, 2), slice(2, 4)]
    single = reference(data, loss_name, [slice(0, 4)] if loss_name == "ce" else halves)
    for k in ranks[0]:
        torch.testing.assert_close(ranks[0][k], single[k], atol=1e-6, rtol=0, msg=k)
    # the comparison can fail: a step moves the weights far more than 1e-6, and one rank's half alone differs
    assert max_diff(ranks[0], data["init"], trained) > 1e-4
    assert max_diff(ranks[0], reference(data, loss_name, halves[:1]), trained) > 1e-5
    if loss_name == "bundle":  # batch Dice on the whole batch is a different objective from the per-rank Dice
        print("bundle loss: DDP step vs whole-batch Dice step, max |diff|:",
              max_diff(ranks[0], reference(data, loss_name, [slice(0, 4)]), trained))  # fmt: skip


@pytest.mark.slow
def test_multi_gpu_bundle_epoch_leaves_ranks_equal(tmp_path, bundle_cli, assert_model_loads, write_json_datalist,
                                                    write_nifti_cases):
    items = write_nifti_cases(tmp_path / "data", n=4)
    datalist = write_json_datalist(tmp_path / "dl.json", training=items[:2], validation=items[2:])
    root, probe = tmp_path / "bundle", tmp_path / "ranks"
    overlay = tmp_path / "rank_weights.yaml"
    overlay.write_text(f"+train#handlers:\n  - _target_: run_probes.RankWeights\n    folder: '{probe}'\n"
                       "    module: '@network'\n")  # fmt: skip
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2"]
    result = bundle_cli("synapse", ["run", "training"], ["train.yaml", "multi_gpu_train.yaml", str(overlay)],
                        {"bundle_root": str(root), "datalist": datalist, "batch_size": 2}, cwd=tmp_path,
                        launcher=launcher)  # fmt: skip
    log = result.stdout + result.stderr
    assert "Epoch: 1/1, Iter: 3/3" in log  # 12 slices / 2 ranks / batch 2
    assert log.count("Saved checkpoint at epoch: 1") == 1  # rank 0 only
    rank0, rank1 = (torch.load(probe / f"rank{r}_completed.pt", weights_only=True) for r in (0, 1))
    assert list(rank0) == list(rank1) and all(k.startswith("module.") for k in rank0)  # the DDP-wrapped network
    for k in rank0:
        assert torch.equal(rank0[k], rank1[k]), k
    model = torch.load(root / "models" / "model.pt", weights_only=True)  # best (only) epoch = end of training
    assert all(torch.equal(model[k.removeprefix("module.")], v) for k, v in rank0.items())
    started = torch.load(probe / "rank1_started.pt", weights_only=True)  # trained, not only broadcast at start
    decoder = [k for k in rank0 if "mask_decoder" in k and k.endswith("weight")]
    assert max(float((rank0[k] - started[k]).abs().max()) for k in decoder) > 1e-4
    assert_model_loads("synapse", root)
