"""Stage-1 objectives on the tiny SamoraNet: they overfit a fixed batch, train only the active expert and the
head, and the patch objective pairs student and teacher tokens of the same image position."""

import pytest
import torch
from torch import nn

from samora_monai.losses import (
    ImageLevelLoss,
    PatchLevelLoss,
    PixelLevelLoss,
    corrupt,
    feature_distance,
    gather_tokens,
    mask_patches,
)
from samora_monai.networks import SamoraNet, configure_stage
from samora_monai.networks.ssl_heads import DenoisingDecoder, ImageProjector, TokenProjector
from samora_monai.teachers import build_teacher, patchify

pytestmark = pytest.mark.filterwarnings("ignore:the .*-level teacher")


def tiny_net(img_size: int = 64) -> SamoraNet:
    torch.manual_seed(0)
    return SamoraNet(num_classes=2, variant="tiny", img_size=img_size, random_init=True)


def build_objective(level: str, net: SamoraNet, tiny_mae) -> nn.Module:
    if level == "image":
        teacher = build_teacher("image", allow_untrained=True, arch="resnet18", proj_hidden_dim=32, proj_dim=16)
        return ImageLevelLoss(teacher, ImageProjector(net.embed_dim, teacher.embed_dim, hidden_dim=64))
    if level == "patch":
        teacher = build_teacher("patch", allow_untrained=True, **tiny_mae)
        return PatchLevelLoss(teacher, TokenProjector(net.encoder_width, teacher.embed_dim, hidden_dim=64))
    return PixelLevelLoss(DenoisingDecoder(net.embed_dim, channels=(16, 8, 8, 8)), noise_std=0.08, blur_prob=0.5)


