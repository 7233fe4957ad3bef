"""Losses. Models never compute them: the training engine calls these on model outputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def resize_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (align_corners=False) resize of N x K x h x w logits to ``size`` — how both papers'
    code brings logits to the label size before the loss."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def seg_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = 255,
    avg_non_ignore: bool = False,
    class_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pixel cross-entropy, logits upsampled to the label size.

    ``avg_non_ignore=False`` reproduces mmseg 0.27 (the CGRSeg release): the per-pixel losses are
    averaged over *all* pixels, ignored ones counting as zero. ``True`` averages over the
    non-ignored pixels only (the better-known convention).
    """
    logits = resize_logits(logits, tuple(target.shape[-2:]))
    per_pixel = F.cross_entropy(
        logits.float(), target.long(), weight=class_weight, ignore_index=ignore_index, reduction="none"
    )
    if avg_non_ignore:
        return per_pixel.sum() / (target != ignore_index).sum().clamp_min(1)
    return per_pixel.mean()


class CrossEntropyLoss(nn.Module):
    """:func:`seg_cross_entropy` as a module, with a loss weight (1.0 in both papers)."""

    def __init__(self, ignore_index: int = 255, avg_non_ignore: bool = False, loss_weight: float = 1.0):
        super().__init__()
        self.ignore_index = ignore_index
        self.avg_non_ignore = avg_non_ignore
        self.loss_weight = loss_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss_weight * seg_cross_entropy(
            logits, target, self.ignore_index, self.avg_non_ignore
        )
