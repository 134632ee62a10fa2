"""The stand-in SAM pre-training: official checkpoint format, determinism, data disjoint from the demo's cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything.build_sam import _build_sam

from samora_monai.apps import phantom, standin
from samora_monai.apps.shapes import box_prompt, point_prompt, region_sample, shape_sample
from samora_monai.apps.standin_train import build_standin_sam, masked_image_modeling, promptable_segmentation
from samora_monai.networks import SamoraNet
from samora_monai.networks.sam_backbone import CLASS_DEPENDENT_DECODER_KEYS, read_checkpoint

IMG = 32


@pytest.fixture(scope="module")
def quick_checkpoint(tmp_path_factory) -> str:
    return standin.pretrain_standin(tmp_path_factory.mktemp("cache"), img_size=IMG, quick=True)


def test_checkpoint_has_the_official_sam_keys(quick_checkpoint):
    state = read_checkpoint(quick_checkpoint)
    with torch.device("meta"):  # segment_anything's own builder at the tiny depth: key names only, no memory
        official = _build_sam(encoder_embed_dim=64, encoder_depth=4, encoder_num_heads=4,
                              encoder_global_attn_indexes=[1, 3]).state_dict()
    assert set(state) == set(official)
    assert state["mask_decoder.mask_tokens.weight"].shape == (4, 32)  # SAM's 3 + 1 mask tokens
    assert state["mask_decoder.iou_prediction_head.layers.2.weight"].shape == (4, 32)
    assert state["image_encoder.pos_embed"].shape == (1, IMG // 16, IMG // 16, 64)


@pytest.mark.parametrize("img_size,levels", [(IMG, ()), (64, ("pixel", "patch", "image"))])
def test_loads_through_the_sam_checkpoint_path(quick_checkpoint, img_size, levels):
    state = read_checkpoint(quick_checkpoint)
    net = SamoraNet(num_classes=8, variant="tiny", img_size=img_size, levels=levels, sam_checkpoint=quick_checkpoint)
    loaded = net.state_dict()
    for key in ("image_encoder.neck.0.weight", "prompt_encoder.no_mask_embed.weight",
                "mask_decoder.transformer.layers.0.self_attn.q_proj.weight", "mask_decoder.output_upscaling.0.weight"):
        assert torch.equal(loaded[key], state[key]), key
    block_key = "image_encoder.blocks.2.attn.qkv.weight"  # inside a SamoraBlock wrapper
    wrapped = [k for k in loaded if k.endswith("blocks.2.block.attn.qkv.weight") or k == block_key]
    assert len(wrapped) == 1 and torch.equal(loaded[wrapped[0]], state[block_key])
    if img_size != IMG:  # position embedding resized to the new grid
        assert loaded["image_encoder.pos_embed"].shape == (1, img_size // 16, img_size // 16, 64)
    # what was not loaded: only the class-dependent decoder tensors and the LoRA / fusion modules
    from samora_monai.networks.sam_backbone import adapt_sam_state_dict

    adapted = adapt_sam_state_dict(state, loaded)
    missing = [k for k in loaded if k not in adapted]
    assert missing and all(k.startswith(CLASS_DEPENDENT_DECODER_KEYS) or ".lora." in k or ".fusion." in k
                           for k in missing)


def test_rerun_gives_identical_tensors_and_bytes(quick_checkpoint, tmp_path):
    again = standin.pretrain_standin(tmp_path, img_size=IMG, quick=True)
    first, second = read_checkpoint(quick_checkpoint), read_checkpoint(again)
    assert set(first) == set(second) and all(torch.equal(first[k], second[k]) for k in first)
    with open(quick_checkpoint, "rb") as a, open(again, "rb") as b:
        assert a.read() == b.read()
    other_seed = read_checkpoint(standin.pretrain_standin(tmp_path, img_size=IMG, quick=True, seed=1))
    assert not torch.equal(first["image_encoder.patch_embed.proj.weight"],
                           other_seed["image_encoder.patch_embed.proj.weight"])


def test_cached_checkpoint_is_reused_and_nothing_partial_is_left(quick_checkpoint, tmp_path):
    mtime = standin.Path(quick_checkpoint).stat().st_mtime_ns
    assert standin.pretrain_standin(standin.Path(quick_checkpoint).parent, img_size=IMG, quick=True) == \
        quick_checkpoint
    assert standin.Path(quick_checkpoint).stat().st_mtime_ns == mtime
    assert standin.Path(quick_checkpoint + ".json").is_file()
    with pytest.raises(ValueError, match="multiple of 16"):
        standin.pretrain_standin(tmp_path / "bad", img_size=40, quick=True)
    assert not (tmp_path / "bad").exists()


class _UnreadableLabel:
    """Stands for the phantom's label volume: any use of it fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"the stand-in read a phantom label volume ({name})")

    def __array__(self, *args, **kwargs):
        raise AssertionError("the stand-in read a phantom label volume (__array__)")

    def __getitem__(self, item):
        raise AssertionError("the stand-in read a phantom label volume (__getitem__)")


