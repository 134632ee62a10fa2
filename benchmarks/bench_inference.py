"""Inference throughput, a whole CT volume end to end, and the training data pipeline against the step rate.

1. Slices/s of stage-2 SamoraNet (default HL-Attn ``samora``, light ``samora_lite``) against plain SAM (the same
   network in plain mode), batch ``--batch``, ``torch.inference_mode``, eval mode; interleaved round-robin.
2. One synthetic ``--volume`` (default 512 x 512 x 150) CT volume already in device memory through
   ``ResizedSliceInferer`` (resize in, network, resize out) plus the argmax: seconds per volume (no disk).
   Runs on CUDA; on CPU only with ``--volume_on_cpu``.
3. The bundle's training pipeline (``VolumeSliceDataset`` + ``slice_augmentations`` + ``DataLoader`` at the
   recipe's batch 32, ``--workers`` workers) in slices/s, against the stage-2 step's consumption
   (slices/s of the default training step at ``--step_batch``: 32 on CUDA, 4 on CPU) in the same process.

    python benchmarks/bench_inference.py --variant vit_b --img_size 224 --repeats 3
    python benchmarks/bench_inference.py --device cuda --bf16 --compile
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from bench_networks import make_step
from common import (
    NOT_MEASURED,
    amp_context,
    amp_dtype,
    build,
    parser,
    print_table,
    round_robin,
    seconds,
    timed,
    write_json,
)
from monai.data import DataLoader
from monai.losses import DiceCELoss

from samora_monai.data import VolumeSliceDataset, slice_augmentations
from samora_monai.inferers import ResizedSliceInferer


def throughput(args, names: list[str]) -> list[dict]:
    """Rows of slices/s per configuration and the ratio to the first (plain SAM)."""
    device = torch.device(args.device)
    x = torch.rand(args.batch, 1, args.img_size, args.img_size, generator=torch.Generator().manual_seed(0))
    x = x.to(device)
    runs = {}
    for name in names:
        net = build(name, args)[0].eval()

        def run(record, net=net):
            with torch.inference_mode(), timed(device, record), amp_context(args):
                net(x)

        runs[name] = run
    records = round_robin(runs, args.repeats)
    base = args.batch / seconds(records[names[0]], device)
    rows = []
    for name in names:
        rate = args.batch / seconds(records[name], device)
        rows.append({"measure": f"inference slices/s, {name}", "value": rate, "ratio": rate / base,
                     "vs": names[0]})
    return rows


def volume(args) -> dict:
    """Seconds for one synthetic CT volume through ResizedSliceInferer and the argmax (median of repeats)."""
    measure = f"{'x'.join(map(str, args.volume))} volume, {args.volume_config}, s"
    device = torch.device(args.device)
    if device.type != "cuda" and not args.volume_on_cpu:
        return {"measure": measure, "value": NOT_MEASURED}
    net = build(args.volume_config, args)[0].eval()
    g = torch.Generator().manual_seed(0)
    vol = torch.rand(1, 1, *args.volume, generator=g).to(device)
    dtype = amp_dtype(args)
    inferer = ResizedSliceInferer(
        args.img_size, sw_batch_size=args.slice_batch, amp=dtype != "none", amp_dtype=dtype.replace("none", "fp16")
    )
    record: dict = {}
    for i in range(1 + args.volume_repeats):
        with torch.inference_mode(), timed(device, record if i else {}):
            labels = inferer(vol, net).argmax(1)
    assert labels.shape == (1, *args.volume)
    wall = sorted(record["wall"])[len(record["wall"]) // 2]
    return {"measure": measure, "value": wall, "vs": "wall time, volume in device memory"}


def pipeline(args) -> list[dict]:
    """Data-pipeline slices/s (batch 32) and the default stage-2 step's consumption, as rows."""
    device = torch.device(args.device)
    step_batch = args.step_batch or (32 if device.type == "cuda" else 4)
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        data = []
        for i in range(args.pipeline_volumes):
            shape = (512, 512, args.pipeline_depth)
            image = rng.normal(0, 300, shape).astype(np.float32)
            label = rng.integers(0, args.num_classes + 1, shape).astype(np.uint8)
            for key, arr in (("image", image), ("label", label)):
                path = Path(tmp) / f"{key}_{i}.nii.gz"
                nib.save(nib.Nifti1Image(arr, np.eye(4)), path)
            data.append({"image": str(Path(tmp) / f"image_{i}.nii.gz"), "label": str(Path(tmp) / f"label_{i}.nii.gz")})
        dataset = VolumeSliceDataset(
            data, spatial_size=args.img_size, progress=False,
            slice_transform=slice_augmentations(prob=0.5, rotate_degrees=20, zoom=(0.9, 1.1)),
        )
    loader = DataLoader(dataset, batch_size=32, shuffle=True, num_workers=args.workers, drop_last=True,
                        persistent_workers=args.workers > 0)
    batches, start = 0, None
    while batches < args.pipeline_batches + 1:
        for _ in loader:
            batches += 1
            if batches == 1:
                start = time.perf_counter()  # after worker start-up and the first batch
            if batches == args.pipeline_batches + 1:
                break
    data_rate = 32 * args.pipeline_batches / (time.perf_counter() - start)

    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.8, lambda_ce=0.2)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(step_batch, 1, args.img_size, args.img_size, generator=g).to(device)
    y = torch.randint(0, args.num_classes + 1, (step_batch, 1, args.img_size, args.img_size), generator=g).to(device)
    record = round_robin({"samora": make_step("samora", args, step_batch, loss_fn, x, y)}, args.steps)["samora"]
    step_rate = step_batch / (sorted(record["wall"])[len(record["wall"]) // 2])
    return [
        {"measure": f"data pipeline slices/s (batch 32, {args.workers} workers, wall)", "value": data_rate},
        {"measure": f"stage-2 step consumption slices/s (samora, batch {step_batch}, wall)", "value": step_rate},
        {"measure": "data pipeline / step consumption", "value": data_rate / step_rate,
         "vs": "GPU target at batch 32" if device.type == "cuda" else "CPU step (GPU row: " + NOT_MEASURED + ")"},
    ]


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8, help="slices per network call in the throughput test")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per configuration (after 1 warm-up)")
    p.add_argument("--configs", default="plain,samora_lite,samora", help="the first is the baseline")
    p.add_argument("--parts", default="throughput,volume,pipeline")
    p.add_argument("--volume", type=int, nargs=3, default=[512, 512, 150])
    p.add_argument("--volume_config", default="samora")
    p.add_argument("--volume_repeats", type=int, default=3)
    p.add_argument("--volume_on_cpu", action="store_true")
    p.add_argument("--slice_batch", type=int, default=16, help="ResizedSliceInferer sw_batch_size")
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers (the bundle's num_workers)")
    p.add_argument("--pipeline_volumes", type=int, default=2)
    p.add_argument("--pipeline_depth", type=int, default=40, help="slices per synthetic training volume")
    p.add_argument("--pipeline_batches", type=int, default=5)
    p.add_argument("--step_batch", type=int, default=None)
    p.add_argument("--steps", type=int, default=2, help="timed training steps for the consumption rate")
    args = p.parse_args()
    parts = args.parts.split(",")
    print(f"device={args.device} backbone={args.backbone} variant={args.variant} img_size={args.img_size} "
          f"batch={args.batch} compile={args.compile} amp={args.amp} bf16={args.bf16} parts={parts}")
    rows = []
    if "throughput" in parts:
        rows += throughput(args, args.configs.split(","))
    if "volume" in parts:
        rows.append(volume(args))
    if "pipeline" in parts:
        rows += pipeline(args)
    kind = "process CPU time" if torch.device(args.device).type == "cpu" else "wall time"
    print(f"\nthroughput from {kind}; ratios against the 'vs' configuration in this run")
    print_table(rows, ["measure", "value", "ratio", "vs"])
    write_json(args, __file__, rows)


if __name__ == "__main__":
    main()
