"""Stage-1 unlabeled slices: prepare a 2D slice cache from 3D volumes, with a leakage guard, and read it back.

``prepare_unlabeled`` (also ``python -m samora_monai prepare_unlabeled``) runs every volume through the stage-2
intensity pipeline (:func:`~samora_monai.data.volume_transforms`), keeps all slices or those with enough body,
resizes them to the network input size and writes ``<output_dir>/slices/<case>.npy`` (``[N, S, S]``, values in
[0, 1]) plus ``<output_dir>/unlabeled_datalist.json`` (``training``: ``{image, num_slices, source}`` per volume).
"""

from __future__ import annotations

import glob as globlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import Dataset, load_decathlon_datalist
from monai.transforms import apply_transform
from tqdm import tqdm

from samora_monai.data.datalists import TEST_SPLITS, write_datalist
from samora_monai.data.leakage import EXCLUDED_SECTIONS, case_ids, check_leakage
from samora_monai.data.slices import resize_slices, select_slices
from samora_monai.data.transforms import CT_WINDOW, MR_PERCENTILES, volume_transforms
from samora_monai.utils import atomic_output, case_name

__all__ = ["UnlabeledSliceDataset", "case_ids", "check_leakage", "prepare_unlabeled"]

logger = logging.getLogger(__name__)

def _input_paths(datalist: str | None, glob: str | None, data_list_key: str) -> list[str]:
    if (datalist is None) == (glob is None):
        raise ValueError("give exactly one of `datalist` (a datalist JSON) or `glob` (a file pattern)")
    if datalist is not None:
        if not os.path.isfile(datalist):
            raise FileNotFoundError(f"datalist not found: {datalist}")
        paths = [item["image"] for item in load_decathlon_datalist(datalist, False, data_list_key)]
    else:
        paths = sorted(globlib.glob(os.path.expanduser(glob), recursive=True))
    if not paths:
        raise ValueError(f"no volumes selected by {datalist or glob}")
    return [str(p) for p in paths]


def _output_names(paths: Sequence[str]) -> list[str]:
    stems = [case_name(p) for p in paths]
    if len(set(stems)) < len(stems):  # e.g. LA: every file is <ID>/mri_norm2.h5
        stems = [f"{Path(p).parent.name}_{s}" for p, s in zip(paths, stems, strict=True)]
    if len(set(stems)) < len(stems):
        raise ValueError("input volumes do not have unique names (file name or folder + file name)")
    return stems


def _held_out(datalists: Sequence[str | None], skip: str) -> dict[str, list[dict]]:
    """The ``testing``/``validation`` items (paths resolved) of the datalist JSON files, except section ``skip``."""
    held: dict[str, list[dict]] = {s: [] for s in EXCLUDED_SECTIONS if s != skip}
    for path in (p for p in datalists if p is not None):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"datalist not found: {path}")
        sections = json.loads(Path(path).read_text())
        for section in held:
            if sections.get(section):
                held[section] += load_decathlon_datalist(path, False, section)
    return held


