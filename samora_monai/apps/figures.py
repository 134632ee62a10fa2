"""The demo's summary figure: held-out slices (CT, ground truth, each run's prediction), the training loss of every
stage-1 step and the validation Dice of every run against the epoch.

The loss curves are read from the workflows' logs, the lines MONAI's ``StatsHandler`` writes
(``Epoch: e/E, Iter: i/I -- <tag>: <value>``), so any bundle run's log can be plotted.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from samora_monai.data.transforms import BTCV_TO_SYNAPSE, CT_WINDOW, SYNAPSE_CLASSES  # noqa: E402
from samora_monai.inferers.io import prediction_path  # noqa: E402
from samora_monai.utils import atomic_output, case_name  # noqa: E402

__all__ = ["ORGAN_COLOURS", "demo_figure", "pick_slices", "read_loss_log"]

# spleen, right kidney, left kidney, gallbladder, liver, stomach, aorta, pancreas
ORGAN_COLOURS = ("#1f77b4", "#2ca02c", "#98df8a", "#bcbd22", "#d62728", "#ff7f0e", "#e377c2", "#9467bd")
_LOSS = re.compile(r"Epoch: (\d+)/(\d+), Iter: (\d+)/(\d+) -- \w+: ([-+0-9.eE]+|nan|inf)")


def read_loss_log(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(iterations, losses)`` from the ``StatsHandler`` lines of a log (progress-bar ``\\r`` updates ignored);
    the global iteration is ``(epoch - 1) * iterations_per_epoch + iter``. Empty arrays when none is found."""
    text = Path(path).read_text(errors="replace")
    points: dict[int, float] = {}
    for line in re.split(r"[\r\n]", text):
        match = _LOSS.search(line)
        if match:
            epoch, _, it, per_epoch, value = match.groups()
            points[(int(epoch) - 1) * int(per_epoch) + int(it)] = float(value)
    its = np.array(sorted(points), dtype=int)
    return its, np.array([points[i] for i in its], dtype=float)


def _load(path: str | os.PathLike) -> np.ndarray:
    return np.asanyarray(nib.load(os.fspath(path)).dataobj)


def _to_synapse(btcv: np.ndarray) -> np.ndarray:
    lut = np.zeros(max(256, int(btcv.max()) + 1), np.uint8)
    for src, dst in BTCV_TO_SYNAPSE.items():
        lut[src] = dst
    return lut[btcv.astype(np.int64)]


def pick_slices(labels: Sequence[np.ndarray], num_slices: int) -> list[tuple[int, int]]:
    """``(case, z)`` pairs: the axial slices showing the most organs (then the most organ voxels), taken round-robin
    over the cases, at least 3 slices apart within a case."""
    ranked = []
    for label in labels:
        score = [(len(np.unique(s)) - 1, int(np.count_nonzero(s))) for s in np.moveaxis(label, 2, 0)]
        ranked.append(sorted(range(len(score)), key=lambda z, s=score: s[z], reverse=True))
    chosen: list[tuple[int, int]] = []
    while len(chosen) < num_slices and any(ranked):
        for case, order in enumerate(ranked):
            while order:
                z = order.pop(0)
                if all(c != case or abs(z - zc) >= 3 for c, zc in chosen):
                    chosen.append((case, z))
                    break
            if len(chosen) == num_slices:
                break
    return chosen


def _display(slice_xy: np.ndarray) -> np.ndarray:
    """RAS ``[X, Y]`` slice -> radiological view (patient's right on the left, anterior at the top)."""
    return slice_xy.T[::-1, ::-1]


