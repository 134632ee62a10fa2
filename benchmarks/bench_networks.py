"""Stage-2 training-step cost of SamoraNet against a SAMed-style single-LoRA step, in one process.

Every configuration uses the same backbone, input size and batch: a SAMed-style step (one trainable rank-4
LoRA on q/v plus the mask decoder) is the baseline; stage-2 SamoraNet steps (three frozen experts, trainable
HL-Attn plus decoder) run with the default, reference HL-Attn (``samora``) and with this project's light
variant ``hl_attn_lite`` (``samora_lite``). Steps are interleaved round-robin (see ``common.py``); the ratio
column uses process CPU time on CPU and wall time on CUDA.

Memory: on CUDA the true peak (``torch.cuda.max_memory_allocated``); on CPU, where PyTorch does not track a
peak, the training footprint = parameters + gradients + AdamW state + every tensor saved for backward
(deduplicated by storage), which is what dominates the peak.

Batches: by default 4 and the recipe's 32; on CPU the batch-32 rows print "not measured: needs CUDA" unless
``--batch`` names 32 explicitly.

    python benchmarks/bench_networks.py --variant vit_b --img_size 224 --steps 3
    python benchmarks/bench_networks.py --device cuda --batch 4 32 --bf16 --compile
    python benchmarks/bench_networks.py --backbone sam2 --variant hiera_b+ --img_size 224 --batch 4 --steps 3
"""

from __future__ import annotations

import contextlib

import torch
from common import NOT_MEASURED, amp_context, build, parser, print_table, round_robin, seconds, timed, write_json
from monai.losses import DiceCELoss


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


def make_step(name: str, args, batch: int, loss_fn, x, y):
    """A closure running one training step of configuration ``name``, recording time and memory."""
    net, raw, counts = build(name, args)
    net.train()
    optimizer = torch.optim.AdamW([p for p in raw.parameters() if p.requires_grad], lr=1e-4)
    device = torch.device(args.device)
    trainable = sum(p.numel() * p.element_size() for p in raw.parameters() if p.requires_grad)
    params = sum(p.numel() * p.element_size() for p in raw.parameters())

    def run(record: dict) -> None:
        meter = SavedTensorMeter()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with timed(device, record):
            hooks = contextlib.nullcontext()
            if device.type == "cpu" and not args.compile:
                hooks = torch.autograd.graph.saved_tensors_hooks(meter.pack, lambda t: t)
            with amp_context(args), hooks:
                loss = loss_fn(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            record.setdefault("mem", []).append(torch.cuda.max_memory_allocated())
        else:  # grads + 2 AdamW moments
            record.setdefault("mem", []).append(params + trainable * 3 + meter.nbytes)
        record["counts"] = counts

    return run


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, nargs="+", default=None, help="batch sizes (default 4 32)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per configuration (after 1 warm-up)")
    p.add_argument("--configs", default="samed,samora,samora_lite", help="the first is the baseline")
    args = p.parse_args()
    device = torch.device(args.device)
    batches = args.batch or [4, 32]
    names = args.configs.split(",")
    print(f"device={device} backbone={args.backbone} variant={args.variant} img_size={args.img_size} "
          f"batches={batches} steps={args.steps} compile={args.compile} amp={args.amp} bf16={args.bf16}")
    print("weights are randomly initialised (timing and memory do not depend on their values)")
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.8, lambda_ce=0.2)
    rows = []
    for batch in batches:
        if device.type == "cpu" and batch > 8 and args.batch is None:
            rows += [{"config": n, "batch": batch, "time ratio": NOT_MEASURED} for n in names]
            continue
        g = torch.Generator().manual_seed(0)
        x = torch.rand(batch, 1, args.img_size, args.img_size, generator=g).to(device)
        y = torch.randint(0, args.num_classes + 1, (batch, 1, args.img_size, args.img_size), generator=g).to(device)
        runs = {name: make_step(name, args, batch, loss_fn, x, y) for name in names}
        records = round_robin(runs, args.steps)
        base = records[names[0]]
        base_s, base_mem = seconds(base, device), max(base["mem"])
        for name, rec in records.items():
            s, mem = seconds(rec, device), max(rec["mem"])
            rows.append({
                "config": name, "batch": batch, "trainable": rec["counts"]["trainable"],
                "total": rec["counts"]["total"], "s/step": s, "time ratio": s / base_s,
                "wall s/step": sorted(rec["wall"])[len(rec["wall"]) // 2],
                "MiB": mem / 2**20, "memory ratio": mem / base_mem,
            })
    kind = "process CPU time" if device.type == "cpu" else "wall time"
    mem_kind = "peak CUDA memory" if device.type == "cuda" else "training footprint"
    print(f"\ns/step and time ratio: {kind}; MiB: {mem_kind}; ratios against {names[0]} in this run")
    print_table(rows, ["config", "batch", "trainable", "total", "s/step", "time ratio", "wall s/step", "MiB",
                       "memory ratio"])
    write_json(args, __file__, rows)


if __name__ == "__main__":
    main()
