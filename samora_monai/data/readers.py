"""Readers for the dataset formats SAMora uses, and a loader that turns any of them into a channel-first volume.

Every supported file becomes a ``MetaTensor`` of shape ``[1, X, Y, Z]`` with ``Z`` the slice (axial) axis:

==========================================  ===================  =========================================
file                                        array on disk        conversion to (X, Y, Z)
==========================================  ===================  =========================================
BTCV / MSD ``*.nii`` / ``*.nii.gz``         (X, Y, Z)            as stored (MONAI ``NibabelReader``), affine
                                                                 from the header
TransUNet ``test_vol_h5/caseXXXX.npy.h5``   (D, H, W) = (Z,Y,X)  transposed by (2, 1, 0), i.e. back to the
                                                                 nibabel order the file was made from
LA UA-MT ``<ID>/mri_norm2.h5``              (W, H, D) = (X,Y,Z)  as stored
TransUNet ``train_npz/*_sliceYYY.npz``      (H, W) = (Y, X)      transposed to (X, Y), then a slice axis of
                                                                 length 1 is appended: (X, Y, 1)
DICOM series folder / ``*.dcm``             (rows, cols) slices  (X, Y, Z) = (cols, rows, slices), RAS
                                                                 affine from the series (``data/dicom.py``)
==========================================  ===================  =========================================

HDF5 and npz files carry no geometry, so their affine is ``diag(spacing, 1)`` (``spacing`` defaults to 1 mm; the
LA h5 volumes are 0.625 mm isotropic). NIfTI volumes are not reoriented: slices follow the stored array, as in the
TransUNet preprocessing, and predictions saved with the loaded affine land in the original geometry.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence

import h5py
import numpy as np
from monai.config import KeysCollection, PathLike
from monai.data import ImageReader, NibabelReader
from monai.data.utils import is_supported_format
from monai.transforms import LoadImage, MapTransform
from monai.utils import ensure_tuple
from monai.utils.enums import MetaKeys, SpaceKeys

from samora_monai.data.dicom import DicomSeriesReader
from samora_monai.utils import optional_value

__all__ = ["H5VolumeReader", "NpzSliceReader", "LoadVolumed", "volume_readers"]

AXES_DHW = "DHW"  # TransUNet test_vol_h5: (D, H, W) = transpose(nibabel (X, Y, Z), (2, 1, 0))
AXES_WHD = "WHD"  # UA-MT LA mri_norm2.h5: (W, H, D) = nibabel order


def _single(data: Sequence[PathLike] | PathLike) -> str:
    names = ensure_tuple(data)
    if len(names) != 1:
        raise ValueError(f"expected one file, got {len(names)}: {names}")
    return str(names[0])


def _geometry_meta(array: np.ndarray, spacing: Sequence[float] | None) -> dict:
    spacing = [1.0] * array.ndim if spacing is None else [float(s) for s in ensure_tuple(spacing)]
    if len(spacing) != array.ndim:
        raise ValueError(f"spacing {spacing} does not match a {array.ndim}D array")
    affine = np.diag([*spacing, 1.0])
    return {
        MetaKeys.AFFINE: affine,
        MetaKeys.ORIGINAL_AFFINE: affine.copy(),
        MetaKeys.SPATIAL_SHAPE: np.asarray(array.shape),
        MetaKeys.SPACE: SpaceKeys.RAS,
        MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
    }


class H5VolumeReader(ImageReader):
    """Read one dataset of an HDF5 volume file as an (X, Y, Z) array.

    Args:
        dataset: name of the HDF5 dataset to read (``"image"`` or ``"label"`` in the TransUNet and LA files).
        axes: on-disk axis order, ``"DHW"`` (TransUNet ``*.npy.h5``), ``"WHD"`` (LA ``mri_norm2.h5``) or ``"auto"``
            (``"DHW"`` for names ending in ``.npy.h5``, ``"WHD"`` otherwise).
        spacing: voxel size in mm along (X, Y, Z) for the affine; 1 mm when None.
    """

    def __init__(self, dataset: str = "image", axes: str = "auto", spacing: Sequence[float] | None = None):
        super().__init__()
        if axes not in ("auto", AXES_DHW, AXES_WHD):
            raise ValueError(f"axes must be 'auto', '{AXES_DHW}' or '{AXES_WHD}', got {axes!r}")
        self.dataset, self.axes, self.spacing = dataset, axes, spacing

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        return is_supported_format(filename, ["h5", "hdf5"])

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs) -> tuple[np.ndarray, str]:
        name = _single(data)
        with h5py.File(name, "r") as f:
            if self.dataset not in f:
                raise KeyError(f"{name}: no dataset {self.dataset!r} (has {sorted(f.keys())})")
            array = np.asarray(f[self.dataset][()])
        return array, name

    def get_data(self, img: tuple[np.ndarray, str]) -> tuple[np.ndarray, dict]:
        array, name = img
        if array.ndim != 3:
            raise ValueError(f"{name}: dataset {self.dataset!r} has shape {array.shape}, expected a 3D volume")
        axes = self.axes if self.axes != "auto" else (AXES_DHW if name.lower().endswith(".npy.h5") else AXES_WHD)
        if axes == AXES_DHW:
            array = np.ascontiguousarray(array.transpose(2, 1, 0))
        return array, _geometry_meta(array, self.spacing)


class NpzSliceReader(ImageReader):
    """Read one key of a TransUNet ``caseXXXX_sliceYYY.npz`` 2D slice as an (X, Y, 1) array (a one-slice volume).

    Args:
        key: array name in the npz file (``"image"`` or ``"label"``).
        spacing: in-plane voxel size in mm (X, Y); the slice axis gets 1 mm.
    """

    def __init__(self, key: str = "image", spacing: Sequence[float] | None = None):
        super().__init__()
        self.key, self.spacing = key, spacing

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        return is_supported_format(filename, ["npz"])

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs) -> tuple[np.ndarray, str]:
        name = _single(data)
        with np.load(name, allow_pickle=False) as f:
            if self.key not in f:
                raise KeyError(f"{name}: no array {self.key!r} (has {sorted(f.files)})")
            array = np.asarray(f[self.key])
        return array, name

    def get_data(self, img: tuple[np.ndarray, str]) -> tuple[np.ndarray, dict]:
        array, name = img
        if array.ndim != 2:
            raise ValueError(f"{name}: array {self.key!r} has shape {array.shape}, expected a 2D (H, W) slice")
        array = np.ascontiguousarray(array.T)[..., None]
        spacing = None if self.spacing is None else [*ensure_tuple(self.spacing)[:2], 1.0]
        return array, _geometry_meta(array, spacing)


def volume_readers(name: str = "image", spacing: Sequence[float] | None = None, h5_axes: str = "auto") -> list:
    """The readers for one data key: NIfTI (nibabel), HDF5 dataset ``name``, npz array ``name``, PROMISE12's
    MetaImage ``.mhd`` and pickled-dict ``.npy`` (see :mod:`samora_monai.data.promise12`) and DICOM (a series folder
    or one file, :class:`~samora_monai.data.dicom.DicomSeriesReader`)."""
    from samora_monai.data.promise12 import MetaImageReader, NpyDictReader  # local: promise12 builds on this module

    spacing = optional_value(spacing)
    return [
        NibabelReader(),
        H5VolumeReader(dataset=name, axes=h5_axes, spacing=spacing),
        NpzSliceReader(name, spacing),
        MetaImageReader(),
        NpyDictReader(name, spacing=spacing),
        DicomSeriesReader(),
    ]


class LoadVolumed(MapTransform):
    """Load each key's file as a channel-first ``MetaTensor`` ``[1, X, Y, Z]``, choosing the reader by file type.

    HDF5 and npz files hold image and label in one file: the dataset/array read for a key is ``datasets[key]``
    (default: the key itself), so a datalist item may be ``{"image": "case0001.npy.h5", "label": "case0001.npy.h5"}``.
    The reader is chosen by file suffix (DICOM: a ``.dcm`` file, a file with the DICOM preamble, or a folder of
    one series). A missing file raises ``FileNotFoundError``, an unsupported suffix
    ``ValueError`` and an unreadable file (e.g. a truncated ``.nii.gz``) ``RuntimeError``, all naming the file.

    Args:
        keys: keys of the file paths to load.
        datasets: key -> dataset/array name inside HDF5/npz files.
        spacing: voxel size for formats without geometry (HDF5, npz); see :class:`H5VolumeReader`.
        h5_axes: HDF5 axis order, see :class:`H5VolumeReader`.
        dtype: output data type.
        allow_missing_keys: don't raise if a key is absent from the data dict.
    """

    def __init__(
        self,
        keys: KeysCollection,
        datasets: Mapping[str, str] | None = None,
        spacing: Sequence[float] | None = None,
        h5_axes: str = "auto",
        dtype: np.dtype | type | str | None = np.float32,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        datasets = dict(datasets or {})
        self.readers = {key: volume_readers(str(datasets.get(key, key)), spacing, h5_axes) for key in self.keys}
        self.loaders = {
            key: LoadImage(reader=self.readers[key], image_only=True, ensure_channel_first=True, dtype=dtype)
            for key in self.keys
        }

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            path = d[key]
            if not isinstance(path, (str, os.PathLike)):
                raise TypeError(f"{key}: expected a file path, got {type(path).__name__}")
            if not os.path.exists(path):
                raise FileNotFoundError(f"{key} file not found: {path}")
            reader = next((r for r in self.readers[key] if r.verify_suffix(path)), None)
            if reader is None:
                raise ValueError(
                    f"{key} file {path}: unsupported format (expected .nii, .nii.gz, .h5, .npz, .mhd, .npy, a DICOM "
                    "file or a folder holding one DICOM series)"
                )
            try:
                d[key] = self.loaders[key](path, reader=reader)
            except Exception as e:
                raise RuntimeError(f"cannot read {key} file {path}: {type(e).__name__}: {e}") from e
        return d
