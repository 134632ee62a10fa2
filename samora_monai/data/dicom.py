"""DICOM input: a series folder or a single DICOM file, read by MONAI's ``PydicomReader``.

A series folder becomes ``[X, Y, Z]`` (X along the columns, Y along the rows, Z the slices in ``InstanceNumber``
order) with the affine of the series in RAS, as ``NibabelReader`` gives for NIfTI, so a prediction saved with that
affine (:class:`~samora_monai.inferers.SaveLabelVolumed`) is a NIfTI in the series' geometry. A single 2D DICOM file
becomes a one-slice volume ``[X, Y, 1]``. Pixel values are rescaled (``RescaleSlope``/``RescaleIntercept``, i.e. HU
for CT). A folder holding several series is refused, naming each ``SeriesInstanceUID``, and so is a file without
``ImageOrientationPatient``/``ImagePositionPatient`` (MONAI would fall back to an identity affine).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence

import numpy as np
from monai.config import PathLike
from monai.data import PydicomReader
from monai.utils import ensure_tuple, optional_import
from monai.utils.enums import MetaKeys

pydicom, has_pydicom = optional_import("pydicom")

__all__ = ["DicomSeriesReader", "dicom_files", "is_dicom_input", "series_uids"]

DICOM_SUFFIXES = (".dcm", ".dicom")
GEOMETRY_TAGS = ("ImageOrientationPatient", "ImagePositionPatient")


def _is_dicom_file(path: str) -> bool:
    return path.lower().endswith(DICOM_SUFFIXES) or (has_pydicom and bool(pydicom.misc.is_dicom(path)))


def dicom_files(folder: PathLike) -> list[str]:
    """The DICOM files directly inside ``folder`` (by suffix or by the ``DICM`` preamble), sorted."""
    entries = sorted(os.path.join(folder, f) for f in os.listdir(folder))
    return [f for f in entries if os.path.isfile(f) and _is_dicom_file(f)]


def is_dicom_input(path: PathLike) -> bool:
    """Whether ``path`` is a DICOM file or a folder holding DICOM files."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return bool(dicom_files(path))
    return os.path.isfile(path) and _is_dicom_file(path)


def series_uids(files: Sequence[PathLike]) -> Counter:
    """``SeriesInstanceUID`` -> number of ``files`` in that series (headers only are read)."""
    uids: Counter = Counter()
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        uids[str(getattr(ds, "SeriesInstanceUID", "<no SeriesInstanceUID>"))] += 1
    return uids


class DicomSeriesReader(PydicomReader):
    """``PydicomReader`` for one series folder or one DICOM file, as a 3D ``[X, Y, Z]`` array.

    Args:
        kwargs: passed to ``PydicomReader`` (``affine_lps_to_ras`` and ``swap_ij`` stay at their defaults so the
            array and affine follow the NIfTI convention of the other readers).
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(fname_regex=None, **kwargs)  # None: pick the series' files by pydicom.misc.is_dicom

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        return all(is_dicom_input(f) for f in ensure_tuple(filename))

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs):
        for name in ensure_tuple(data):
            if os.path.isdir(name):
                files = dicom_files(name)
                if not files:
                    raise ValueError(f"{name}: no DICOM files in this folder")
                uids = series_uids(files)
                if len(uids) > 1:
                    listed = ", ".join(f"{uid} ({n} files)" for uid, n in sorted(uids.items()))
                    raise ValueError(
                        f"{name}: the folder mixes {len(uids)} DICOM series: {listed}; put each series "
                        "(SeriesInstanceUID) in its own folder and give that folder"
                    )
        datasets = super().read(data, **kwargs)
        for ds in datasets if isinstance(datasets, list) else [datasets]:
            missing = [t for t in GEOMETRY_TAGS if not hasattr(ds, t)]
            if missing:
                raise ValueError(
                    f"{getattr(ds, 'filename', data)}: DICOM file without {' and '.join(missing)}, so the geometry of "
                    "the volume is unknown; export the series with its geometry tags (or convert it to NIfTI)"
                )
        return datasets

    def get_data(self, data) -> tuple[np.ndarray, dict]:
        array, meta = super().get_data(data)
        if array.ndim == 2:  # one 2D file: a one-slice volume
            array = array[..., None]
            meta[MetaKeys.SPATIAL_SHAPE] = np.asarray([*array.shape])
        meta[MetaKeys.SPATIAL_SHAPE] = np.asarray(meta[MetaKeys.SPATIAL_SHAPE])
        return array, meta
