"""The math of inference that training, evaluation and deployment share: padding, whole-image and
sliding-window passes, multi-scale + flip averaging, the bilinear resize of logits, and
full-resolution labels from stride-s logits without the K x H x W upsampled tensor."""

from lightseg.inference.passes import (
    MODES,
    average_probs,
    check_mode,
    forward_slide,
    forward_whole,
    pad_to_multiple,
    predict_probs,
    resize_logits,
    scaled_sizes,
    size_divisor,
    slide_windows,
)
from lightseg.inference.upsample import torch_threads, upsample_argmax

__all__ = [
    "MODES",
    "average_probs",
    "check_mode",
    "forward_slide",
    "forward_whole",
    "pad_to_multiple",
    "predict_probs",
    "resize_logits",
    "scaled_sizes",
    "size_divisor",
    "slide_windows",
    "torch_threads",
    "upsample_argmax",
]
