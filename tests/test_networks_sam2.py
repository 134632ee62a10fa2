"""SAM 2 backbone against the official ``sam2`` package: image-encoder equality with a checkpoint written in the
official format through sam2's own builder, prompt-free decoder equality, checkpoint key and file errors."""

from __future__ import annotations

import logging

import pytest
import torch
from sam2.build_sam import build_sam2
from sam2.modeling.sam.mask_decoder import MaskDecoder

from samora_monai.networks import SamoraNet
from samora_monai.networks.sam2_backbone import SAM2_VARIANTS, load_sam2_state_dict

LEVELS = ("image", "patch", "pixel")


@pytest.fixture(scope="module")
def official_checkpoint(tmp_path_factory):
    """A randomly perturbed official Hiera-T SAM 2.1 model saved as ``{"model": sd}`` and read back by sam2's own
    builder (which loads strictly), so the file is in the official format."""
    config = "configs/sam2.1/sam2.1_hiera_t.yaml"
    torch.manual_seed(0)
    model = build_sam2(config, device="cpu")
    state = {k: v + 0.02 * torch.randn_like(v) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    path = tmp_path_factory.mktemp("sam2") / "sam2.1_hiera_tiny.pt"
    torch.save({"model": state}, path)
    return build_sam2(config, ckpt_path=str(path), device="cpu"), path


@pytest.mark.parametrize("img_size", [224, 512])
def test_encoder_equals_the_official_sam2_image_encoder(official_checkpoint, caplog, img_size):
    official, path = official_checkpoint
    with caplog.at_level(logging.INFO, logger="samora_monai.networks.sam2_backbone"):
        net = SamoraNet(num_classes=3, variant="hiera_t", img_size=img_size, levels=(), backbone="sam2",
                        sam_checkpoint=str(path)).eval()
    assert "memory_attention." in caplog.text and "sam_mask_decoder.mask_tokens.weight" in caplog.text
    trunk_out = []
    hook = official.image_encoder.trunk.register_forward_hook(lambda m, i, o: trunk_out.extend(o))
    x = torch.rand(1, 3, img_size, img_size)
    with torch.no_grad():
        want = official.image_encoder(x)
        hook.remove()
        tokens, embedding, high_res = net.image_encoder(x)
    fpn = want["backbone_fpn"]
    g = img_size // 16
    assert embedding.shape == (1, 256, g, g) and tokens.shape == (1, g, g, 384) and net.encoder_width == 384
    assert torch.allclose(embedding, fpn[2] + official.no_mem_embed.reshape(1, -1, 1, 1), atol=1e-5)
    assert torch.allclose(high_res[0], fpn[0], atol=1e-5) and torch.allclose(high_res[1], fpn[1], atol=1e-5)
    assert torch.allclose(tokens, trunk_out[2].permute(0, 2, 3, 1), atol=1e-5)
    for key in ("mask_decoder.conv_s0.weight", "prompt_encoder.no_mask_embed.weight", "mask_decoder.iou_token.weight"):
        assert torch.equal(net.state_dict()[key], official.state_dict()["sam_" + key])


def tiny_official_state(num_classes: int = 2) -> dict[str, torch.Tensor]:
    """The tiny configuration's weights under official SAM 2.1 key names, plus video-only and class-dependent
    decoder tensors of other shapes, as an official checkpoint holds them."""
    torch.manual_seed(3)
    net = SamoraNet(num_classes=num_classes, variant="tiny", img_size=64, levels=(), backbone="sam2", random_init=True)
    renames = (("prompt_encoder.", "sam_prompt_encoder."), ("mask_decoder.", "sam_mask_decoder."))
    state = {}
    for key, value in net.state_dict().items():
        key = "no_mem_embed" if key == "image_encoder.no_mem_embed" else key
        for old, new in renames:
            key = new + key[len(old) :] if key.startswith(old) else key
        state[key] = value + 0.01 * torch.randn_like(value)
    state["sam_mask_decoder.mask_tokens.weight"] = torch.randn(4, 32)
    state["sam_mask_decoder.obj_score_token.weight"] = torch.randn(1, 32)
    state["memory_attention.layers.0.linear1.weight"] = torch.randn(8, 8)
    state["maskmem_tpos_enc"] = torch.randn(7, 1, 1, 8)
    return state


@pytest.mark.parametrize("img_size", [64, 96])
def test_tiny_checkpoint_loads_at_any_allowed_size(tmp_path, img_size):
    state = tiny_official_state()
    torch.save({"model": state}, tmp_path / "tiny.pt")
    net = SamoraNet(num_classes=5, variant="tiny", img_size=img_size, levels=LEVELS, backbone="sam2",
                    sam_checkpoint=str(tmp_path / "tiny.pt"))
    loaded = net.state_dict()
    assert torch.equal(loaded["image_encoder.no_mem_embed"], state["no_mem_embed"])
    assert torch.equal(loaded["image_encoder.trunk.blocks.3.attn.qkv.weight"],
                       state["image_encoder.trunk.blocks.3.attn.qkv.weight"])
    assert loaded["mask_decoder.mask_tokens.weight"].shape == (6, 32)  # fresh num_classes + 1 tokens
    assert net(torch.rand(1, 1, 40, 40)).shape == (1, 6, 40, 40)
    skipped = load_sam2_state_dict(net, state, allowed_missing=(".lora.", ".fusion."))
    unused = ("maskmem", "memory_", *(f"sam_mask_decoder.{k}" for k in ("mask_tokens", "output_hyper", "obj_score")))
    assert set(skipped) == {k for k in state if k.startswith(unused)}
    assert {"maskmem_tpos_enc", "sam_mask_decoder.mask_tokens.weight", "memory_attention.layers.0.linear1.weight",
            "sam_mask_decoder.output_hypernetworks_mlps.2.layers.2.bias"} <= set(skipped)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.update({"image_encoder.trunk.blocks.9.attn.qkv.weight": torch.zeros(3)}),
         "unexpected keys .*image_encoder.trunk.blocks.9.attn.qkv.weight"),
        (lambda s: s.update({"sam_mask_decoder.conv_s0.weight": torch.zeros(4, 32, 3, 3)}),
         r"shape mismatches .*mask_decoder.conv_s0.weight: \(4, 32, 3, 3\)"),
        (lambda s: s.pop("image_encoder.neck.convs.1.conv.weight"), "lacks keys .*image_encoder.neck.convs.1.conv"),
        (lambda s: s.pop("no_mem_embed"), r"lacks keys .*'image_encoder.no_mem_embed'"),
    ],
)
def test_checkpoint_key_errors_are_named(tmp_path, edit, message):
    state = tiny_official_state()
    edit(state)
    torch.save({"model": state}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=message):
        SamoraNet(num_classes=2, variant="tiny", img_size=64, backbone="sam2", sam_checkpoint=str(tmp_path / "bad.pt"))