def test_training_data_share_no_case_and_no_label_with_the_demo(monkeypatch, tmp_path):
    real, calls = phantom.make_phantom_case, []

    def spy(case_id, shape, spacing, seed):
        calls.append((int(seed), int(case_id)))
        image, _label, affine, scale = real(case_id, shape, spacing, seed)
        return image, _UnreadableLabel(), affine, scale

    monkeypatch.setattr(phantom, "make_phantom_case", spy)
    settings = standin.standin_settings(IMG, quick=True)
    slices = standin.standin_slices(settings)
    path = standin.pretrain_standin(tmp_path, img_size=IMG, quick=True, force=True)
    assert calls and set(calls) == set(standin.standin_cases(settings))
    # no (phantom seed, case id) of any demo run with seeds 0-99 is among them
    demo_ids = (*phantom.SYNAPSE_TRAIN_IDS, *phantom.SYNAPSE_TEST_IDS, *phantom.BTCV_UNLABELED_IDS)
    assert not set(calls) & {(s, i) for s in range(100) for i in demo_ids}
    # and no held-out slice of the quick demo phantom is among its images
    monkeypatch.setattr(phantom, "make_phantom_case", real)
    for case_id in phantom.SYNAPSE_TEST_IDS[:3]:
        held_out = real(case_id, (IMG, IMG, settings.depth), (9.6, 9.6, 30.0), 0)[0]
        scaled = np.clip((held_out + 125.0) / 400.0, 0, 1).astype(np.float32)
        assert not any(np.allclose(s, scaled[..., z]) for s in slices for z in range(settings.depth))
    # targets are class-agnostic: SAM's 4 mask tokens, and binary shape masks in every promptable sample
    assert read_checkpoint(path)["mask_decoder.mask_tokens.weight"].shape[0] == 4
    samples = standin.shape_samples(settings, slices, np.random.default_rng(0))
    assert all(masks.dtype == bool and masks.ndim == 3 for _, masks in samples)


def test_shape_sample_masks_and_prompts():
    rng = np.random.default_rng(3)
    for _ in range(20):
        image, masks = shape_sample(rng, 64)
        assert image.shape == (64, 64) and image.dtype == np.float32 and 0 <= image.min() <= image.max() <= 1
        assert masks.shape[1:] == (64, 64) and masks.any(axis=(1, 2)).all()
        assert masks.sum(0).max() == 1  # visible parts never overlap
        for mask in masks:
            x0, y0, x1, y1 = box_prompt(rng, mask, jitter=0.0)
            ys, xs = np.nonzero(mask)
            assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max(), ys.max())
            x, y = point_prompt(rng, mask)
            assert mask[int(y), int(x)]


def test_region_sample_finds_the_regions_of_the_image_alone():
    yy, xx = np.mgrid[0:64, 0:64]
    disc = (yy - 20) ** 2 + (xx - 40) ** 2 < 100
    square = (yy > 40) & (yy < 56) & (xx > 8) & (xx < 24)
    image = np.where(disc, 0.8, np.where(square, 0.5, 0.2)) + np.random.default_rng(1).normal(0, 0.03, (64, 64))
    image = np.clip(image, 0, 1).astype(np.float32)
    out, masks = region_sample(np.random.default_rng(0), image)
    assert out is image and masks.dtype == bool and len(masks) == 2  # the background is too large to be a target
    for shape in (disc, square):
        assert max((m & shape).sum() / (m | shape).sum() for m in masks) > 0.95


def test_both_phases_lower_their_loss():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    sam = build_standin_sam("tiny", IMG)
    samples = [shape_sample(rng, IMG, max_shapes=2) for _ in range(2)]
    slices = np.stack([image for image, _ in samples])
    mim = masked_image_modeling(sam, slices, steps=20, batch_size=2, lr=3e-3, mask_ratio=0.5, rng=rng)
    seg = promptable_segmentation(sam, samples, steps=20, batch_size=2, lr=3e-3, max_prompts=1, rng=rng)
    assert np.mean(mim[-5:]) < 0.8 * np.mean(mim[:5])
    assert np.mean(seg[-5:]) < 0.8 * np.mean(seg[:5])
