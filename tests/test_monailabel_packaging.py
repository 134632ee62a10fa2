"""Bundle archives (``package_bundle``) and their offline install into a MONAI Label app folder."""

from __future__ import annotations

import json
import os
import shutil
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from samora_monai.apps.monailabel import (
    APP_MAIN,
    OFFLINE_ENV,
    apply_overrides,
    bundle_name_from_archive,
    install_bundle,
    monailabel_install,
    monailabel_serve,
    offline_env,
    server_command,
)
from samora_monai.apps.packaging import bundle_files, package_bundle, read_bundle_version
from samora_monai.handlers.model_meta import model_meta, write_model_meta
from samora_monai.networks import SamoraNet

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "samora_synapse"
ORGANS = ["spleen", "right_kidney", "left_kidney", "gallbladder", "liver", "stomach", "aorta", "pancreas"]


def _make_bundle(root: Path, version: str = "0.3.1") -> Path:
    """A small bundle folder with everything ``package_bundle`` must keep or drop."""
    files = {
        "configs/metadata.json": json.dumps({"version": version, "name": "demo"}),
        "configs/inference.yaml": (
            "variant: vit_b\nimg_size: 224\nnum_workers: 2\nnetwork_def: {_target_: torch.nn.Identity}\n"
        ),
        "configs/train.yaml": "variant: vit_b\nlabel_mapping: {1: 1, 6: 5}\nepochs: 20\nresume_checkpoint: null\n",
        "configs/monailabel_train.json": "{}",
        "configs/logging.conf": "[loggers]\n",
        "docs/README.md": "# demo\n",
        "LICENSE": "Apache-2.0\n",
        "models/latest_checkpoint_epoch=3.pt": "resume state",
        "models/experts/image.pt": "expert",
        "eval/events.out.tfevents.1.host": "tb",
        "eval/predictions/case_seg.nii.gz": "pred",
        "scripts/__pycache__/x.cpython-311.pyc": "bytecode",
        "scripts/helper.py": "x = 1\n",
        "docs/.README.md.swp": "vim",
        "configs/train.yaml.tmp": "partial",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    torch.save({}, root / "models" / "model.pt")  # the state dict of `network_def` (an Identity: empty)
    return root


KEPT = {
    "LICENSE",
    "configs/inference.yaml",
    "configs/logging.conf",
    "configs/metadata.json",
    "configs/train.yaml",
    "docs/README.md",
    "models/model.pt",
    "scripts/helper.py",
}


def test_package_bundle_layout_and_exclusions(tmp_path):
    bundle = _make_bundle(tmp_path / "samora_demo")
    out = package_bundle(str(bundle), out=str(tmp_path / "dist"))
    assert Path(out) == tmp_path / "dist" / "samora_demo_v0.3.1.zip"
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        assert zf.read("samora_demo/models/model.pt") == (bundle / "models" / "model.pt").read_bytes()
    assert sorted(names) == sorted(f"samora_demo/{rel}" for rel in KEPT)
    assert {p.as_posix() for p in bundle_files(bundle)} == KEPT
    assert [p.name for p in (tmp_path / "dist").iterdir()] == ["samora_demo_v0.3.1.zip"]  # no temporary file left


def test_package_bundle_name_and_rewrite(tmp_path):
    bundle = _make_bundle(tmp_path / "folder")
    (bundle / "models" / "model.pt").unlink()
    out = package_bundle(str(bundle), out=str(tmp_path), name="samora_synapse")
    with zipfile.ZipFile(out) as zf:
        assert "samora_synapse/configs/metadata.json" in zf.namelist()
        assert not any(n.startswith("samora_synapse/models/") for n in zf.namelist())
    (bundle / "models" / "model.pt").write_text("new weights")
    assert package_bundle(str(bundle), out=str(tmp_path), name="samora_synapse") == out
    with zipfile.ZipFile(out) as zf:
        assert zf.read("samora_synapse/models/model.pt") == b"new weights"


@pytest.mark.parametrize(
    "metadata, match",
    [
        (None, "metadata not found"),
        ("{not json", "cannot read"),
        ('{"name": "x"}', "cannot read"),
        ('{"version": "1.0 beta"}', "non-empty string"),
    ],
)
def test_package_bundle_bad_metadata(tmp_path, metadata, match):
    bundle = tmp_path / "b"
    (bundle / "configs").mkdir(parents=True)
    if metadata is not None:
        (bundle / "configs" / "metadata.json").write_text(metadata)
    with pytest.raises((FileNotFoundError, ValueError), match=match) as err:
        package_bundle(str(bundle), out=str(tmp_path / "dist"))
    assert str(bundle) in str(err.value)
    assert not (tmp_path / "dist").exists() or not any((tmp_path / "dist").iterdir())


def test_package_bundle_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="bundle folder not found"):
        package_bundle(str(tmp_path / "nope"), out=str(tmp_path))


