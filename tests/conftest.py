"""Shared pytest settings: small thread pools so the suite behaves on 2-core machines."""

import os

import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
