"""UNet losses. Logits in, targets CxHxW in [0, 1]."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Batch dice on sigmoid probabilities (MONAI DiceLoss(sigmoid=True) equivalent, batch-reduced)."""
    p = torch.sigmoid(logits.float())
    t = target.float()
    dims = tuple(range(1, p.ndim))
    inter = (p * t).sum(dims)
    denom = p.sum(dims) + t.sum(dims)
    return (1.0 - (2 * inter + eps) / (denom + eps)).mean()


def unet_loss(kind: str, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    if kind == "dice":
        loss = soft_dice_loss(logits[:, :1], target[:, :1])
        return loss, {"dice": float(loss.detach())}
    if kind == "bce_dice_dist":
        fg_l, dist_l = logits[:, 0:1].float(), logits[:, 1:2].float()
        fg_t, dist_t = target[:, 0:1], target[:, 1:2]
        bce = F.binary_cross_entropy_with_logits(fg_l, fg_t)
        dice = soft_dice_loss(fg_l, fg_t)
        # The distance map is learnt as soft targets; inside nuclei it carries the separation signal,
        # so foreground pixels weigh more than the (trivially zero) background.
        w = 1.0 + 4.0 * fg_t
        dist = (F.binary_cross_entropy_with_logits(dist_l, dist_t, reduction="none") * w).sum() / w.sum()
        loss = bce + dice + 2.0 * dist
        return loss, {"bce": float(bce.detach()), "dice": float(dice.detach()), "dist": float(dist.detach())}
    raise ValueError(f"unknown loss {kind!r}")


def deep_supervision_loss(kind: str, logits: torch.Tensor, aux: list[torch.Tensor], target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """The output's loss plus each auxiliary output's, weighted 1/2, 1/4, ... from the finest
    level (nnU-Net's halving), all against the full-resolution targets."""
    loss, parts = unet_loss(kind, logits, target)
    for i, a in enumerate(aux, start=1):
        aux_loss, _ = unet_loss(kind, a, target)
        loss = loss + 0.5**i * aux_loss
        parts[f"aux{i}"] = float(aux_loss.detach())
    return loss, parts