def test_checkpoint_file_and_size_errors(tmp_path):
    missing, corrupt = tmp_path / "none.pt", tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(FileNotFoundError, match=str(missing)):
        SamoraNet(num_classes=2, variant="tiny", img_size=64, backbone="sam2", sam_checkpoint=str(missing))
    with pytest.raises(RuntimeError, match=f"{corrupt} is corrupt"):
        SamoraNet(num_classes=2, variant="tiny", img_size=64, backbone="sam2", sam_checkpoint=str(corrupt))
    with pytest.raises(ValueError, match="multiple of 32"):
        SamoraNet(num_classes=2, variant="tiny", img_size=48, backbone="sam2", random_init=True)
    with pytest.raises(ValueError, match="hiera_b\\+"):
        SamoraNet(num_classes=2, variant="vit_b", img_size=64, backbone="sam2", random_init=True)
    assert set(SAM2_VARIANTS) == {"hiera_t", "hiera_s", "hiera_b+", "hiera_l", "tiny"}


def test_prompt_free_decoder_equals_the_official_decoder_on_all_mask_tokens():
    torch.manual_seed(0)
    net = SamoraNet(num_classes=3, variant="tiny", img_size=64, levels=(), backbone="sam2", random_init=True).eval()
    official = MaskDecoder(transformer_dim=32, transformer=net.mask_decoder.transformer, num_multimask_outputs=3,
                           use_high_res_features=True)
    official.load_state_dict(net.mask_decoder.state_dict(), strict=False)
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        _, embedding, (s0, s1) = net.image_encoder(net._prepare(x))
        pe = net.prompt_encoder
        sparse, dense = pe(points=None, boxes=None, masks=None)
        want = official.predict_masks(embedding, pe.get_dense_pe(), sparse.expand(2, -1, -1), dense,
                                      repeat_image=False, high_res_features=[official.conv_s0(s0),
                                                                              official.conv_s1(s1)])[0]
        got = net.forward_with_aux(x)["low_res_logits"]
    assert got.shape == want.shape == (2, 4, 16, 16)
    assert torch.allclose(got, want, atol=1e-5)
