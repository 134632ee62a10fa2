"""Shared pytest settings and fixtures: small thread pools (2-core machines), the one set of tiny overrides, the one
phantom generator and the writers of every supported file format, each a session fixture named as the helper.

File-format writers (``write_nifti``, ``write_transunet_h5``, ``write_la_h5``, ``write_npz``) write one given array;
case writers (``write_nifti_cases``, ``write_msd_heart``, ``write_la_cases``, ``write_transunet_cases``) write whole
dataset layouts of :func:`phantom` cases and return their ``[{"image", "label"}]`` items.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from tiny_settings import BUNDLES, ENV, TINY, TINY_MAE

from samora_monai.utils import bundle_dir

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

VOLUME_SHAPE = (32, 24, 8)  # (X, Y, Z), deliberately non-square
VOLUME_AFFINE = np.array([[0.8, 0, 0, -10.0], [0, 0.7, 0, 5.0], [0, 0, 2.5, 30.0], [0, 0, 0, 1]])
PHANTOM_SHAPE = (48, 48, 6)
PHANTOM_AFFINE = np.array([[-0.8, 0, 0, 20.0], [0, 0.8, 0, -15.0], [0, 0, 2.5, 30.0], [0, 0, 0, 1]])


def _volume(shape=VOLUME_SHAPE, seed: int = 0) -> np.ndarray:
    """CT-like volume in HU whose voxels are all distinct (so any axis mix-up shows)."""
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    return (x / x.max() * 1200 - 1000 + np.random.default_rng(seed).random(shape)).astype(np.float32)


def _labels(shape=VOLUME_SHAPE, ids=(1, 6, 11), slices=(2, 3, 4)) -> np.ndarray:
    """Label volume with a blob per id in the given slices only."""
    lab = np.zeros(shape, dtype=np.uint8)
    for k, i in enumerate(ids):
        lab[4 + 6 * k : 8 + 6 * k, 4:10, list(slices)] = i
    return lab


def _phantom(seed: int, ids: tuple[int, ...], shape: tuple[int, ...] = PHANTOM_SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """(image HU-like float, label) with boxes labelled by ``ids``."""
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.uint8)
    x, y = shape[0], shape[1]
    boxes = [(slice(4, x // 3), slice(4, y // 3)), (slice(x // 2, x - 6), slice(6, y // 2)),
             (slice(x // 2, x - 4), slice(y // 2 + 4, y - 4)), (slice(2, 6), slice(y - 8, y - 2))]  # fmt: skip
    for i, (bx, by) in zip(ids, boxes, strict=False):
        label[bx, by, :] = i
    image = rng.normal(0, 20, shape) + 80 * (label > 0) + 10 * label - 40
    return image.astype(np.float32), label


def _write_nifti(path: Path, array: np.ndarray, affine: np.ndarray = VOLUME_AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def _write_h5(path: Path, image: np.ndarray, label: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["image"], f["label"] = image, label
    return path


def _write_transunet_h5(path: Path, image_xyz: np.ndarray, label_xyz: np.ndarray) -> Path:
    """TransUNet ``test_vol_h5``: (D, H, W) = transpose of the nibabel (X, Y, Z) array."""
    return _write_h5(path, image_xyz.transpose(2, 1, 0), label_xyz.transpose(2, 1, 0).astype(np.float32))


def _write_la_h5(path: Path, image_xyz: np.ndarray, label_xyz: np.ndarray) -> Path:
    """UA-MT LA ``mri_norm2.h5``: (W, H, D)."""
    return _write_h5(path, image_xyz, label_xyz.astype(np.uint8))


def _write_npz(path: Path, image_xy: np.ndarray, label_xy: np.ndarray) -> Path:
    """TransUNet ``train_npz`` slice: (H, W) = slice z of the (D, H, W) volume."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, image=image_xy.T.astype(np.float32), label=label_xy.T.astype(np.float32))
    return path


def _write_cases(folder: Path, names: list[tuple[str, str]], cases: list[tuple[np.ndarray, np.ndarray]]) -> list[dict]:
    """``imagesTr/<image name>`` + ``labelsTr/<label name>`` NIfTI pairs on :data:`PHANTOM_AFFINE`."""
    items = []
    for (img_name, lab_name), (image, label) in zip(names, cases, strict=True):
        img = _write_nifti(folder / "imagesTr" / img_name, image, PHANTOM_AFFINE)
        lab = _write_nifti(folder / "labelsTr" / lab_name, label, PHANTOM_AFFINE)
        items.append({"image": str(img), "label": str(lab)})
    return items


def _write_nifti_cases(folder: Path, ids=(1, 6, 11, 13), n: int = 3, prefix=("img", "label"), dtype=np.int16):
    """BTCV-style ``imagesTr/img000N.nii.gz`` + ``labelsTr/label000N.nii.gz``."""
    cases = [(image.astype(dtype), label) for image, label in (_phantom(c, ids) for c in range(1, n + 1))]
    names = [(f"{prefix[0]}{c:04d}.nii.gz", f"{prefix[1]}{c:04d}.nii.gz") for c in range(1, n + 1)]
    return _write_cases(folder, names, cases)


def _write_msd_heart(folder: Path, n: int = 3) -> list[dict]:
    """MSD Task02_Heart layout: ``imagesTr/la_00N.nii.gz`` and ``labelsTr/la_00N.nii.gz`` (MR, labels 0/1)."""
    cases = [(image * 5 + 300, label) for image, label in (_phantom(10 + c, (1,)) for c in range(1, n + 1))]
    return _write_cases(folder, [(f"la_{c:03d}.nii.gz",) * 2 for c in range(1, n + 1)], cases)


