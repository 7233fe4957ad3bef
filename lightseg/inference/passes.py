"""Passes of a segmentor over an image: padding, whole-image and sliding-window passes, multi-scale +
flip TTA, and the one bilinear resize of logits that training, evaluation and deployment share.

The model's ``forward(x)`` takes N x 3 x H x W with sides divisible by ``model.size_divisor`` and
returns logits at its output stride. Everything else lives here, following mmseg 0.x (the code both
papers ran): whole mode pads to the multiple, upsamples the logits to the padded size, crops the
padding away and resizes to the requested output size; slide mode averages the logits of
overlapping windows; test-time augmentation averages softmax probabilities over scales and flips.
All resizes are bilinear with align_corners=False.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lightseg.data.transforms import multiscale_sizes
from lightseg.errors import ConfigError, InputError

MODES = ("whole", "slide")


def check_mode(mode: str) -> None:
    """An inference mode is ``whole`` or ``slide``; anything else is a ConfigError naming both."""
    if mode not in MODES:
        raise ConfigError(f"inference mode must be 'whole' or 'slide', got {mode!r}")


def resize_logits(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear (align_corners=False) resize of N x K x h x w logits to ``size`` — how both papers'
    code brings logits to the label size, for the loss and for predictions alike."""
    size = (int(size[0]), int(size[1]))
    if tuple(logits.shape[-2:]) == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def size_divisor(model: nn.Module) -> int:
    """The multiple input sides must have; every segmentor (and runner standing in for one) states
    it, so a model without one is refused rather than run unpadded."""
    if not hasattr(model, "size_divisor"):
        raise InputError(f"{type(model).__name__} has no size_divisor: inference needs a segmentor")
    return int(model.size_divisor)


def pad_to_multiple(x: torch.Tensor, divisor: int, value: float = 0.0) -> torch.Tensor:
    """Pad N x C x H x W at the bottom/right so that H and W are multiples of ``divisor``
    (0 is the mean colour of the normalised image).

    Needed, not a convention: the CGRSeg release's EfficientFormerV2 backbone floors its token
    grid (``H // 2``) where its stride-2 convolutions ceil it, so its whole-image forward fails on
    sides that are not multiples of 32, e.g. on 512x683 (a 4:3 image after the (2048, 512) test
    resize): "shape '[1, 8, -1, 336]' is invalid for input of size 90112". Logits are cropped back.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), value=value)
    return x


def forward_whole(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits N x K x H x W for an image batch N x 3 x H x W of any size.

    Pads to the model's multiple, runs the model, upsamples to the padded size, crops back.
    """
    h, w = x.shape[-2:]
    xp = pad_to_multiple(x, size_divisor(model))
    logits = resize_logits(model(xp), tuple(xp.shape[-2:]))
    return logits[..., :h, :w]


def slide_windows(
    height: int, width: int, crop: Sequence[int], stride: Sequence[int]
) -> list[tuple[int, int, int, int]]:
    """Windows ``(y1, y2, x1, x2)`` of mmseg's slide inference: a grid with the given stride,
    the last row/column shifted back inside the image; windows are smaller than ``crop`` only
    when the image is."""
    ch, cw = crop
    sh, sw = stride
    rows = max(height - ch + sh - 1, 0) // sh + 1
    cols = max(width - cw + sw - 1, 0) // sw + 1
    out = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * sh + ch, height), min(c * sw + cw, width)
            out.append((max(y2 - ch, 0), y2, max(x2 - cw, 0), x2))
    return out


def forward_slide(
    model: nn.Module, x: torch.Tensor, num_classes: int, crop: Sequence[int], stride: Sequence[int]
) -> torch.Tensor:
    """Logits N x K x H x W averaged over overlapping windows (each window through :func:`forward_whole`)."""
    n, _, h, w = x.shape
    logits = x.new_zeros((n, num_classes, h, w), dtype=torch.float32)
    count = x.new_zeros((1, 1, h, w), dtype=torch.float32)
    for y1, y2, x1, x2 in slide_windows(h, w, crop, stride):
        logits[:, :, y1:y2, x1:x2] += forward_whole(model, x[:, :, y1:y2, x1:x2]).float()
        count[:, :, y1:y2, x1:x2] += 1
    return logits / count


