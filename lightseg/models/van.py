"""VAN — Visual Attention Network (Guo et al., "Visual Attention Network", arXiv 2202.09741).

The backbone of the FRM network (SPEC 2.1: the paper names VAN; SPEC 2.2: the variant table and the
block structure below follow the official VAN release, ``Visual-Attention-Network/VAN-Classification``
``models/van.py``, and were checked against it).

Structure, per stage i = 1..4 (strides 4, 8, 16, 32):
- patch embedding: Conv7x7 stride 4 (stage 1) or Conv3x3 stride 2 (stages 2-4), bias, then BatchNorm;
- ``depth_i`` blocks: ``x + ls1 ⊙ SA(BN(x))`` then ``x + ls2 ⊙ MLP(BN(x))`` (layer scale init 1e-2,
  drop-path growing linearly over the global block index from 0 to ``drop_path_rate``), where
  SA = Conv1x1 → GELU → LKA → Conv1x1 plus its own shortcut,
  LKA(u) = ``u ⊙ Conv1x1(DWConv7x7_dil3(DWConv5x5(u)))`` (the "large kernel attention"),
  MLP = Conv1x1 → DWConv3x3 → GELU → Conv1x1 (hidden width ``mlp_ratio × C``);
- LayerNorm over channels (eps 1e-6) at the end of the stage.
``forward`` returns the four stage outputs. Module names mirror the official classification model so
that its ImageNet checkpoints (``{"state_dict": ...}``) map key by key (see :func:`convert_imagenet`).

Normalisation: those checkpoints were trained on ``(rgb - 127.5) / 127.5`` (timm 0.4.12's Inception
mean/std, see the registry entry), while VAN-Segmentation and mmseg's VAN configs fine-tune them on
ImageNet-normalised input, as lightseg's pipeline provides. The factories keep that (the papers'
recipe) by default; ``pretrained_norm=True`` converts the input to the weights' own normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lightseg.checkpoint import CheckpointError, CheckpointLayout, register_layout, remap_keys
from lightseg.layers import DropPath, Renormalize
from lightseg.models.registry import register_model
from lightseg.weights import find_weights


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------
class LKA(nn.Module):
    """Large kernel attention: a 21x21 receptive field from DW5x5 + DW7x7 (dilation 3) + Conv1x1,
    used as a multiplicative gate on its input. N×C×H×W → N×C×H×W."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv0 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv_spatial = nn.Conv2d(dim, dim, 7, padding=9, groups=dim, dilation=3)
        self.conv1 = nn.Conv2d(dim, dim, 1)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return u * self.conv1(self.conv_spatial(self.conv0(u)))


class SpatialAttention(nn.Module):
    """VAN's token mixer: Conv1x1 → GELU → LKA → Conv1x1, plus its own shortcut."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj_1 = nn.Conv2d(dim, dim, 1)
        self.activation = nn.GELU()
        self.spatial_gating_unit = LKA(dim)
        self.proj_2 = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj_2(self.spatial_gating_unit(self.activation(self.proj_1(x))))


class Mlp(nn.Module):
    """Conv1x1 (C→hC) → DWConv3x3 → GELU → Conv1x1 (hC→C)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        # The official code wraps this conv in a one-layer module (``mlp.dwconv.dwconv``);
        # convert_imagenet maps that name.
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x))))


