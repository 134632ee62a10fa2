"""Determinism: two stage-2 bundle runs (real ``python -m monai.bundle run training`` CLI, tiny SAM, CPU) with the same
``seed`` give bit-identical first-epoch losses, iteration by iteration; a third run with another seed gives
different ones (the seed reaches the weights, the shuffling and the augmentations, so the test can fail). The
losses are recorded at full precision by :class:`run_probes.LossRecorder`, appended to ``train#handlers`` by an
overlay config."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ITERS = 6  # 12 slices, batch 2


def first_epoch_losses(bundle_cli, tmp_path: Path, datalist: str, seed: int, run: str) -> tuple[list[float], list[str]]:
    """(recorded losses, the losses the StatsHandler logged) of a 1-epoch run with ``seed``."""
    record = tmp_path / f"losses_{run}.json"
    overlay = tmp_path / f"record_{run}.yaml"
    overlay.write_text(f"+train#handlers:\n  - _target_: run_probes.LossRecorder\n    path: '{record}'\n")
    result = bundle_cli("synapse", ["run", "training"], ["train.yaml", str(overlay)],
                        {"bundle_root": str(tmp_path / f"bundle_{run}"), "datalist": datalist, "seed": seed,
                         "img_size": 32, "batch_size": 2}, cwd=tmp_path)  # fmt: skip
    losses = json.loads(record.read_text())
    assert [(e, i) for e, i, _ in losses] == [(1, i) for i in range(1, ITERS + 1)]
    logged = re.findall(r"Epoch: 1/1, Iter: \d+/\d+ -- train_loss: (\S+)", result.stdout + result.stderr)
    return [loss for _, _, loss in losses], logged


def test_same_seed_same_first_epoch_losses(tmp_path, bundle_cli, write_json_datalist, write_nifti_cases):
    items = write_nifti_cases(tmp_path / "data", n=3)
    datalist = write_json_datalist(tmp_path / "dl.json", training=items[:2], validation=items[2:])
    first, first_log = first_epoch_losses(bundle_cli, tmp_path, datalist, 1234, "a")
    second, second_log = first_epoch_losses(bundle_cli, tmp_path, datalist, 1234, "b")
    other, _ = first_epoch_losses(bundle_cli, tmp_path, datalist, 4321, "c")
    print("seed 1234 losses:", first, "\nseed 4321 losses:", other)
    assert first == second  # bit-identical floats
    assert first_log == second_log and len(first_log) == ITERS
    assert all(a != b for a, b in zip(first, other, strict=True))
