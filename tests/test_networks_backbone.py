"""SAM backbone building and official-checkpoint loading."""

import pytest
import torch
from segment_anything import sam_model_registry
from segment_anything.build_sam import _build_sam

from samora_monai.networks import SAM_VARIANTS, SamoraNet
from samora_monai.networks.sam_backbone import CLASS_DEPENDENT_DECODER_KEYS, SamVariant, adapt_sam_state_dict

# The smallest architecture that `segment_anything`'s own builder produces at 1024 px (window 14, 256-d decoder).
REGISTRY_SMALL = SamVariant(64, 2, 4, (1,), window_size=14, prompt_dim=256, decoder_mlp_dim=2048, decoder_heads=8)


@pytest.fixture(scope="module")
def vit_b_checkpoint(tmp_path_factory):
    """An official-format ViT-B checkpoint written by segment_anything's registry builder (random weights)."""
    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"]()
    path = tmp_path_factory.mktemp("sam") / "sam_vit_b_random.pth"
    torch.save(sam.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def small_official(tmp_path_factory):
    torch.manual_seed(1)
    sam = _build_sam(encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=4, encoder_global_attn_indexes=[1])
    for p in sam.image_encoder.parameters():  # SAM zero-initialises rel-pos tables; make them matter
        if p.ndim == 2 and p.shape[0] in (27, 127):
            torch.nn.init.normal_(p, std=0.5)
    path = tmp_path_factory.mktemp("sam") / "sam_small.pth"
    torch.save(sam.state_dict(), path)
    SAM_VARIANTS["registry_small"] = REGISTRY_SMALL
    yield sam.eval(), path
    SAM_VARIANTS.pop("registry_small")


@pytest.mark.parametrize("img_size", [224, 512, 1024])
def test_vit_b_checkpoint_loads_at_any_size(vit_b_checkpoint, img_size):
    state = torch.load(vit_b_checkpoint, weights_only=True)
    net = SamoraNet(num_classes=8, variant="vit_b", img_size=img_size, random_init=True, levels=())
    adapted = adapt_sam_state_dict(state, net.state_dict())
    target = net.state_dict()
    skipped = sorted(set(state) - set(adapted))
    assert skipped and all(k.startswith(CLASS_DEPENDENT_DECODER_KEYS) for k in skipped)
    assert sorted(set(target) - set(adapted)) == sorted(k for k in target if k.startswith(CLASS_DEPENDENT_DECODER_KEYS))
    grid = img_size // 16
    assert adapted["image_encoder.pos_embed"].shape == (1, grid, grid, 768)
    assert adapted["image_encoder.blocks.2.attn.rel_pos_h"].shape == (2 * grid - 1, 64)  # global block
    assert adapted["image_encoder.blocks.0.attn.rel_pos_h"].shape == (27, 64)  # windowed block keeps 27 rows
    loaded = SamoraNet(num_classes=8, variant="vit_b", img_size=img_size, sam_checkpoint=str(vit_b_checkpoint))
    assert torch.equal(loaded.image_encoder.patch_embed.proj.weight, state["image_encoder.patch_embed.proj.weight"])
    assert torch.equal(
        loaded.mask_decoder.transformer.layers[0].self_attn.q_proj.weight,
        state["mask_decoder.transformer.layers.0.self_attn.q_proj.weight"],
    )
    assert loaded.mask_decoder.mask_tokens.weight.shape == (9, 256)


def test_encoder_equals_official_at_1024(small_official):
    sam, path = small_official
    net = SamoraNet(3, variant="registry_small", img_size=1024, in_channels=3, sam_checkpoint=str(path)).eval()
    x = torch.rand(1, 3, 1024, 1024)
    with torch.no_grad():
        expected = sam.image_encoder(x)
        for mode in ("plain", "fused"):  # zero-initialised experts and sum-initialised HL-Attn are identities
            net.set_mode(mode)
            got = net.encode(x)[1]
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_wrong_architecture_names_offending_keys(small_official, tmp_path):
    _, path = small_official
    state = torch.load(path, weights_only=True)
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.qkv\.weight"):
        SamoraNet(num_classes=3, variant="vit_b", img_size=224, sam_checkpoint=str(path))
    state["image_encoder.blocks.0.mlp.lin1.weight"] = torch.zeros(7, 64)
    state["image_encoder.extra.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(ValueError) as err:
        SamoraNet(num_classes=3, variant="registry_small", img_size=1024, sam_checkpoint=str(bad))
    assert "image_encoder.blocks.0.mlp.lin1.weight" in str(err.value)
    assert "image_encoder.extra.weight" in str(err.value)
    del state["image_encoder.extra.weight"], state["image_encoder.blocks.0.mlp.lin1.weight"]
    torch.save(state, bad)
    with pytest.raises(ValueError, match=r"lacks keys.*blocks\.0\.mlp\.lin1\.weight"):
        SamoraNet(num_classes=3, variant="registry_small", img_size=1024, sam_checkpoint=str(bad))


def test_missing_corrupt_and_absent_checkpoint(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        SamoraNet(num_classes=2, variant="tiny", img_size=64, sam_checkpoint=str(missing))
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(RuntimeError, match="corrupt.pth"):
        SamoraNet(num_classes=2, variant="tiny", img_size=64, sam_checkpoint=str(corrupt))
    with pytest.raises(ValueError, match="random_init=True"):
        SamoraNet(num_classes=2, variant="tiny", img_size=64)
    with pytest.raises(ValueError, match="multiple of 16"):
        SamoraNet(num_classes=2, variant="tiny", img_size=70, random_init=True)
