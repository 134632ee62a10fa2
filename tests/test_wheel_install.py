"""A built wheel, installed (not editable) into a fresh virtual environment, runs ``python -m samora_monai demo
--quick`` from an unrelated working directory: the bundles travel as package data and are found through
:func:`samora_monai.utils.bundle_dir`, not through the source checkout.

The environment: ``python -m venv --without-pip`` (no network, nothing of this checkout on its path) plus one
``.pth`` file that appends the site-packages of the interpreter running the tests, so torch, MONAI and the other
dependencies resolve there without being installed again. A ``.pth`` line only appends a folder to ``sys.path``;
the ``.pth`` files inside that folder (an editable install of this project among them) are not processed, and the
venv's own site-packages, where the wheel goes, comes first. The test checks that ``samora_monai`` and the bundle
really load from the venv.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("samora_monai", "bundles", "setup.py", "setup.cfg", "pyproject.toml", "README.md")


def run(cmd: list[str], cwd: Path, timeout: int = 600, **extra_env: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", **extra_env)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{log[-4000:]}"
    return log


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """``pip wheel --no-build-isolation --no-deps`` of a copy of the sources (the checkout is left untouched)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    dist = tmp / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--no-index", "-w", str(dist),
         str(src)], cwd=tmp)
    (whl,) = (tmp / "dist").glob("samora_monai-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv_python(wheel, tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("venv") / "env"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=venv.parent)
    python = venv / "bin" / "python"
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=venv.parent)
    deps = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    (Path(purelib.strip()) / "samora_deps.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], cwd=venv.parent)
    return python


def test_wheel_ships_the_bundles(wheel, venv_python, tmp_path):
    probe = ("import json, samora_monai; from samora_monai.utils import bundle_dir; print(json.dumps("
             "[samora_monai.__file__, str(bundle_dir('samora_synapse')), str(bundle_dir('samora_la'))]))")
    module, synapse, la = json.loads(run([str(venv_python), "-c", probe], cwd=tmp_path).strip().splitlines()[-1])
    venv = venv_python.parent.parent
    for path in (module, synapse, la):
        assert Path(path).is_relative_to(venv) and not Path(path).is_relative_to(ROOT), path
    assert Path(synapse) == Path(module).parent / "bundles" / "samora_synapse"
    for name in ("pretrain.yaml", "pretrain_image.yaml", "train.yaml", "inference.yaml", "metadata.json", "samed.yaml",
                 "hsamora.yaml"):
        assert (Path(synapse) / "configs" / name).is_file() and (Path(la) / "configs" / name).is_file()
    # every package-data file of the source tree (published splits, Auto3DSeg algorithm template, bundle files)
    package = Path(module).parent
    for folder in ("data/splits", "auto3dseg/algorithm_templates"):
        shipped = sorted(p.relative_to(package) for p in (package / folder).rglob("*") if p.is_file())
        source = sorted(p.relative_to(ROOT / "samora_monai") for p in (ROOT / "samora_monai" / folder).rglob("*")
                        if p.is_file() and "__pycache__" not in p.parts)  # fmt: skip
        assert shipped and [p for p in shipped if "__pycache__" not in p.parts] == source, folder
    for name in ("docs/README.md", "LICENSE", "large_files.yml"):
        assert (Path(synapse) / name).is_file() and (Path(la) / name).is_file(), name


def test_installed_quick_demo_runs_from_an_unrelated_directory(venv_python, tmp_path):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    log = run([str(venv_python), "-m", "samora_monai", "demo", "--quick", "--out", "out"], cwd=cwd, timeout=1800,
              SAMORA_CACHE=str(tmp_path / "cache"))  # the stand-in checkpoint goes here, not to ~/.cache
    out = cwd / "out"
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["quick"] is True and list(summary["runs"]) == ["train", "samed", "no_stage1"]
    assert all(0.0 <= r["mean_dice"] <= 1.0 for r in summary["runs"].values())
    assert len(list((tmp_path / "cache").glob("standin_tiny_64_*.pth"))) == 1
    for path in ("bundle/models/experts/pixel.pt", "compare/train/models/model.pt", "compare/comparison.csv",
                 "compare/samed/test/predictions/img0001_seg.nii.gz", "demo_summary.png"):
        assert (out / path).is_file(), path
    assert "total run time" in log
