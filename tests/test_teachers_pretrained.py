"""Pretrained teachers from local files: torchvision ResNet-50 state dicts and official MAE checkpoints."""

import pytest
import torch
import torch.nn.functional as F
from tiny_settings import TINY_MAE
from torchvision import models

from samora_monai.teachers import ContrastiveTeacher, MAETeacher, build_teacher, read_teacher_metadata, save_teacher

DIM, DEPTH, MLP, GRID = TINY_MAE["hidden_size"], TINY_MAE["num_layers"], TINY_MAE["mlp_dim"], 4  # 64 px / 16


def randomised(state):
    g = torch.Generator().manual_seed(1)
    return {k: (torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()) for k, v in state.items()}


@pytest.fixture(scope="module")
def resnet50_state():
    """A torchvision-layout ResNet-50 state dict with random values in every tensor (BN statistics included)."""
    return randomised(models.resnet50(weights=None).state_dict())


def mae_state(decoder=False):
    """An official-MAE-format encoder state (random values): 64 px, patch 16, 3 channels."""
    g = torch.Generator().manual_seed(2)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    state = {"cls_token": r(1, 1, DIM), "pos_embed": r(1, 1 + GRID * GRID, DIM)}
    state.update({"patch_embed.proj.weight": r(DIM, 3, 16, 16), "patch_embed.proj.bias": r(DIM)})
    for i in range(DEPTH):
        shapes = {
            "norm1": [(DIM,), (DIM,)], "attn.qkv": [(3 * DIM, DIM), (3 * DIM,)], "attn.proj": [(DIM, DIM), (DIM,)],
            "norm2": [(DIM,), (DIM,)], "mlp.fc1": [(MLP, DIM), (MLP,)], "mlp.fc2": [(DIM, MLP), (DIM,)],
        }  # fmt: skip
        for name, (w, b) in shapes.items():
            state[f"blocks.{i}.{name}.weight"], state[f"blocks.{i}.{name}.bias"] = r(*w), r(*b)
    state.update({"norm.weight": r(DIM), "norm.bias": r(DIM)})
    if decoder:
        state.update({"mask_token": r(1, 1, 16), "decoder_embed.weight": r(16, DIM), "decoder_pos_embed": r(1, 17, 16)})
    return state


