"""The demo's summary figure: held-out slices (CT, ground truth, prediction) and the training loss of every stage.

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
    predictions: str | os.PathLike,
    loss_logs: Mapping[str, str | os.PathLike],
    num_slices: int = 3,
    class_names: Sequence[str] = SYNAPSE_CLASSES,
    window: Sequence[float] = CT_WINDOW,
) -> Path:
    """Write the summary PNG.

    Args:
        path: output PNG.
        images, labels: held-out CT volumes (HU) and their BTCV-id labels (mapped to the Synapse classes here).
        predictions: folder of ``<case>_seg.nii.gz`` label volumes (Synapse classes) from the inference workflow.
        loss_logs: panel title -> log file of a training workflow.
        num_slices: rows of slices (CT | ground truth | prediction).
        class_names: the organ names of the legend.
        window: CT display window (HU).
    """
    preds, gts, cts = [], [], []
    for image, label in zip(images, labels, strict=True):
        pred_path = prediction_path(image, predictions)
        if not pred_path.is_file():
            raise FileNotFoundError(f"prediction for {image} not found: {pred_path}")
        cts.append(_load(image))
        gts.append(_to_synapse(_load(label)))
        preds.append(_load(pred_path).astype(np.int64))
    chosen = pick_slices(gts, num_slices)
    loss_rows = math.ceil(len(loss_logs) / 3)
    rows = len(chosen) + loss_rows
    fig = plt.figure(figsize=(12, 3.6 * len(chosen) + 2.8 * loss_rows), constrained_layout=True)
    grid = fig.add_gridspec(rows, 3, height_ratios=[1.3] * len(chosen) + [1.0] * loss_rows)
    cmap = ListedColormap(ORGAN_COLOURS[: len(class_names)])
    for row, (case, z) in enumerate(chosen):
        ct = _display(np.clip(cts[case][..., z], *window))
        name = case_name(images[case])
        panels = (("CT", None), ("ground truth", gts[case]), ("prediction", preds[case]))
        for col, (title, overlay) in enumerate(panels):
            ax = fig.add_subplot(grid[row, col])
            ax.imshow(ct, cmap="gray", vmin=window[0], vmax=window[1], interpolation="nearest")
            if overlay is not None:
                mask = _display(overlay[..., z]).astype(float)
                shown = np.ma.masked_where(mask == 0, mask - 1)
                ax.imshow(shown, cmap=cmap, vmin=0, vmax=len(class_names) - 1, alpha=0.55, interpolation="nearest")
            ax.set_title(f"{name}, slice {z}: {title}", fontsize=10)
            ax.axis("off")
    handles = [Patch(color=ORGAN_COLOURS[i], label=n.replace("_", " ")) for i, n in enumerate(class_names)]
    fig.legend(handles=handles, loc="outside upper center", ncol=len(class_names), fontsize=9, frameon=False)
    for i, (title, log) in enumerate(loss_logs.items()):
        ax = fig.add_subplot(grid[len(chosen) + i // 3, i % 3])
        its, values = read_loss_log(log)
        if len(its):
            ax.plot(its, values, lw=1.2, color="#333333", marker="." if len(its) < 30 else None)
        else:
            ax.text(0.5, 0.5, "no loss logged", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("iteration", fontsize=8)
        ax.set_ylabel("loss", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    out = Path(path)
    with atomic_output(out) as tmp:
        fig.savefig(tmp, dpi=110, format=out.suffix.lstrip(".") or "png")
    plt.close(fig)
    return out
