"""Stage-2 training-step cost of SamoraNet against a SAMed-style single-LoRA step, in one process.

Every configuration uses the same backbone, input size and batch: a SAMed-style step (one trainable rank-4
LoRA on q/v plus the mask decoder) is the baseline; stage-2 SamoraNet steps (three frozen experts, trainable
HL-Attn plus decoder) run with the default, reference HL-Attn (``samora``) and with this project's light
variant ``hl_attn_lite`` (``samora_lite``).
Steps are interleaved round-robin so machine load drifts affect every configuration alike; besides the wall
time, the process CPU time of each step is reported (far less sensitive to other processes on a shared CPU).

Memory: on CUDA the true peak (``torch.cuda.max_memory_allocated``); on CPU, where PyTorch does not track a
peak, the training footprint = parameters + gradients + AdamW state + every tensor saved for backward
(deduplicated by storage), which is what dominates the peak.

    python benchmarks/bench_networks.py --variant vit_b --img_size 224 --batch 4 --steps 5
    python benchmarks/bench_networks.py --backbone sam2 --variant hiera_b+ --img_size 224 --batch 4 --steps 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from monai.losses import DiceCELoss

from samora_monai.networks import SamoraNet, configure_stage


def build(
    name: str, variant: str, img_size: int, num_classes: int, backbone: str = "sam"
) -> tuple[SamoraNet, dict[str, int]]:
    torch.manual_seed(0)
    if name == "samed":
        net = SamoraNet(
            num_classes, variant, img_size, levels=("samed",), fusion="sum", random_init=True, backbone=backbone
        )
        return net, configure_stage(net, "samed", level="samed")
    fusion = {"samora": "hl_attn", "samora_lite": "hl_attn_lite"}[name]
    net = SamoraNet(num_classes, variant, img_size, fusion=fusion, random_init=True, backbone=backbone)
    return net, configure_stage(net, "stage2")


class SavedTensorMeter:
    """Counts the bytes of distinct storages autograd saves for backward during a forward pass."""

    def __init__(self) -> None:
        self.storages: dict[int, int] = {}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        self.storages[storage.data_ptr()] = storage.nbytes()
        return t

    @property
    def nbytes(self) -> int:
        return sum(self.storages.values())


def step(net, optimizer, loss_fn, x, y, device) -> tuple[float, float, int]:
    """One training step; returns (wall seconds, process CPU seconds, peak or footprint bytes)."""
    meter = SavedTensorMeter()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start, cpu_start = time.perf_counter(), time.process_time()
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, lambda t: t):
        loss = loss_fn(net(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        return time.perf_counter() - start, time.process_time() - cpu_start, torch.cuda.max_memory_allocated()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    trainable = sum(p.numel() * p.element_size() for p in net.parameters() if p.requires_grad)
    params = sum(p.numel() * p.element_size() for p in net.parameters())
    return seconds, cpu_seconds, params + trainable * 3 + meter.nbytes  # grads + 2 AdamW moments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="sam", choices=("sam", "sam2"))
    parser.add_argument("--variant", default="vit_b", help="vit_b|vit_l|vit_h (sam), hiera_t|hiera_s|hiera_b+|hiera_l")
    parser.add_argument("--img_size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration (after 1 warm-up)")
    parser.add_argument("--num_classes", type=int, default=8)
    parser.add_argument("--configs", default="samed,samora,samora_lite")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names = args.configs.split(",")
    print(f"device={device} backbone={args.backbone} variant={args.variant}")
    print(f"img_size={args.img_size} batch={args.batch} steps={args.steps}")
    print("weights are randomly initialised (timing and memory do not depend on their values)")

    runs = {}
    for name in names:
        net, counts = build(name, args.variant, args.img_size, args.num_classes, args.backbone)
        net = net.to(device).train()
        optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
        runs[name] = {"net": net, "opt": optimizer, "counts": counts, "times": [], "cpu": [], "mem": []}
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.8, lambda_ce=0.2)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 1, args.img_size, args.img_size, generator=g).to(device)
    y = torch.randint(0, args.num_classes + 1, (args.batch, 1, args.img_size, args.img_size), generator=g).to(device)

    for i in range(args.steps + 1):
        for run in runs.values():
            seconds, cpu_seconds, mem = step(run["net"], run["opt"], loss_fn, x, y, device)
            if i > 0:
                run["times"].append(seconds)
                run["cpu"].append(cpu_seconds)
                run["mem"].append(mem)
        print(f"step {i}/{args.steps} done", flush=True)

    base = runs[names[0]]
    base_time, base_cpu = statistics.median(base["times"]), statistics.median(base["cpu"])
    base_mem = max(base["mem"])
    mem_kind = "peak CUDA MiB" if device.type == "cuda" else "footprint MiB"
    print(f"\n{'config':<14}{'trainable':>12}{'total':>13}{'wall s/step':>13}{'wall ratio':>12}"
          f"{'cpu s/step':>12}{'cpu ratio':>11}{mem_kind:>15}{'memory ratio':>14}")
    for name, run in runs.items():
        t, c, m = statistics.median(run["times"]), statistics.median(run["cpu"]), max(run["mem"])
        print(f"{name:<14}{run['counts']['trainable']:>12,}{run['counts']['total']:>13,}{t:>13.3f}"
              f"{t / base_time:>12.2f}{c:>12.3f}{c / base_cpu:>11.2f}{m / 2**20:>15.1f}{m / base_mem:>14.2f}")


if __name__ == "__main__":
    main()
