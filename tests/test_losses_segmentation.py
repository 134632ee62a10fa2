"""The DiceCE factory reproduces the SAMed/TransUNet Dice + CE on a toy tensor."""

import torch
import torch.nn.functional as F

from samora_monai.losses import segmentation_loss


def samed_dice_ce(logits: torch.Tensor, label: torch.Tensor, w_dice: float, w_ce: float) -> torch.Tensor:
    """Plain re-statement of SAMed's loss: per-class squared-sum soft Dice over the whole batch, background
    included, smoothing 1e-5, averaged over classes; plus cross-entropy."""
    probs = logits.softmax(1)
    onehot = F.one_hot(label[:, 0].long(), logits.shape[1]).permute(0, 3, 1, 2).float()
    dice = 0.0
    for c in range(logits.shape[1]):
        p, t = probs[:, c], onehot[:, c]
        dice += 1 - (2 * (p * t).sum() + 1e-5) / ((p * p).sum() + (t * t).sum() + 1e-5)
    return w_dice * dice / logits.shape[1] + w_ce * F.cross_entropy(logits, label[:, 0].long())


def test_segmentation_loss_matches_samed_convention():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 16, 16)
    label = torch.randint(0, 4, (3, 1, 16, 16)).float()
    label[1] = 0  # an image without foreground: batch-wise Dice keeps it from dominating
    loss = segmentation_loss()
    assert (loss.lambda_dice, loss.lambda_ce) == (0.8, 0.2)
    torch.testing.assert_close(loss(logits, label), samed_dice_ce(logits, label, 0.8, 0.2), atol=1e-5, rtol=1e-5)
    custom = segmentation_loss(lambda_dice=0.5, lambda_ce=0.5)
    torch.testing.assert_close(custom(logits, label), samed_dice_ce(logits, label, 0.5, 0.5), atol=1e-5, rtol=1e-5)
