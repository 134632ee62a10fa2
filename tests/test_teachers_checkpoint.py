"""Teacher files are self-describing; wrong files and missing teachers fail loudly."""

import os

import pytest
import torch

from samora_monai.teachers import (
    ContrastiveTeacher,
    MAETeacher,
    build_teacher,
    load_teacher,
    read_teacher_metadata,
    save_teacher,
)


def test_mae_round_trip_keeps_weights_and_metadata(tmp_path, tiny_mae):
    torch.manual_seed(0)
    mae = MAETeacher(**tiny_mae).eval()
    path = save_teacher(mae, tmp_path / "mae.pt", summary={"iterations": 30, "final_loss": 0.13})
    assert os.listdir(tmp_path) == ["mae.pt"]  # no temporary file left behind
    meta = read_teacher_metadata(path)
    assert (meta["kind"], meta["level"], meta["img_size"]) == ("mae", "patch", 64)
    assert meta["config"]["hidden_size"] == 32 and meta["summary"] == {"iterations": 30, "final_loss": 0.13}

    loaded = load_teacher(path, "patch", img_size=64)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    x = torch.rand(2, 1, 64, 64)
    ids = torch.tensor([[5, 1, 9, 14], [0, 3, 2, 8]])
    torch.testing.assert_close(loaded.encode_visible(x, ids_keep=ids)[0], mae.encode_visible(x, ids_keep=ids)[0])


def test_contrastive_round_trip(tmp_path):
    teacher = ContrastiveTeacher(arch="resnet18", proj_hidden_dim=32, proj_dim=16, img_size=32).eval()
    path = save_teacher(teacher, tmp_path / "simclr.pt")
    loaded = build_teacher("image", checkpoint=path)
    assert loaded.config == teacher.config
    x = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(loaded.embed(x), teacher.embed(x))


def test_mismatched_files_name_the_file(tmp_path, tiny_mae):
    mae_path = save_teacher(MAETeacher(**tiny_mae), tmp_path / "mae.pt")
    with pytest.raises(ValueError, match=r"mae\.pt.*'mae' teacher for level 'patch'.*level 'image'"):
        load_teacher(mae_path, "image")
    with pytest.raises(ValueError, match=r"mae\.pt.*built for 64 px.*student uses 128 px"):
        load_teacher(mae_path, "patch", img_size=128)
    other = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match=r"weights\.pt is not a samora_monai teacher checkpoint"):
        load_teacher(other, "patch")
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        load_teacher(tmp_path / "missing.pt", "patch")
    broken = read_teacher_metadata(mae_path)
    broken["config"]["hidden_size"] = 64
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match=r"broken\.pt: weights do not match"):
        load_teacher(tmp_path / "broken.pt", "patch")


def test_student_refuses_missing_teacher_unless_explicitly_allowed(tiny_mae):
    with pytest.raises(RuntimeError, match="no patch-level teacher checkpoint.*pretrain_teacher_patch"):
        build_teacher("patch", **tiny_mae)
    with pytest.raises(RuntimeError, match="no image-level teacher checkpoint"):
        build_teacher("image")
    with pytest.warns(UserWarning, match="randomly initialised and untrained"):
        teacher = build_teacher("patch", allow_untrained=True, **tiny_mae)
    assert isinstance(teacher, MAETeacher) and not teacher.training
    with pytest.raises(ValueError, match="levels"):
        build_teacher("pixel", allow_untrained=True)
