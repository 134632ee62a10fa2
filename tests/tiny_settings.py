"""Constants shared by the tests (a plain module, not a test file, so a test module may import them at import time;
conftest.py serves them as the fixtures ``bundles``, ``tiny`` and ``tiny_mae``)."""

from __future__ import annotations

import os
from pathlib import Path

from samora_monai.utils import bundle_dir

TESTS = Path(__file__).resolve().parent
BUNDLES = {"synapse": bundle_dir("samora_synapse"), "la": bundle_dir("samora_la")}
# bundle overrides every bundle test uses: tiny SAM at 64 px with random weights, 1 epoch, no worker processes, stage 2
# without stage-1 expert files (the "no stage 1" ablation; tests that need the experts give them)
TINY = {"variant": "tiny", "img_size": 64, "random_init": True, "epochs": 1, "batch_size": 4, "num_workers": 0,
        "slice_batch_size": 8, "allow_missing_experts": True}
# a 2-layer MAE teacher at 64 px
TINY_MAE = {"img_size": 64, "hidden_size": 32, "mlp_dim": 64, "num_layers": 2, "num_heads": 4,
            "decoder_hidden_size": 32, "decoder_mlp_dim": 64, "decoder_num_layers": 1, "decoder_num_heads": 4}
# environment of bundle subprocesses: one thread, unbuffered logs, the tests folder importable (tests/run_probes.py
# instruments are named by overlay configs)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
       "PYTHONPATH": os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)}
