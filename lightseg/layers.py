"""Building blocks shared by two or more model families (and nothing else)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lightseg.meta import IMAGENET_MEAN, IMAGENET_STD


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero whole samples of a residual branch with probability ``rate``,
    scaling the survivors by ``1 / (1 - rate)``."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    def __init__(self, rate: float = 0.0):
        super().__init__()
        self.rate = float(rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.rate, self.training)

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


class Renormalize(nn.Module):
    """Input normalised with lightseg's ImageNet mean/std -> ``(rgb - mean) / std``, the
    normalisation a backbone's pretrained weights were trained with: a fixed per-channel affine
    map, in non-persistent buffers so that state dicts hold learned values only."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        m_in, s_in = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        mean, std = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
        self.register_buffer("scale", (s_in / std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((m_in - mean) / std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class ConvBN(nn.Sequential):
    """Conv2d (no bias unless asked) followed by BatchNorm2d."""

    def __init__(
        self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, bias: bool = False
    ):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=bias),
            nn.BatchNorm2d(cout),
        )


class ConvBNAct(nn.Sequential):
    """Conv2d -> BatchNorm2d -> activation (ReLU by default)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int = 1,
        stride: int = 1,
        groups: int = 1,
        bias: bool = False,
        act: type[nn.Module] = nn.ReLU,
    ):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=bias),
            nn.BatchNorm2d(cout),
            act(),
        )
