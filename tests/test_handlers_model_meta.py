"""``models/model_meta.json``: the sidecar describing the network in ``model.pt``, and the handler writing it."""

from __future__ import annotations

import os

import pytest
import torch
from ignite.engine import Engine, Events

from samora_monai.handlers import ModelMetaWriter
from samora_monai.handlers.model_meta import model_meta, read_model_meta, write_model_meta
from samora_monai.networks import SamoraNet


@pytest.fixture(scope="module")
def tiny_net():
    return SamoraNet(2, variant="tiny", img_size=32, random_init=True, fusion="hl_attn_lite", decoder="hsam")


def test_model_meta_fields(tiny_net, tmp_path, monkeypatch):
    meta = model_meta(tiny_net, ["liver", "spleen"], None)
    assert meta == {
        "backbone": "sam",
        "variant": "tiny",
        "img_size": 32,
        "in_channels": 1,
        "num_classes": 2,
        "levels": ["image", "patch", "pixel"],
        "lora_rank": 4,
        "decoder": "hsam",
        "class_names": ["liver", "spleen"],
        "fusion": "hl_attn_lite",
        "random_init": True,
        "sam_checkpoint": None,
    }
    # a DDP-style wrapper is unwrapped; a random-init network ignored sam_checkpoint, so none is recorded
    wrapper = torch.nn.Module()
    wrapper.module = tiny_net
    ignored = model_meta(wrapper, ["liver", "spleen"], "/data/weights/sam_vit_b_01ec64.pth")
    assert ignored == meta
    # a network built from a checkpoint: the checkpoint is recorded by its file name only
    monkeypatch.setattr(tiny_net, "sam_source", "/data/weights/sam_vit_b_01ec64.pth")
    meta = model_meta(wrapper, ["liver", "spleen"], "/data/weights/sam_vit_b_01ec64.pth")
    assert (meta["random_init"], meta["sam_checkpoint"]) == (False, "sam_vit_b_01ec64.pth")
    assert {**meta, "random_init": True, "sam_checkpoint": None} == ignored  # nothing else changes
    path = write_model_meta(tmp_path / "models" / "model_meta.json", meta)
    assert read_model_meta(path) == meta


def test_model_meta_errors(tiny_net, tmp_path):
    with pytest.raises(ValueError, match=r"1 class names \['liver'\] for 2 classes"):
        model_meta(tiny_net, ["liver"], None)
    with pytest.raises(TypeError, match="needs a SamoraNet; Linear has no"):
        model_meta(torch.nn.Linear(2, 2), ["a", "b"], None)
    bad = tmp_path / "model_meta.json"
    for text, match in [
        ("{oops", "not valid JSON"),
        ("[1]", "expected a JSON object"),
        ('{"variant": "tiny"}', "missing"),
        (
            '{"backbone": "sam", "variant": "tiny", "img_size": 32, "num_classes": 2, "random_init": true, '
            '"sam_checkpoint": "sam_vit_b_01ec64.pth"}',
            "random_init=True with sam_checkpoint='sam_vit_b_01ec64.pth'",
        ),
    ]:
        bad.write_text(text)
        with pytest.raises(ValueError, match=match) as err:
            read_model_meta(bad)
        assert str(bad) in str(err.value)


def test_writer_follows_model_file(tiny_net, tmp_path):
    """The sidecar is written in the epochs that rewrote model.pt, never beside a model.pt of an earlier run."""
    model_file = tmp_path / "models" / "model.pt"
    model_file.parent.mkdir()
    model_file.write_bytes(b"an earlier run")
    saved_in = {2, 4}  # the 'evaluator' saves a new best model in epochs 2 and 4

    def save_best(engine):
        if engine.state.epoch in saved_in:
            torch.save({"epoch": engine.state.epoch}, model_file)
            os.utime(model_file, ns=(engine.state.epoch * 10**9, engine.state.epoch * 10**9))

    writes = []

    def snapshot(engine):
        meta_file = model_file.with_name("model_meta.json")
        # None: no sidecar; True: written this epoch; False: only the marker left by the previous snapshot
        writes.append(meta_file.read_text() != "{}" if meta_file.is_file() else None)
        if meta_file.is_file():
            meta_file.write_text("{}")

    trainer = Engine(lambda e, b: None)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, save_best)  # stands for the ValidationHandler
    writer = ModelMetaWriter(tiny_net, model_file, ["liver", "spleen"], None)
    writer.attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, snapshot)
    trainer.run([0], max_epochs=1)
    assert writes == [None]  # epoch 1 saved nothing: no sidecar beside the earlier run's model.pt
    trainer.run([0], max_epochs=4)
    assert writes == [None, True, False, True]
    meta_file = model_file.with_name("model_meta.json")
    meta_file.unlink()
    writer.check()  # nothing changed since the last write
    assert not meta_file.exists()
    model_file.write_bytes(b"new")
    writer.check()
    assert read_model_meta(meta_file)["img_size"] == 32
