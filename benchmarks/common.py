"""Shared parts of the benchmarks: command-line flags, network configurations, interleaved timing, JSON output.

Every benchmark measures its configurations in one process, round-robin, so load drifts on a shared machine hit
all of them alike; besides wall time it records the process CPU time (robust to other processes on a shared
CPU, meaningless on a GPU where the device time counts: there the wall time after ``synchronize`` is used).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from samora_monai.networks import SamoraNet, configure_stage, count_parameters
from samora_monai.networks.acceleration import autocast, compile_network
from samora_monai.networks.samora_net import BACKBONES

NOT_MEASURED = "not measured: needs CUDA"

# configuration name -> (SamoraNet keyword arguments, stage for configure_stage)
CONFIGS: dict[str, tuple[dict, str]] = {
    "samed": ({"levels": ("samed",), "fusion": "sum"}, "samed"),
    "samora": ({"fusion": "hl_attn"}, "stage2"),
    "samora_lite": ({"fusion": "hl_attn_lite"}, "stage2"),
    "plain": ({"levels": ()}, "plain"),
}


def parser(description: str) -> argparse.ArgumentParser:
    """The flags every benchmark takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backbone", default="sam", choices=BACKBONES, help="sam (SAM 1 ViT) or sam2 (SAM 2.1 Hiera)")
    p.add_argument("--variant", default="vit_b", help="vit_b|vit_l|vit_h|tiny; hiera_t|hiera_s|hiera_b+|hiera_l")
    p.add_argument("--img_size", type=int, default=224)
    p.add_argument("--num_classes", type=int, default=8)
    p.add_argument("--compile", action="store_true", help="run the networks through torch.compile")
    amp = p.add_mutually_exclusive_group()
    amp.add_argument("--amp", action="store_true", help="float16 autocast")
    amp.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    p.add_argument("--json", default=None, help="JSON output path (default: beside the table, <script>.json)")
    return p


def amp_dtype(args: argparse.Namespace) -> str:
    return "bf16" if args.bf16 else "fp16" if args.amp else "none"


def build(name: str, args: argparse.Namespace) -> tuple[torch.nn.Module, SamoraNet, dict[str, int]]:
    """(network to call (compiled when asked), the SamoraNet itself, parameter counts) for configuration ``name``."""
    kwargs, stage = CONFIGS[name]
    torch.manual_seed(0)
    net = SamoraNet(
        args.num_classes, args.variant, args.img_size, random_init=True, backbone=args.backbone, **kwargs
    )
    if stage == "plain":
        net.requires_grad_(False)
        counts = count_parameters(net)
    else:
        counts = configure_stage(net, stage, level="samed" if stage == "samed" else None)
    net = net.to(args.device)
    return compile_network(net, args.compile), net, counts


def amp_context(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    return autocast(args.device, amp_dtype(args))


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def timed(device: torch.device | str, record: dict[str, list[float]]) -> Iterator[None]:
    """Appends the wall and process-CPU seconds of the block to ``record["wall"]`` / ``record["cpu"]``."""
    sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    yield
    sync(device)
    record.setdefault("wall", []).append(time.perf_counter() - start)
    record.setdefault("cpu", []).append(time.process_time() - cpu)


def seconds(record: dict[str, list[float]], device: torch.device | str) -> float:
    """Median seconds per repetition: process CPU time on CPU, wall time on CUDA."""
    key = "cpu" if torch.device(device).type == "cpu" else "wall"
    return statistics.median(record[key])


def round_robin(runs: dict[str, Callable[[], None]], repeats: int, warmup: int = 1) -> dict[str, dict]:
    """Call every run ``warmup + repeats`` times, interleaved; returns per-name timing records."""
    records: dict[str, dict] = {name: {} for name in runs}
    for i in range(warmup + repeats):
        for name, run in runs.items():
            record = records[name] if i >= warmup else {}
            run(record)
        print(f"round {i + 1}/{warmup + repeats} done", flush=True)
    return records


def write_json(args: argparse.Namespace, script: str, rows: list[dict]) -> Path:
    """Write ``{"args": ..., "rows": ...}`` beside the table; returns the path."""
    path = Path(args.json or Path(script).with_suffix(".json").name)
    info = {k: v for k, v in vars(args).items() if k != "json"}
    path.write_text(json.dumps({"args": info, "torch": torch.__version__, "rows": rows}, indent=1, default=str))
    print(f"wrote {path}")
    return path


def print_table(rows: list[dict], columns: list[str]) -> None:
    """Rows as a fixed-width table (missing entries blank)."""
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) + 2 for c in columns]
    print("".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(columns, widths, strict=True))))
    for r in rows:
        cells = [_fmt(r.get(c)) for c in columns]
        print("".join(x.rjust(w) if i else x.ljust(w) for i, (x, w) in enumerate(zip(cells, widths, strict=True))))


def _fmt(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)