def run_level(
    level: str, steps: int, lr: float, inputs: tuple[torch.Tensor, ...], tiny_mae: dict
) -> tuple[list, set, nn.Module]:
    net = tiny_net()
    objective = build_objective(level, net, tiny_mae=tiny_mae)
    configure_stage(net, "stage1", level, heads=[objective.head])
    before = {k: v.detach().clone() for k, v in [*net.named_parameters(), *objective.named_parameters()]}
    params = [p for p in [*net.parameters(), *objective.parameters()] if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    net.train()
    objective.train()
    losses = []
    for _ in range(steps):
        loss = objective(net.encode, *inputs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    after = dict([*net.named_parameters(), *objective.named_parameters()])
    changed = {k for k, v in after.items() if not torch.equal(v.detach(), before[k])}
    return losses, changed, objective


@pytest.mark.parametrize("level,steps,lr", [("image", 15, 3e-3), ("patch", 20, 3e-3), ("pixel", 20, 1e-2)])
def test_student_loss_overfits_and_only_expert_and_head_change(level, steps, lr, smooth_images, tiny_mae):
    torch.manual_seed(0)
    images = smooth_images(4)
    # image level: 32 px views keep the ResNet teacher cheap; the student resizes them to its 64 px input
    inputs = (smooth_images(4, 32), smooth_images(4, 32).flip(-1)) if level == "image" else (images,)
    losses, changed, objective = run_level(level, steps, lr, inputs, tiny_mae=tiny_mae)
    print(level, "losses", [round(v, 6) for v in losses])
    assert losses[-1] < 0.5 * losses[0], losses
    expert_key = f".lora.experts.{level}."
    assert any(expert_key in k for k in changed), "the active expert did not train"
    assert any(k.startswith("head.") for k in changed), "the head did not train"
    strays = [k for k in changed if expert_key not in k and not k.startswith("head.")]
    assert strays == [], f"parameters outside the {level} expert and head changed: {strays[:5]}"
    if level != "pixel":
        assert not objective.teacher.training  # train() keeps the frozen teacher in eval mode


class PixelTeacher(nn.Module):
    """Identity-like patch teacher: a patch's feature is its pixels; keeps patches in a fixed, shuffled order."""

    def __init__(self, ids_keep: torch.Tensor, img_size: int = 64, patch_size: int = 16) -> None:
        super().__init__()
        self.ids_keep = ids_keep
        self.patch_size = patch_size
        self.grid_size = (img_size // patch_size, img_size // patch_size)

    def encode_visible(self, x: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
        return gather_tokens(patchify(x, self.patch_size), self.ids_keep), self.ids_keep


def pixel_student(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stand-in student with the SamoraNet.encode contract whose token (r, c) is patch (r, c)'s pixels."""
    tokens = patchify(x, 16).reshape(x.shape[0], x.shape[-2] // 16, x.shape[-1] // 16, -1)
    return tokens, tokens.permute(0, 3, 1, 2)


def test_patch_objective_pairs_tokens_of_the_same_position():
    torch.manual_seed(0)
    images = torch.rand(2, 1, 64, 64)
    ids_keep = torch.tensor([[13, 2, 7, 0], [5, 15, 1, 10]])  # teacher order, deliberately not sorted
    objective = PatchLevelLoss(PixelTeacher(ids_keep), nn.Identity())
    correct = objective(pixel_student, images).item()
    teacher_feats, _ = objective.teacher.encode_visible(images, 0.75)
    index_order = gather_tokens(pixel_student(images)[0], ids_keep.sort(dim=1).values)  # the reference's pairing
    wrong = feature_distance(index_order, teacher_feats).item()
    print("patch pairing: correct", correct, "index order", wrong)
    assert correct < 1e-12
    assert wrong > 0.1  # two uniform random pixels differ by 1/6 in mean square
    masked = PatchLevelLoss(PixelTeacher(ids_keep), nn.Identity(), student_input="masked")
    assert masked(pixel_student, images).item() < 1e-12  # kept patches are untouched by masking


def test_gather_and_mask_patches_follow_ids_keep():
    tokens = torch.arange(2 * 16 * 3, dtype=torch.float).reshape(2, 4, 4, 3)
    ids = torch.tensor([[9, 0, 4], [3, 3, 12]])
    out = gather_tokens(tokens, ids)
    assert out.shape == (2, 3, 3)
    assert torch.equal(out[0, 0], tokens[0, 2, 1]) and torch.equal(out[1, 2], tokens[1, 3, 0])
    with pytest.raises(ValueError, match="does not index"):
        gather_tokens(tokens, torch.tensor([[16], [0]]))
    images = torch.ones(1, 1, 64, 64)
    masked = mask_patches(images, torch.tensor([[6, 1]]), 16)
    kept = patchify(masked, 16)[0].sum(-1)
    assert torch.nonzero(kept).flatten().tolist() == [1, 6]


def test_patch_objective_rejects_grid_mismatch(tiny_mae):
    net = tiny_net(img_size=32)  # 64 px input is resized to 32 -> 2x2 tokens, teacher has 4x4 patches
    teacher = build_teacher("patch", allow_untrained=True, **tiny_mae)
    objective = PatchLevelLoss(teacher, TokenProjector(net.encoder_width, teacher.embed_dim, hidden_dim=8))
    with pytest.raises(ValueError, match=r"teacher patch grid \(4, 4\) differs from the student token grid \(2, 2\)"):
        objective(net.encode, torch.rand(1, 1, 64, 64))


def test_image_objective_modes_and_contrastive_term(smooth_images):
    net = tiny_net()
    teacher = build_teacher("image", allow_untrained=True, arch="resnet18", proj_hidden_dim=32, proj_dim=16)
    images = smooth_images(4)
    plain = ImageLevelLoss(teacher, ImageProjector(net.embed_dim, teacher.embed_dim, hidden_dim=16), distance="cosine")
    value = plain(net.encode, images, images).item()
    assert 0.0 <= value <= 2.0
    token_head = ImageProjector(net.encoder_width, teacher.embed_dim, hidden_dim=16)
    tokens = ImageLevelLoss(teacher, token_head, source="tokens")
    assert tokens(net.encode, images, images).item() > 0
    torch.manual_seed(1)
    head = ImageProjector(net.embed_dim, teacher.embed_dim, hidden_dim=16)
    without = ImageLevelLoss(teacher, head)(net.encode, images, images.flip(-1)).item()
    with_term = ImageLevelLoss(teacher, head, contrastive_weight=0.5)(net.encode, images, images.flip(-1)).item()
    assert with_term > without + 0.3  # 0.5 * NT-Xent of an untrained head over 4 pairs is about 0.5 * log(7)


def test_corruption_and_pixel_loss_options(smooth_images):
    torch.manual_seed(0)
    clean = smooth_images(4)
    noisy = corrupt(clean, noise_std=0.1, blur_prob=0.0)
    assert float(noisy.min()) >= 0.0 and float(noisy.max()) <= 1.0
    assert 0.05 < float((noisy - clean).std()) < 0.12
    blurred = corrupt(clean, noise_std=0.0, blur_prob=1.0, blur_sigma=(1.0, 1.0))
    assert 0.0 < float((blurred - clean).abs().mean()) < 0.1
    net = tiny_net()
    decoder = DenoisingDecoder(net.embed_dim, channels=(16, 8, 8, 8), output="linear")
    with_ssim = PixelLevelLoss(decoder, reconstruction="mse", ssim_weight=1.0)(net.encode, clean).item()
    without = PixelLevelLoss(decoder, reconstruction="mse")(net.encode, clean).item()
    assert with_ssim > without + 0.1  # SSIM of an untrained reconstruction is far from 1
    with pytest.raises(ValueError, match="log2"):
        DenoisingDecoder(32, channels=(16, 8))
