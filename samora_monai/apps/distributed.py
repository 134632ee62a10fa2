"""What ``multi_gpu_train.yaml`` does once per process under ``torchrun``: the device of the local rank, the process
group, and logging on rank 0 only."""

from __future__ import annotations

import logging
import os

import ignite.distributed as idist
import torch
import torch.distributed as dist

__all__ = ["init_distributed", "is_worker_rank", "local_device"]


def local_device() -> torch.device:
    """``cuda:<LOCAL_RANK>`` (torchrun's variable, required) when CUDA is available, else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if "LOCAL_RANK" not in os.environ:
        raise RuntimeError("LOCAL_RANK is not set: run multi_gpu_train.yaml through torchrun")
    return torch.device(f"cuda:{os.environ['LOCAL_RANK']}")


def init_distributed(backend: str, device: torch.device | str) -> bool:
    """Join the process group (``backend``: ``nccl`` on CUDA, ``gloo`` on CPU; kept when already initialised), select
    ``device`` on CUDA, and leave only warnings to the loggers of ranks > 0. Returns True.

    It also asks ignite for the rank once (ignite's ``Checkpoint`` inside MONAI's ``CheckpointSaver`` does, and that
    first call is a collective): made here on every rank, the savers that rank 0 alone builds cannot deadlock."""
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(device)
    idist.sync()
    if dist.get_rank() > 0:
        logging.getLogger().setLevel(logging.WARNING)
    return True


def is_worker_rank() -> bool:
    """True on the ranks > 0 of the process group, whose loggers and savers the overlay disables."""
    return dist.get_rank() > 0