class Block(nn.Module):
    """``x + ls1 ⊙ SA(BN(x))``, ``x + ls2 ⊙ MLP(BN(x))`` with drop-path on both branches."""

    def __init__(self, dim: int, mlp_ratio: float, drop_path: float = 0.0, layer_scale: float = 1e-2):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.attn = SpatialAttention(dim)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.layer_scale_1 = nn.Parameter(torch.full((dim,), layer_scale))
        self.layer_scale_2 = nn.Parameter(torch.full((dim,), layer_scale))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.layer_scale_1[:, None, None] * self.attn(self.norm1(x)))
        return x + self.drop_path(self.layer_scale_2[:, None, None] * self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Overlapping patch embedding: Conv (k, stride s, padding k//2, bias) → BatchNorm."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(cin, cout, kernel, stride, kernel // 2)
        self.norm = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VANConfig:
    widths: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    mlp_ratios: tuple[float, float, float, float] = (8, 8, 4, 4)


# The official variants (VAN paper Table 1; VAN-Classification models/van.py: van_b0 = "van_tiny",
# van_b1 = "van_small", van_b2 = "van_base", van_b3 = "van_large").
VAN_VARIANTS: dict[str, VANConfig] = {
    "b0": VANConfig(widths=(32, 64, 160, 256), depths=(3, 3, 5, 2)),
    "b1": VANConfig(widths=(64, 128, 320, 512), depths=(2, 2, 4, 2)),
    "b2": VANConfig(widths=(64, 128, 320, 512), depths=(3, 3, 12, 3)),
    "b3": VANConfig(widths=(64, 128, 320, 512), depths=(3, 5, 27, 3)),
}


class VAN(nn.Module):
    """VAN backbone. x: N×3×H×W → [F1, F2, F3, F4] at strides 4, 8, 16, 32 with ``cfg.widths``
    channels. ``feature_info[i] = {"num_chs": C_i, "reduction": stride_i}``.

    ``stem_norm=(mean, std)`` converts the ImageNet-normalised input to ``(rgb - mean) / std`` before
    the first layer (:class:`~lightseg.layers.Renormalize`); ``None`` feeds it as is.
    """

    def __init__(
        self,
        cfg: VANConfig,
        drop_path_rate: float = 0.0,
        stem_norm: tuple[Sequence[float], Sequence[float]] | None = None,
    ):
        super().__init__()
        self.cfg = cfg
        self.renorm = Renormalize(*stem_norm) if stem_norm is not None else None
        total = sum(cfg.depths)
        # Linear stochastic-depth rule over the global block index (as the official code).
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        cin, idx = 3, 0
        self.feature_info: list[dict[str, Any]] = []
        for i, (width, depth, ratio) in enumerate(zip(cfg.widths, cfg.depths, cfg.mlp_ratios), start=1):
            kernel, stride = (7, 4) if i == 1 else (3, 2)
            setattr(self, f"patch_embed{i}", PatchEmbed(cin, width, kernel, stride))
            blocks = [Block(width, ratio, rates[idx + j]) for j in range(depth)]
            setattr(self, f"block{i}", nn.ModuleList(blocks))
            setattr(self, f"norm{i}", nn.LayerNorm(width, eps=1e-6))
            self.feature_info.append({"num_chs": width, "reduction": 2 ** (i + 1)})
            cin, idx = width, idx + depth
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.renorm is not None:
            x = self.renorm(x)
        outs = []
        for i in range(1, 5):
            x = getattr(self, f"patch_embed{i}")(x)
            for blk in getattr(self, f"block{i}"):
                x = blk(x)
            # LayerNorm over channels: move C last and back.
            x = getattr(self, f"norm{i}")(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()
            outs.append(x)
        return outs


def _init_weights(m: nn.Module) -> None:
    # The official initialisation: conv weights normal with std sqrt(2 / fan_out), biases zero.
    if isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------------
# Official ImageNet checkpoints (VAN-Classification: ``{"state_dict": classification model}``)
# --------------------------------------------------------------------------------------------------
_IMAGENET_PROBE = ("patch_embed1.proj.weight", "block1.0.attn.spatial_gating_unit.conv0.weight")
_DROPPED = {"head.": "the ImageNet classifier (1000 classes) has no counterpart in a backbone"}


def _imagenet_state(obj: Any) -> dict[str, torch.Tensor] | None:
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if isinstance(state, dict) and all(k in state for k in _IMAGENET_PROBE):
        return state
    return None


def detect_imagenet(obj: Any) -> bool:
    """The official layout: un-prefixed ``patch_embed1.*``/``block1.*`` keys, optionally wrapped in
    ``{"state_dict": ...}``. mmseg files (``backbone.``/``decode_head.`` prefixes) never match."""
    return _imagenet_state(obj) is not None


def convert_imagenet(obj: Any, model: nn.Module) -> dict[str, torch.Tensor]:
    """Map an official VAN ImageNet state dict onto :class:`VAN`; ``head.*`` is dropped (named
    reason); any other key that does not map fails, listed."""
    state = _imagenet_state(obj)
    if state is None:
        raise CheckpointError("not a VAN ImageNet state dict (no patch_embed1/block1 keys)")
    own = model.state_dict()

    def rename(key: str) -> str | None:
        new = key.replace(".mlp.dwconv.dwconv.", ".mlp.dwconv.")
        return new if new in own else None

    return remap_keys(
        state,
        rename,
        drop=lambda key: key.startswith(tuple(_DROPPED)),
        what=f"VAN ImageNet checkpoint for {type(model).__name__} (a different VAN variant?)",
    )


register_layout(
    CheckpointLayout(name="van-imagenet", detect=detect_imagenet, convert=convert_imagenet, target="backbone")
)


# --------------------------------------------------------------------------------------------------
# Public factories
# --------------------------------------------------------------------------------------------------
def _van(variant: str, drop_path_rate: float, pretrained_norm: bool) -> VAN:
    """``pretrained_norm``: feed the stem the normalisation the ImageNet weights were trained with
    (the registry entry's mean/std, 127.5/127.5) instead of the pipeline's ImageNet statistics."""
    stem_norm = None
    if pretrained_norm:
        weights = find_weights(f"van_{variant}")
        stem_norm = (weights.mean, weights.std)
    return VAN(VAN_VARIANTS[variant], drop_path_rate=drop_path_rate, stem_norm=stem_norm)


@register_model(kind="backbone", family="van")
def van_b0(drop_path_rate: float = 0.0, pretrained_norm: bool = False) -> VAN:
    """VAN-B0 (widths 32/64/160/256, depths 3/3/5/2); 3.85 M params, 36.6 GMACs at 1024×2048."""
    return _van("b0", drop_path_rate, pretrained_norm)


@register_model(kind="backbone", family="van")
def van_b1(drop_path_rate: float = 0.0, pretrained_norm: bool = False) -> VAN:
    """VAN-B1 (widths 64/128/320/512, depths 2/2/4/2); 13.35 M params, 105.0 GMACs at 1024×2048."""
    return _van("b1", drop_path_rate, pretrained_norm)


@register_model(kind="backbone", family="van")
def van_b2(drop_path_rate: float = 0.0, pretrained_norm: bool = False) -> VAN:
    """VAN-B2 (widths 64/128/320/512, depths 3/3/12/3); 26.07 M params, 210.0 GMACs at 1024×2048."""
    return _van("b2", drop_path_rate, pretrained_norm)


@register_model(kind="backbone", family="van")
def van_b3(drop_path_rate: float = 0.0, pretrained_norm: bool = False) -> VAN:
    """VAN-B3 (widths 64/128/320/512, depths 3/5/27/3); 44.25 M params, 375.1 GMACs at 1024×2048."""
    return _van("b3", drop_path_rate, pretrained_norm)