def test_read_bundle_version(tmp_path):
    assert read_bundle_version(_make_bundle(tmp_path / "b", version="1.2.3")) == "1.2.3"


def test_install_bundle_through_monai_download(tmp_path):
    archive = package_bundle(str(_make_bundle(tmp_path / "samora_demo")), out=str(tmp_path / "dist"))
    app = tmp_path / "app"
    installed = install_bundle(archive, app, overrides={"img_size": 64, "label_mapping": None})
    assert installed == app / "model" / "samora_demo"
    assert (installed / "models" / "model.pt").read_bytes() == (tmp_path / "samora_demo/models/model.pt").read_bytes()
    assert sorted(p.name for p in (app / "model").iterdir()) == ["samora_demo"]  # no zip or staging left
    inference = yaml.safe_load((installed / "configs" / "inference.yaml").read_text())
    train = yaml.safe_load((installed / "configs" / "train.yaml").read_text())
    assert (inference["img_size"], inference["variant"], inference["num_workers"]) == (64, "vit_b", 2)
    assert train["label_mapping"] is None and train["epochs"] == 20 and "img_size" not in train

    # reinstalling replaces the old copy (a file added there disappears)
    (installed / "stale.txt").write_text("old")
    assert install_bundle(archive, app) == installed
    assert not (installed / "stale.txt").exists()
    assert yaml.safe_load((installed / "configs" / "inference.yaml").read_text())["img_size"] == 224


def test_apply_overrides_unknown_id(tmp_path):
    bundle = _make_bundle(tmp_path / "b")
    before = (bundle / "configs" / "train.yaml").read_text()
    with pytest.raises(ValueError, match=r"no config defines \['no_such_id'\]"):
        apply_overrides(bundle, {"no_such_id": 1})
    assert (bundle / "configs" / "train.yaml").read_text() == before


def test_bundle_name_from_archive_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="bundle archive not found"):
        bundle_name_from_archive(tmp_path / "missing.zip")
    (tmp_path / "junk.zip").write_text("not a zip")
    with pytest.raises(ValueError, match="not a zip file"):
        bundle_name_from_archive(tmp_path / "junk.zip")
    with zipfile.ZipFile(tmp_path / "two.zip", "w") as zf:
        zf.writestr("a/configs/metadata.json", "{}")
        zf.writestr("b/configs/metadata.json", "{}")
    with pytest.raises(ValueError, match=r"exactly one top-level folder, found \['a', 'b'\]"):
        bundle_name_from_archive(tmp_path / "two.zip")
    with zipfile.ZipFile(tmp_path / "nometa.zip", "w") as zf:
        zf.writestr("a/configs/train.yaml", "{}")
    with pytest.raises(ValueError, match="a/configs/metadata.json is missing"):
        bundle_name_from_archive(tmp_path / "nometa.zip")


def test_server_command_is_offline():
    cmd = server_command("ws/monaibundle", "imgs", ["samora_synapse", "samora_la"], port=8123, conf={"sam2": "true"})
    assert cmd[:4] == [sys.executable, "-m", "monailabel.main", "start_server"]
    confs = {cmd[i + 1]: cmd[i + 2] for i, a in enumerate(cmd) if a == "--conf"}
    assert confs == {"models": "samora_synapse,samora_la", "zoo_source": "github", "sam2": "true"}
    assert cmd[cmd.index("--port") + 1] == "8123" and cmd[cmd.index("--host") + 1] == "127.0.0.1"
    env = offline_env({"PATH": "/bin", "BUNDLE_DOWNLOAD_SRC": "monaihosting"})
    assert env["PATH"] == "/bin" and env["BUNDLE_DOWNLOAD_SRC"] == "github"
    assert all(env[k] == v for k, v in OFFLINE_ENV.items())


def _tiny_bundle(root: Path, sam_checkpoint: str | None = None, meta: bool = True) -> Path:
    """The Synapse bundle's configs with a tiny 32 px ``model.pt`` and (``meta``) its ``models/model_meta.json``
    (as trained from ``sam_checkpoint`` when given: the tiny network itself has random SAM weights)."""
    shutil.copytree(BUNDLE, root, ignore=shutil.ignore_patterns("eval", "models", "__pycache__"))
    (root / "models").mkdir()
    net = SamoraNet(len(ORGANS), variant="tiny", img_size=32, random_init=True, fusion="hl_attn_lite")
    torch.save(net.state_dict(), root / "models" / "model.pt")
    if meta:
        content = model_meta(net, ORGANS, None)  # a random-weights network records random_init: true
        if sam_checkpoint is not None:  # the sidecar of a model trained from these SAM weights
            content.update(random_init=False, sam_checkpoint=Path(sam_checkpoint).name)
        write_model_meta(root / "models" / "model_meta.json", content)
    return root