def official_mae_encoder(state, x):
    """The official MAE encoder (timm ViT blocks) with nothing masked, written out: features [B, N, D], no CLS."""
    tokens = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=16)
    tokens = tokens.flatten(2).transpose(1, 2) + state["pos_embed"][:, 1:]
    cls = (state["cls_token"] + state["pos_embed"][:, :1]).expand(x.shape[0], -1, -1)
    h = torch.cat([cls, tokens], 1)
    heads = TINY_MAE["num_heads"]

    def ln(t, name):
        return F.layer_norm(t, (DIM,), state[f"{name}.weight"], state[f"{name}.bias"], eps=1e-6)

    for i in range(DEPTH):
        p = f"blocks.{i}."
        qkv = F.linear(ln(h, p + "norm1"), state[p + "attn.qkv.weight"], state[p + "attn.qkv.bias"])
        q, k, v = qkv.unflatten(-1, (3, heads, -1)).permute(2, 0, 3, 1, 4)  # each [B, heads, L, d]
        att = ((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5).softmax(-1) @ v
        h = h + F.linear(att.transpose(1, 2).flatten(2), state[p + "attn.proj.weight"], state[p + "attn.proj.bias"])
        mlp = F.gelu(F.linear(ln(h, p + "norm2"), state[p + "mlp.fc1.weight"], state[p + "mlp.fc1.bias"]))
        h = h + F.linear(mlp, state[p + "mlp.fc2.weight"], state[p + "mlp.fc2.bias"])
    return ln(h, "norm")[:, 1:]


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model_module"])
def test_resnet50_state_dict_loads_every_tensor(tmp_path, resnet50_state, wrap):
    state = dict(resnet50_state)
    if wrap == "plain":  # an older torchvision file: no BatchNorm counters
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
        payload = state
    elif wrap == "state_dict":
        payload = {"state_dict": state, "epoch": 100}
    else:  # a DDP-trained SimCLR checkpoint in torchvision layout, without the classifier
        payload = {"model": {f"module.{k}": v for k, v in state.items() if not k.startswith("fc.")}}
    torch.save(payload, tmp_path / "r50.pth")
    teacher = ContrastiveTeacher(proj_hidden_dim=32, proj_dim=16, pretrained=tmp_path / "r50.pth")
    loaded = teacher.backbone.state_dict()
    for key, value in resnet50_state.items():
        if key.startswith("fc."):
            assert key not in loaded  # the classifier is not part of the teacher
        elif wrap != "plain" or not key.endswith("num_batches_tracked"):
            assert torch.equal(loaded[key], value), key
    assert teacher.pretrained == str(tmp_path / "r50.pth") and "pretrained" not in teacher.config


def test_resnet50_missing_extra_or_misshaped_key_is_named(tmp_path, resnet50_state):
    missing = {k: v for k, v in resnet50_state.items() if k != "layer4.2.bn3.running_var"}
    cases = {
        "missing": (missing, r"not loaded.*layer4\.2\.bn3\.running_var"),
        "extra": ({**resnet50_state, "layer5.0.conv1.weight": torch.zeros(1)}, r"unexpected.*layer5\.0\.conv1\.weight"),
        "shape": ({**resnet50_state, "conv1.weight": torch.zeros(64, 1, 7, 7)}, r"conv1\.weight.*\(64, 1, 7, 7\)"),
    }
    for name, (state, pattern) in cases.items():
        path = tmp_path / f"{name}.pth"
        torch.save({"state_dict": state}, path)
        with pytest.raises(ValueError, match=rf"{name}\.pth: weights do not match.*{pattern}"):
            ContrastiveTeacher(proj_hidden_dim=32, proj_dim=16, pretrained=path)


@pytest.mark.parametrize("wrap", ["model", "plain_module"])
def test_mae_checkpoint_loads_every_encoder_tensor(tmp_path, wrap):
    state = mae_state(decoder=wrap == "model")
    payload = {"model": state} if wrap == "model" else {f"module.{k}": v for k, v in state.items()}
    torch.save(payload, tmp_path / "mae.pth")
    torch.manual_seed(0)
    fresh = MAETeacher(**TINY_MAE, in_channels=3)
    torch.manual_seed(0)
    teacher = MAETeacher(**TINY_MAE, in_channels=3, pretrained=tmp_path / "mae.pth").eval()
    loaded = teacher.state_dict()
    expected = {
        "cls_token": state["cls_token"] + state["pos_embed"][:, :1],  # MAE adds the CLS position to the token
        "patch_embedding.position_embeddings": state["pos_embed"][:, 1:],
        "patch_embedding.patch_embeddings.weight": state["patch_embed.proj.weight"],
        "patch_embedding.patch_embeddings.bias": state["patch_embed.proj.bias"],
        f"blocks.{DEPTH}.weight": state["norm.weight"],
        f"blocks.{DEPTH}.bias": state["norm.bias"],
    }
    names = {"norm1": "norm1", "attn.proj": "self_attn.out_proj", "norm2": "norm2"}
    names.update({"mlp.fc1": "linear1", "mlp.fc2": "linear2"})
    for i in range(DEPTH):
        expected[f"blocks.{i}.self_attn.in_proj_weight"] = state[f"blocks.{i}.attn.qkv.weight"]
        expected[f"blocks.{i}.self_attn.in_proj_bias"] = state[f"blocks.{i}.attn.qkv.bias"]
        for src, dst in names.items():
            for p in ("weight", "bias"):
                expected[f"blocks.{i}.{dst}.{p}"] = state[f"blocks.{i}.{src}.{p}"]
    for key, value in loaded.items():
        if key.startswith(("decoder", "mask_token")):  # the decoder starts fresh
            assert torch.equal(value, fresh.state_dict()[key]), key
        else:
            assert torch.equal(value, expected.pop(key)), key
    assert not expected
    # the loaded teacher computes what the official MAE encoder computes (qkv order, eps 1e-6, exact GELU)
    x = torch.rand(2, 3, 64, 64)
    ids = torch.arange(GRID * GRID).expand(2, -1)
    with torch.no_grad():
        torch.testing.assert_close(teacher.encode_visible(x, ids_keep=ids)[0], official_mae_encoder(state, x))


def test_mae_gray_teacher_and_other_input_size(tmp_path):
    state = mae_state()
    torch.save({"model": state}, tmp_path / "mae.pth")
    gray = MAETeacher(**TINY_MAE, pretrained=tmp_path / "mae.pth").eval()  # 1 channel
    rgb = MAETeacher(**TINY_MAE, in_channels=3, pretrained=tmp_path / "mae.pth").eval()
    x = torch.rand(2, 1, 64, 64)
    ids = torch.arange(GRID * GRID).expand(2, -1)
    with torch.no_grad():  # summed patch weights == the gray slice replicated to RGB
        torch.testing.assert_close(
            gray.encode_visible(x, ids_keep=ids)[0],
            rgb.encode_visible(x.expand(-1, 3, -1, -1), ids_keep=ids)[0],
            rtol=1e-4,
            atol=1e-4,
        )
    big = MAETeacher(**{**TINY_MAE, "img_size": 96}, pretrained=tmp_path / "mae.pth")
    grid = state["pos_embed"][:, 1:].reshape(1, GRID, GRID, DIM).permute(0, 3, 1, 2)
    resized = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
    assert torch.equal(big.patch_embedding.position_embeddings, resized)


def test_mae_missing_extra_or_misshaped_key_is_named(tmp_path):
    state = mae_state()
    cases = {
        "missing": (
            {k: v for k, v in state.items() if k != "blocks.1.mlp.fc2.bias"},
            r"not loaded.*blocks\.1\.linear2\.bias \(file key 'blocks\.1\.mlp\.fc2\.bias'\)",
        ),
        "extra": (
            {**state, "blocks.2.attn.qkv.weight": torch.zeros(1), "head.weight": torch.zeros(1)},
            r"unexpected.*'blocks\.2\.attn\.qkv\.weight', 'head\.weight'",
        ),
        "shape": (
            {**state, "blocks.0.mlp.fc1.weight": torch.zeros(2 * MLP, DIM)},
            r"blocks\.0\.mlp\.fc1\.weight -> blocks\.0\.linear1\.weight: file \(128, 32\)",
        ),
    }
    for name, (bad, pattern) in cases.items():
        torch.save({"model": bad}, tmp_path / f"{name}.pth")
        with pytest.raises(ValueError, match=rf"{name}\.pth: weights do not match MAETeacher.*{pattern}"):
            MAETeacher(**TINY_MAE, pretrained=tmp_path / f"{name}.pth")
    torch.save({"epoch": 3}, tmp_path / "empty.pth")
    with pytest.raises(ValueError, match=r"empty\.pth holds no state dict"):
        MAETeacher(**TINY_MAE, pretrained=tmp_path / "empty.pth")
    with pytest.raises(FileNotFoundError, match=r"absent\.pth"):
        MAETeacher(**TINY_MAE, pretrained=tmp_path / "absent.pth")


def test_build_teacher_from_pretrained_weights_and_provenance(tmp_path):
    torch.save({"model": mae_state()}, tmp_path / "mae.pth")
    teacher = build_teacher("patch", pretrained=str(tmp_path / "mae.pth"), **TINY_MAE)  # no allow_untrained
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert torch.equal(teacher.blocks[0].linear1.bias, mae_state()["blocks.0.mlp.fc1.bias"])
    record = read_teacher_metadata(save_teacher(teacher, tmp_path / "teacher.pt"))
    assert record["pretrained"] == str(tmp_path / "mae.pth") and "pretrained" not in record["config"]
