"""The graph an export contains: the model plus its output stage, at a fixed input size.

Exported graphs have a static spatial size (CGRSeg's pyramid pooling pools to a size computed from
the input, and the attention-bias tables are resized to the fixed grid once, at export time); the
batch dimension is optionally dynamic.

What the graph returns (``output``, :data:`~lightseg.deploy.formats.GRAPH_OUTPUTS`):
- ``"logits"``: N x K x H/s x W/s float logits at the model's output stride s (8 for CGRSeg);
- ``"logits-full"``: the same bilinearly upsampled (align_corners=False) to N x K x H x W;
- ``"argmax"``: ``argmax_k`` of ``"logits-full"`` as N x H x W uint8 labels (K <= 256).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lightseg.deploy.formats import GRAPH_OUTPUTS
from lightseg.errors import ConfigError, InputError
from lightseg.fuse import optimize_for_inference
from lightseg.inference import resize_logits, size_divisor

INPUT_NAME = "image"
# Graph output names per output kind (an output named "argmax" clashes with the ArgMax node's name).
OUTPUT_NAMES = {"logits": "logits", "logits-full": "logits_full", "argmax": "labels"}


class InferenceGraph(nn.Module):
    """``model`` plus the output stage that an exported graph contains (see the module docstring)."""

    def __init__(self, model: nn.Module, output: str = "logits"):
        super().__init__()
        if output not in GRAPH_OUTPUTS:
            raise ConfigError(f"output must be one of {', '.join(GRAPH_OUTPUTS)}; got {output!r}")
        num_classes = getattr(model, "num_classes", None)
        if output == "argmax" and num_classes is not None and num_classes > 256:
            raise ConfigError(f"uint8 argmax output holds at most 256 classes; the model has {num_classes}")
        self.model = model
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        if self.output == "logits":
            return logits
        full = resize_logits(logits, x.shape[-2:])
        if self.output == "logits-full":
            return full
        return full.argmax(1).to(torch.uint8)


def check_export_size(model: nn.Module, size: Sequence[int]) -> tuple[int, int]:
    """``size`` as (H, W) when both sides are multiples of the model's size divisor, else an error
    naming the nearest larger size that is."""
    if len(size) != 2:
        raise InputError(f"size must be (H, W), got {tuple(size)}")
    h, w = int(size[0]), int(size[1])
    d = size_divisor(model)
    if h % d or w % d:
        raise InputError(
            f"export size {h}x{w} is not a multiple of {d}; use {-(-h // d) * d}x{-(-w // d) * d} "
            "(predict pads inputs to the exported size)"
        )
    return h, w


def inference_graph(
    model: nn.Module, size: Sequence[int], output: str = "logits", optimize: str = "fold-bn"
) -> InferenceGraph:
    """An eval-mode :class:`InferenceGraph` for a fixed input ``size`` (BN folded and attention
    biases fixed unless ``optimize="none"``)."""
    hw = check_export_size(model, size)
    prepared = optimize_for_inference(model, optimize, size=hw if optimize != "none" else None)
    return InferenceGraph(prepared, output).eval()