def prepare_unlabeled(
    output_dir: str,
    datalist: str | None = None,
    glob: str | None = None,
    data_list_key: str = "training",
    modality: str = "ct",
    spatial_size: int = 224,
    min_body_fraction: float = 0.0,
    body_threshold: float = 0.05,
    exclude: Sequence[str | int] | str = TEST_SPLITS,
    holdout_datalist: str | None = None,
    window: Sequence[float] = CT_WINDOW,
    percentiles: Sequence[float] = MR_PERCENTILES,
    image_mode: str = "bilinear",
    dtype: str = "float16",
    progress: bool = True,
) -> str:
    """Cut 3D volumes into normalised, resized 2D slices for stage-1 self-supervision.

    Args:
        output_dir: where ``slices/*.npy`` and ``unlabeled_datalist.json`` are written.
        datalist: datalist JSON selecting the volumes (their ``image`` entries in section ``data_list_key``).
        glob: file pattern selecting the volumes instead (``**`` allowed), e.g. ``"/data/AMOS/imagesTr/*.nii.gz"``.
        data_list_key: datalist section to read.
        modality: intensity pipeline, ``"ct"``, ``"mr"`` or ``"none"`` (see ``intensity_transform``).
        spatial_size: output slice size S (the network input size).
        min_body_fraction: keep only slices where more than this fraction of pixels exceeds ``body_threshold``
            after normalisation; 0 keeps every axial slice.
        body_threshold: normalised intensity that counts as body.
        exclude: labelled test splits (names such as ``"synapse_test"``, ``"la_test"``) and/or case ids whose
            volumes are refused; case ids, file names and paths are accepted (see :mod:`samora_monai.data.leakage`);
            a comma-separated string is accepted. The ``testing``/``validation`` items of ``datalist`` are refused
            as well. Empty (and a datalist without those sections) disables the guard.
        holdout_datalist: another datalist JSON (e.g. the labelled stage-2 datalist) whose ``testing`` and
            ``validation`` cases are refused too.
        window, percentiles: CT window / MR percentiles of the intensity pipeline.
        image_mode: resize interpolation, ``"bilinear"`` or ``"bicubic"``.
        dtype: storage type of the slices (``"float16"`` halves the disk use; readers return float32).
        progress: show a progress bar.

    Returns:
        the path of the written datalist JSON.
    """
    exclude = [e.strip() for e in exclude.split(",") if e.strip()] if isinstance(exclude, str) else list(exclude)
    paths = _input_paths(datalist, glob, data_list_key)
    held = _held_out([datalist, holdout_datalist], data_list_key)
    check_leakage(paths, exclude, held, tuple(held))
    transform = volume_transforms(modality, label_key=None, window=window, percentiles=percentiles)
    out_dir = Path(output_dir)
    (out_dir / "slices").mkdir(parents=True, exist_ok=True)
    items, written = [], []
    try:
        jobs = list(zip(paths, _output_names(paths), strict=True))
        for path, name in tqdm(jobs, desc="preparing unlabeled slices", disable=not progress):
            image = transform({"image": path})["image"]
            indices = select_slices(image, None, False, min_body_fraction, body_threshold)
            if not indices:
                logger.warning(f"{path}: no slice passes min_body_fraction={min_body_fraction}, skipped")
                continue
            slices = resize_slices(image[:1], indices, spatial_size, image_mode)[:, 0].numpy().astype(dtype)
            target = out_dir / "slices" / f"{name}.npy"
            with atomic_output(target) as tmp:
                np.save(tmp, slices)
            written.append(target)
            items.append({"image": str(target), "num_slices": len(indices), "source": str(Path(path).resolve())})
    except BaseException:
        for f in written:
            f.unlink(missing_ok=True)
        raise
    settings = {
        "modality": modality,
        "spatial_size": spatial_size,
        "min_body_fraction": min_body_fraction,
        "body_threshold": body_threshold,
        "excluded": exclude,
    }
    result = write_datalist({"training": items, "settings": settings}, out_dir / "unlabeled_datalist.json")
    logger.info(f"{sum(i['num_slices'] for i in items)} slices of {len(items)} volumes -> {result}")
    return result


class UnlabeledSliceDataset(Dataset):
    """Slices written by :func:`prepare_unlabeled`: ``__getitem__`` gives ``{image: [1, S, S] float32}`` after
    ``transform`` (e.g. augmented views for the contrastive teacher), and ``source`` (``"<file> (slice j)"``).

    Args:
        data: the datalist JSON path, or its ``training`` items (``{image: path to [N, S, S] .npy}``).
        transform: per-slice transform.
    """

    def __init__(self, data: str | Sequence[dict], transform: Callable | None = None) -> None:
        items = load_decathlon_datalist(data, False, "training") if isinstance(data, (str, os.PathLike)) else data
        self.arrays = [np.load(item["image"], mmap_mode="r") for item in items]
        records = [
            {"source": item["image"], "volume": i, "slice": j}
            for i, (item, array) in enumerate(zip(items, self.arrays, strict=True))
            for j in range(array.shape[0])
        ]
        super().__init__(records, transform)

    def _transform(self, index: int) -> dict:
        record = self.data[index]
        array = np.asarray(self.arrays[record["volume"]][record["slice"]], dtype=np.float32)
        d = {"image": torch.from_numpy(array)[None], "source": f"{record['source']} (slice {record['slice']})"}
        return apply_transform(self.transform, d) if self.transform is not None else d