def demo_figure(
    path: str | os.PathLike,
    images: Sequence[str],
    labels: Sequence[str],
    predictions: Mapping[str, str | os.PathLike],
    loss_logs: Mapping[str, str | os.PathLike],
    curves: Mapping[str, Sequence[tuple[int, float]]],
    num_slices: int = 3,
    class_names: Sequence[str] = SYNAPSE_CLASSES,
    window: Sequence[float] = CT_WINDOW,
) -> Path:
    """Write the summary PNG.

    Args:
        path: output PNG.
        images, labels: held-out CT volumes (HU) and their BTCV-id labels (mapped to the Synapse classes here).
        predictions: run title -> folder of its ``<case>_seg.nii.gz`` label volumes (Synapse classes); one column
            per run beside the CT and the ground truth.
        loss_logs: panel title -> log file of a training workflow.
        curves: run title -> ``[(epoch, validation mean Dice)]``, drawn together in the last panel.
        num_slices: rows of slices.
        class_names: the organ names of the legend.
        window: CT display window (HU).
    """
    runs = {title: [] for title in predictions}
    gts, cts = [], []
    for image, label in zip(images, labels, strict=True):
        for title, folder in predictions.items():
            pred_path = prediction_path(image, folder)
            if not pred_path.is_file():
                raise FileNotFoundError(f"{title}: prediction for {image} not found: {pred_path}")
            runs[title].append(_load(pred_path).astype(np.int64))
        cts.append(_load(image))
        gts.append(_to_synapse(_load(label)))
    chosen = pick_slices(gts, num_slices)
    cols = 2 + len(runs)
    panels = [*loss_logs.items(), ("validation mean Dice", None)]
    plot_rows = math.ceil(len(panels) / cols)
    fig = plt.figure(figsize=(3.2 * cols, 3.4 * len(chosen) + 2.8 * plot_rows), constrained_layout=True)
    grid = fig.add_gridspec(len(chosen) + plot_rows, cols, height_ratios=[1.3] * len(chosen) + [1.0] * plot_rows)
    cmap = ListedColormap(ORGAN_COLOURS[: len(class_names)])
    for row, (case, z) in enumerate(chosen):
        ct = _display(np.clip(cts[case][..., z], *window))
        columns = [(f"{case_name(images[case])}, slice {z}", None), ("ground truth", gts[case])]
        columns += [(title, volumes[case]) for title, volumes in runs.items()]
        for col, (title, overlay) in enumerate(columns):
            ax = fig.add_subplot(grid[row, col])
            ax.imshow(ct, cmap="gray", vmin=window[0], vmax=window[1], interpolation="nearest")
            if overlay is not None:
                mask = _display(overlay[..., z]).astype(float)
                shown = np.ma.masked_where(mask == 0, mask - 1)
                ax.imshow(shown, cmap=cmap, vmin=0, vmax=len(class_names) - 1, alpha=0.55, interpolation="nearest")
            ax.set_title(title, fontsize=10)
            ax.axis("off")
    handles = [Patch(color=ORGAN_COLOURS[i], label=n.replace("_", " ")) for i, n in enumerate(class_names)]
    fig.legend(handles=handles, loc="outside upper center", ncol=len(class_names), fontsize=9, frameon=False)
    for i, (title, log) in enumerate(panels):
        ax = fig.add_subplot(grid[len(chosen) + i // cols, i % cols])
        if log is None:
            for name, points in curves.items():
                ax.plot([e for e, _ in points], [d for _, d in points], marker="o", ms=3, label=name)
            ax.set_xlabel("epoch", fontsize=8)
            ax.legend(fontsize=8)
        else:
            its, values = read_loss_log(log)
            if len(its):
                ax.plot(its, values, lw=1.2, color="#333333", marker="." if len(its) < 30 else None)
            else:
                ax.text(0.5, 0.5, "no loss logged", ha="center", va="center", transform=ax.transAxes)
            ax.set_xlabel("iteration", fontsize=8)
            ax.set_ylabel("loss", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    out = Path(path)
    with atomic_output(out) as tmp:
        fig.savefig(tmp, dpi=100, format=out.suffix.lstrip(".") or "png")
    plt.close(fig)
    return out
