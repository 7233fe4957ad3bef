"""Segmentor: a backbone and a head; ``forward(x)`` returns logits and nothing else."""

from __future__ import annotations

import torch
from torch import nn

from lightseg.errors import InputError


class Segmentor(nn.Module):
    """``head(backbone(x))``.

    The backbone returns a list of NCHW maps and exposes ``feature_info`` (a list of
    ``{"num_chs": C, "reduction": stride}``); the head reads its input widths from it.
    ``forward`` returns logits at ``head.output_stride`` (resizing to the label or image
    size, sliding windows and TTA live outside the model so that export stays trivial).

    Inputs must have sides divisible by ``size_divisor`` (the backbone's largest stride);
    anything else fails with an error naming the multiple.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, num_classes: int, size_divisor: int = 32):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.num_classes = num_classes
        self.size_divisor = size_divisor

    @property
    def output_stride(self) -> int:
        return self.head.output_stride

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 3:
            raise InputError(f"expected an N x 3 x H x W image batch, got shape {tuple(x.shape)}")
        h, w = int(x.shape[-2]), int(x.shape[-1])
        d = self.size_divisor
        if h % d or w % d:
            raise InputError(
                f"input size {h}x{w} is not a multiple of {d}: {type(self).__name__} needs height and "
                f"width divisible by {d} (pad to {-(-h // d) * d}x{-(-w // d) * d}, "
                "e.g. with lightseg.inference)"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: N x 3 x H x W (normalised) -> logits N x K x H/s x W/s, s = ``output_stride``."""
        self.check_input(x)
        return self.head(self.backbone(x))

    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training outputs: ``{"logits": ...}`` plus whatever extra the head provides
        (e.g. ``"embed_features"`` for a pixel contrastive loss)."""
        self.check_input(x)
        feats = self.backbone(x)
        if hasattr(self.head, "forward_train"):
            return self.head.forward_train(feats)
        return {"logits": self.head(feats)}
