"""Writing predictions without partial files.

``atomic_output`` gives a temporary path beside the target and renames it onto the target only when the
block succeeds; on any error the temporary file is removed and the target is left as it was.
``SaveLabelVolumed`` uses it to write a label NIfTI in the geometry of the input image. Typical bundle
postprocessing (the prediction is logits ``[K+1, X, Y, Z]`` from the inferer)::

    Activationsd(keys="pred", softmax=True)
    AsDiscreted(keys="pred", argmax=True)                 # -> [1, X, Y, Z]
    Invertd(keys="pred", transform=@preprocessing, orig_keys="image", nearest_interp=True)
    SaveLabelVolumed(keys="pred", output_dir=@output_dir)  # -> <output_dir>/<image stem>_seg.nii.gz
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, SaveImaged

from samora_monai.utils import atomic_output, case_name

__all__ = ["SaveLabelVolumed", "atomic_output", "case_name", "prediction_path"]

logger = logging.getLogger(__name__)

def prediction_path(image_path: str | os.PathLike, output_dir: str | os.PathLike, postfix: str = "seg") -> Path:
    """Where the prediction for ``image_path`` is written: ``<output_dir>/<case>_<postfix>.nii.gz``.

    The one naming rule shared by ``SaveLabelVolumed`` and ``samora_monai.metrics.evaluate_folder``.
    """
    stem = case_name(image_path)
    return Path(output_dir) / (f"{stem}_{postfix}.nii.gz" if postfix else f"{stem}.nii.gz")


def _source_path(meta: Mapping) -> str:
    src = meta.get("filename_or_obj")
    if isinstance(src, (list, tuple)):
        src = src[0] if src else None
    if not src:
        raise ValueError("cannot name the prediction: the image has no 'filename_or_obj' in its metadata")
    return str(src)


class SaveLabelVolumed(SaveImaged):
    """Save a channel-first integer label volume ``[1, X, Y, Z]`` as NIfTI, atomically.

    A ``SaveImaged`` by type only, so that tools which drop savers from a bundle's postprocessing recognise it
    (MONAI Label's ``BundleInferTask`` removes every ``isinstance(t, SaveImaged)`` and returns the label itself);
    it writes with nibabel through :func:`atomic_output`, not with ``SaveImaged``'s ``SaveImage``.

    The affine is the prediction's own (``MetaTensor.affine``, i.e. after ``Invertd`` the input file's affine).
    With ``ref_key`` set, the prediction's shape and affine are checked against the reference image's original
    geometry (``spatial_shape`` and ``original_affine`` recorded by ``LoadImaged``) before anything is written;
    a mismatch (typically a missing ``Invertd``) raises ``RuntimeError`` naming the input file.

    Args:
        keys: keys of the label volumes to save.
        output_dir: destination folder (created when missing).
        output_postfix: the file is ``<output_dir>/<image stem>_<output_postfix>.nii.gz``.
        ref_key: key of the input image whose metadata names the file and gives the original geometry;
            ``None`` takes the name from the prediction's own metadata and skips the geometry check.
        output_dtype: on-disk integer type.
        atol: tolerance for the affine comparison.
        allow_missing_keys: as for every ``MapTransform``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | os.PathLike,
        output_postfix: str = "seg",
        ref_key: str | None = "image",
        output_dtype: type | str = np.uint8,
        atol: float = 1e-4,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)  # not SaveImaged's: no SaveImage writer is built
        self.output_dir = Path(output_dir)
        self.output_postfix = output_postfix
        self.ref_key = ref_key
        self.output_dtype = np.dtype(output_dtype)
        self.atol = atol

    def set_options(self, init_kwargs=None, data_kwargs=None, meta_kwargs=None, write_kwargs=None):
        raise NotImplementedError("SaveLabelVolumed takes its options in the constructor, not set_options")

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            self.save(d[key], d[self.ref_key] if self.ref_key is not None else None)
        return d

    def save(self, pred: torch.Tensor, ref: torch.Tensor | None = None) -> Path:
        """Validate ``pred`` and write it; returns the written path."""
        source = ref if ref is not None else pred
        meta = source.meta if isinstance(source, MetaTensor) else {}
        src = _source_path(meta)
        arr = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
        if arr.ndim != 4:
            raise ValueError(f"prediction for {src} must be a 3D label volume [1, X, Y, Z], got shape {arr.shape}")
        if arr.shape[0] != 1:
            raise ValueError(
                f"prediction for {src} has {arr.shape[0]} channels; apply AsDiscreted(argmax=True) before saving"
            )
        arr = arr[0]
        if not np.all(np.isfinite(arr)) or np.any(np.abs(arr - np.round(arr)) > 1e-3):
            raise ValueError(f"prediction for {src} is not an integer label volume")
        info = np.iinfo(self.output_dtype)
        if arr.min() < info.min or arr.max() > info.max:
            raise ValueError(f"prediction for {src} has labels outside the range of {self.output_dtype}")
        affine = self._affine(pred, src)
        if ref is not None:
            self._check_geometry(arr.shape, affine, meta, src)
        out = prediction_path(src, self.output_dir, self.output_postfix)
        image = nib.Nifti1Image(np.round(arr).astype(self.output_dtype), affine)
        image.set_qform(affine, code=1)
        image.set_sform(affine, code=1)
        with atomic_output(out) as tmp:
            nib.save(image, tmp)
        logger.info("saved %s", out)
        return out

    @staticmethod
    def _affine(pred: torch.Tensor, src: str) -> np.ndarray:
        if not isinstance(pred, MetaTensor):
            raise ValueError(f"prediction for {src} has no affine (not a MetaTensor)")
        affine = np.asarray(pred.affine.detach().cpu(), dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"prediction for {src} has a {affine.shape} affine, expected 4x4")
        return affine

    def _check_geometry(self, shape: tuple[int, ...], affine: np.ndarray, meta: Mapping, src: str) -> None:
        expected_shape = meta.get("spatial_shape")
        if expected_shape is not None:
            expected_shape = tuple(int(s) for s in np.asarray(expected_shape).reshape(-1))
            if tuple(shape) != expected_shape:
                raise RuntimeError(
                    f"prediction for {src} has shape {tuple(shape)} but the input has {expected_shape}; "
                    "invert the preprocessing (Invertd) before saving"
                )
        expected_affine = meta.get("original_affine")
        if expected_affine is not None:
            expected_affine = np.asarray(torch.as_tensor(expected_affine).cpu(), dtype=np.float64).reshape(4, 4)
            if not np.allclose(affine, expected_affine, atol=self.atol):
                raise RuntimeError(
                    f"prediction for {src} has affine\n{affine}\nbut the input has\n{expected_affine}; "
                    "invert the preprocessing (Invertd) before saving"
                )