def test_install_follows_model_meta(tmp_path):
    """No overrides typed: the installed configs build the network model.pt was trained as (a bundle folder, such
    as the demo's, is packaged on the way)."""
    bundle = _tiny_bundle(tmp_path / "bundle")
    installed = Path(monailabel_install(str(bundle), str(tmp_path / "ws"), name="samora_synapse"))
    assert installed == tmp_path / "ws" / "samora" / "model" / "samora_synapse"
    assert (tmp_path / "ws" / "samora" / "main.py").read_text() == APP_MAIN
    for config in ("inference.yaml", "train.yaml"):
        content = yaml.safe_load((installed / "configs" / config).read_text())
        assert (content["variant"], content["img_size"], content["random_init"]) == ("tiny", 32, True), config
        assert content["network_def"]["fusion"] == "hl_attn_lite" and content["network_def"]["decoder"] == "sam"
    train = yaml.safe_load((installed / "configs" / "train.yaml").read_text())
    assert train["label_mapping"] is None and train["resume_checkpoint"] is None  # INSTALL_OVERRIDES
    assert (installed / "models" / "model_meta.json").is_file()

    with pytest.raises(ValueError, match=r"model.pt was trained otherwise \(img_size: 32 recorded, 64 given\)"):
        monailabel_install(str(bundle), str(tmp_path / "ws"), name="samora_synapse", overrides={"img_size": 64})


def test_install_checks_model_without_meta(tmp_path):
    """Without a sidecar the default configs build ViT-B at 224 px: model.pt (tiny, 32 px) does not match."""
    bundle = _tiny_bundle(tmp_path / "bundle", meta=False)
    with pytest.raises(ValueError, match=r"model.pt does not match .* shape mismatches") as err:
        monailabel_install(str(bundle), str(tmp_path / "ws"), name="samora_synapse")
    assert "--overrides" in str(err.value)
    assert sorted(p.name for p in (tmp_path / "ws" / "samora" / "model").iterdir()) == []  # nothing installed
    overrides = {"variant": "tiny", "img_size": 32, "random_init": True, "network_def#fusion": "hl_attn_lite"}
    installed = monailabel_install(str(bundle), str(tmp_path / "ws"), name="samora_synapse", overrides=overrides)
    assert yaml.safe_load((Path(installed) / "configs" / "inference.yaml").read_text())["img_size"] == 32


def test_missing_sam_checkpoint_stops_install_and_serve(tmp_path):
    bundle = _tiny_bundle(tmp_path / "bundle", sam_checkpoint="/weights/sam_vit_b_01ec64.pth")
    ws = tmp_path / "ws"
    with pytest.raises(FileNotFoundError) as err:
        monailabel_install(str(bundle), str(ws), name="samora_synapse")
    message = str(err.value)
    assert "SAM checkpoint sam_vit_b_01ec64.pth not found" in message and "--sam_checkpoint" in message
    assert "put sam_vit_b_01ec64.pth (the official SAM weights) at " in message
    assert list((ws / "samora" / "model").iterdir()) == []

    weights = tmp_path / "downloads" / "sam_vit_b_01ec64.pth"
    weights.parent.mkdir()
    weights.write_bytes(b"stands for the SAM weights")  # the install checks that the file is there, not its content
    installed = Path(monailabel_install(str(bundle), str(ws), name="samora_synapse", sam_checkpoint=str(weights)))
    for config in ("inference.yaml", "train.yaml"):
        content = yaml.safe_load((installed / "configs" / config).read_text())
        assert content["sam_checkpoint"] == str(weights) and content["random_init"] is False

    weights.unlink()
    (tmp_path / "studies").mkdir()
    with pytest.raises(FileNotFoundError, match=f"put sam_vit_b_01ec64.pth .* at {weights}$"):
        monailabel_serve(str(ws / "samora"), str(tmp_path / "studies"), models="samora_synapse")
    # `monailabel start_server` run by hand loads the app itself: it stops with the same message
    pytest.importorskip("monailabel")
    from samora_monai.apps.monailabel_tasks import SamoraLabelApp

    conf = {"models": "samora_synapse", "zoo_source": "github"}
    with pytest.raises(FileNotFoundError, match=f"put sam_vit_b_01ec64.pth .* at {weights}$"):
        SamoraLabelApp(str(ws / "samora"), str(tmp_path / "studies"), conf)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_follow_umask(tmp_path, umask):
    """The archive, the app's main.py, the rewritten configs and the sidecar get the mode of a plain write."""
    old = os.umask(umask)
    try:
        bundle = _make_bundle(tmp_path / "samora_demo")
        archive = Path(package_bundle(str(bundle), out=str(tmp_path / "dist")))
        installed = Path(monailabel_install(str(archive), str(tmp_path / "ws"), overrides={"img_size": 64}))
        sidecar = write_model_meta(tmp_path / "models" / "model_meta.json", {"variant": "tiny"})
    finally:
        os.umask(old)
    written = [archive, tmp_path / "ws" / "samora" / "main.py", installed / "configs" / "inference.yaml", sidecar]
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in written} == {p.name: oct(0o666 & ~umask) for p in written}