def _write_la_cases(folder: Path, n: int = 3) -> list[dict]:
    """UA-MT LA layout ``<ID>/mri_norm2.h5`` with datasets image/label stored (W, H, D)."""
    items = []
    for c in range(n):
        image, label = _phantom(20 + c, (1,))
        path = _write_la_h5(folder / f"CASE{c:02d}LA" / "mri_norm2.h5", (image - image.mean()) / image.std(), label)
        items.append({"image": str(path), "label": str(path)})
    return items


def _write_transunet_cases(folder: Path) -> tuple[list[dict], list[dict]]:
    """TransUNet Synapse: ``train_npz/caseXXXX_sliceYYY.npz`` (H, W) slices and ``test_vol_h5/caseXXXX.npy.h5``
    (D, H, W) volumes, images already in [0, 1] and labels in 0..8. Returns (training, testing) items."""
    train, test = [], []
    for c in (5, 6):
        image, label = _phantom(c, (1, 5, 8, 3))
        image = np.clip((image + 125) / 400, 0, 1)
        for z in range(0, PHANTOM_SHAPE[2], 2):
            path = _write_npz(folder / "train_npz" / f"case{c:04d}_slice{z:03d}.npz", image[..., z], label[..., z])
            train.append({"image": str(path), "label": str(path)})
    for c in (1, 2):
        image, label = _phantom(c, (1, 5, 8, 3))
        path = _write_transunet_h5(folder / "test_vol_h5" / f"case{c:04d}.npy.h5", np.clip((image + 125) / 400, 0, 1),
                                   label)
        test.append({"image": str(path), "label": str(path)})
    return train, test


def _write_datalist(path: Path, **sections: list) -> str:
    path.write_text(json.dumps(sections, indent=1))
    return str(path)


def _smooth_images(n: int = 4, size: int = 64) -> torch.Tensor:
    """[n, 1, size, size] sinusoid patterns in [0, 1]."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    freqs = [(1.0, 0.5), (0.5, 2.0), (2.0, 1.0), (1.5, 1.5), (0.7, 0.3), (3.0, 0.2)][:n]
    return torch.stack([0.5 + 0.5 * torch.sin(6.28 * (f * xx + g * yy)) for f, g in freqs]).unsqueeze(1)


def _shared(name: str, value: object) -> Callable:
    """A session fixture ``name`` giving ``value`` (copied when it is a dict, so a test cannot change it for others)."""

    @pytest.fixture(scope="session", name=name)
    def fixture():
        return dict(value) if isinstance(value, dict) else value

    return fixture


# the fixtures, named as the helpers: a test asks for ``write_nifti``, ``tiny``, ``phantom``, ...
for _name, _value in {
    "bundles": BUNDLES, "tiny": TINY, "tiny_mae": TINY_MAE, "volume": _volume, "labels": _labels,
    "phantom": _phantom, "write_nifti": _write_nifti, "write_transunet_h5": _write_transunet_h5,
    "write_la_h5": _write_la_h5, "write_npz": _write_npz, "write_nifti_cases": _write_nifti_cases,
    "write_msd_heart": _write_msd_heart, "write_la_cases": _write_la_cases,
    "write_transunet_cases": _write_transunet_cases, "write_json_datalist": _write_datalist,
    "smooth_images": _smooth_images,
}.items():
    globals()[f"_{_name}_fixture"] = _shared(_name, _value)


def _args(overrides: dict) -> list[str]:
    out = []
    for k, v in overrides.items():
        out += [f"--{k}", v if isinstance(v, str) else repr(v)]
    return out


@pytest.fixture(scope="session", name="bundle_cli")
def bundle_cli_fixture(tiny):
    """``bundle_cli(bundle, command, configs, overrides, cwd)``: ``python -m monai.bundle <command> --config_file
    <configs> --<key> <value> ...`` from ``cwd`` with the tiny overrides under ``overrides``."""

    def bundle_cli(bundle: str, command: list[str], configs: list[str], overrides: dict, cwd: Path, ok: bool = True,
                   launcher: list[str] | None = None) -> subprocess.CompletedProcess:  # fmt: skip
        files = [str(bundle_dir(f"samora_{bundle}") / "configs" / c) for c in configs]
        config_arg = files[0] if len(files) == 1 else repr(files)
        cmd = [*(launcher or [sys.executable]), "-m", "monai.bundle", *command, "--config_file", config_arg]
        result = subprocess.run(
            [*cmd, *_args({**tiny, **overrides})], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300
        )
        if ok and result.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
        return result

    return bundle_cli


@pytest.fixture(scope="session", name="assert_model_loads")
def assert_model_loads_fixture(tiny):
    """``assert_model_loads(bundle, root, **overrides)``: ``<root>/models/model.pt`` loads strictly into the bundle's
    ``network_def``."""

    def assert_model_loads(bundle: str, root: Path, **overrides) -> None:
        parser = ConfigParser()
        parser.read_config(str(bundle_dir(f"samora_{bundle}") / "configs" / "inference.yaml"))
        parser.update({**tiny, "bundle_root": str(root), **overrides})
        net = parser.get_parsed_content("network_def")
        state = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)  # the whole network, not a partial file
        assert set(state) == set(net.state_dict())

    return assert_model_loads