def _num_classes(model: nn.Module) -> int:
    k = getattr(model, "num_classes", None)
    if k is None:
        raise InputError(f"{type(model).__name__} has no num_classes: slide inference needs a segmentor")
    return int(k)


@torch.no_grad()
def average_probs(
    model: nn.Module,
    inputs: Sequence[torch.Tensor],
    out_size: Sequence[int],
    *,
    mode: str = "whole",
    crop_size: Sequence[int] = (512, 512),
    stride: Sequence[int] = (341, 341),
    flip: bool = False,
) -> torch.Tensor:
    """Softmax probabilities N x K x H' x W' averaged over ``inputs`` (one normalised batch per
    scale, each made from the original image) and, with ``flip``, their mirror images (mmseg's
    aug_test). Each pass's logits are resized to ``out_size`` before the softmax."""
    check_mode(mode)
    out_size = tuple(out_size)
    total = None
    passes = 0
    for x in inputs:
        for flipped in (False, True) if flip else (False,):
            xi = x.flip(-1) if flipped else x
            if mode == "whole":
                logits = forward_whole(model, xi)
            else:
                logits = forward_slide(model, xi, _num_classes(model), crop_size, stride)
            if flipped:
                logits = logits.flip(-1)
            probs = resize_logits(logits.float(), out_size).softmax(1)
            total = probs if total is None else total + probs
            passes += 1
    return total / passes


def scaled_sizes(h: int, w: int, scales: Sequence[float]) -> list[tuple[int, int]]:
    """The size of an h x w image at each test-time scale, by evaluation's rule
    (:func:`~lightseg.data.transforms.multiscale_sizes`, the image's own size as the bound);
    a scale that leaves no pixel is an InputError."""
    sizes = multiscale_sizes(h, w, scales)
    for s, (sh, sw) in zip(scales, sizes):
        if sh < 1 or sw < 1:
            raise InputError(
                f"a {h}x{w} image is too small for test-time scale {s} ({sh}x{sw} pixels); use scales "
                f"that keep at least one pixel (e.g. scales >= {max(1 / h, 1 / w):.3g}) or a larger image"
            )
    return sizes


@torch.no_grad()
def predict_probs(
    model: nn.Module,
    image: torch.Tensor,
    out_size: Sequence[int] | None = None,
    *,
    mode: str = "whole",
    crop_size: Sequence[int] = (512, 512),
    stride: Sequence[int] = (341, 341),
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
) -> torch.Tensor:
    """Class probabilities N x K x H' x W' for a normalised image batch N x 3 x H x W.

    Args:
        out_size: (H', W') of the result, usually the original image/label size (default: H x W).
        mode: ``"whole"`` or ``"slide"`` (windows ``crop_size`` every ``stride``, as (h, w)).
        scales: ratios applied to ``image`` (bilinear) before inference, sizes as in evaluation
            (:func:`scaled_sizes`); with ``flip`` each scale is also run on the horizontally flipped
            image. Pass the ORIGINAL image: each scale is one resize of it, as in mmseg (evaluation
            uses ``MultiScaleResize`` for the same from uint8 pixels). The softmax probabilities of
            all passes are averaged (:func:`average_probs`).
    """
    check_mode(mode)
    h, w = image.shape[-2:]
    out_size = tuple(out_size) if out_size is not None else (h, w)
    inputs = [
        image if size == (h, w) else F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        for size in scaled_sizes(h, w, scales)
    ]
    return average_probs(model, inputs, out_size, mode=mode, crop_size=crop_size, stride=stride, flip=flip)
