"""EfficientFormerV2, the segmentation variant used as CGRSeg's backbone (SPEC 1.5).

EfficientFormerV2 (Li et al., "Rethinking Vision Transformers for MobileNet Size and Speed",
ICCV 2023) as released with CGRSeg (``models/backbones/efficientformer_v2.py`` of
``nizhenliang/CGRSeg``). Unlike the ImageNet model, its attention runs at any input size: each
attention layer owns a learned position-bias table for a reference grid (512 px input) that is
resized bicubically to the real number of queries x keys on every forward.

Layout of the model (names are the official state-dict keys, so official files map 1:1)::

    patch_embed            stem: Conv3x3 s2 + BN + GELU, Conv3x3 s2 + BN + GELU      -> stride 4
    network.0              stage 1: FFN blocks                                        -> out 0 (s4)
    network.1              Conv3x3 s2 + BN                                            (proj, norm)
    network.2              stage 2: FFN blocks                                        -> out 1 (s8)
    network.3              Conv3x3 s2 + BN                                            (proj, norm)
    network.4              stage 3: FFN blocks, last ``vit_num`` are AttnFFN (stride-2 attention)
                                                                                      -> out 2 (s16)
    network.5              BN(Conv3x3 s2) + AttnDown                                  (conv, bn, attn)
    network.6              stage 4: FFN blocks, last ``vit_num`` are AttnFFN          -> out 3 (s32)

Differences from the official code, all deliberate:

- Dead buffers: the CGRSeg release keeps zero-filled ``attention_biases`` / ``attention_bias_idxs``
  buffers (the classification tables' names) that its forward never reads; this model has no such
  buffers and :func:`convert_official_backbone_keys` drops them by name. Every other key is identical.
- The resized position bias is never cached behind the user's back. The original computes the
  gathered table once in ``train(False)``; weights loaded after ``model.eval()`` were then ignored
  (SPEC 1.5, last bullet). Here the bias is computed from the current table on every forward, or,
  after :meth:`EfficientFormerV2.fix_input_size`, taken from precomputed buffers that are refreshed
  whenever the table changes (load, optimiser step) — outputs are bit-identical either way.
- BatchNorm is not frozen in training: the official ``train()`` override freezes ``nn.BatchNorm2d``
  layers, but the released CGRSeg recipe converts them to SyncBatchNorm first (it loads ImageNet
  weights via ``init_cfg``), which the override does not catch, so the BN layers did train.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lightseg.checkpoint import CheckpointError, CheckpointLayout, register_layout, remap_keys
from lightseg.errors import ConfigError, InputError
from lightseg.layers import ConvBN, DropPath
from lightseg.models.registry import register_model

__all__ = [
    "VARIANTS",
    "Attention4D",
    "AttnDown",
    "EfficientFormerV2",
    "EfficientFormerV2Config",
    "convert_official_backbone_keys",
    "efficientformerv2_l",
    "efficientformerv2_s0",
    "efficientformerv2_s1",
    "efficientformerv2_s2",
]

# The reference input size of the segmentation bias tables (official ``resolution=512``): stage 3 runs
# at 32x32 (halved to 16x16 by its stride-2 attention), stage 4 at 16x16.
REF_RESOLUTION = 512
SIZE_DIVISOR = 32


# --------------------------------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EfficientFormerV2Config:
    """One variant: widths/depths per stage, number of attention blocks at the end of stages 3 and 4
    (``vit_num``), default drop-path rate and the per-block MLP expansion ratios."""

    widths: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    vit_num: int
    drop_path_rate: float
    mlp_ratios: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        if tuple(len(r) for r in self.mlp_ratios) != self.depths:
            raise ConfigError(
                f"mlp_ratios lengths {[len(r) for r in self.mlp_ratios]} != depths {self.depths}"
            )


# Numbers from the official CGRSeg release (models/backbones/efficientformer_v2.py: EfficientFormer_width,
# EfficientFormer_depth, expansion_ratios_*, and the efficientformerv2_*_feat classes for vit_num and
# drop_path_rate), identical to snap-research/EfficientFormer; SPEC 1.5 table.
VARIANTS: dict[str, EfficientFormerV2Config] = {
    "s0": EfficientFormerV2Config(
        widths=(32, 48, 96, 176),
        depths=(2, 2, 6, 4),
        vit_num=2,
        drop_path_rate=0.0,
        mlp_ratios=((4, 4), (4, 4), (4, 3, 3, 3, 4, 4), (4, 3, 3, 4)),
    ),
    "s1": EfficientFormerV2Config(
        widths=(32, 48, 120, 224),
        depths=(3, 3, 9, 6),
        vit_num=2,
        drop_path_rate=0.0,
        mlp_ratios=((4, 4, 4), (4, 4, 4), (4, 4, 3, 3, 3, 3, 4, 4, 4), (4, 4, 3, 3, 4, 4)),
    ),
    "s2": EfficientFormerV2Config(
        widths=(32, 64, 144, 288),
        depths=(4, 4, 12, 8),
        vit_num=4,
        drop_path_rate=0.02,
        mlp_ratios=((4,) * 4, (4,) * 4, (4, 4, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4), (4, 4, 3, 3, 3, 3, 4, 4)),
    ),
    "l": EfficientFormerV2Config(
        widths=(40, 80, 192, 384),
        depths=(5, 5, 15, 10),
        vit_num=6,
        drop_path_rate=0.1,
        mlp_ratios=(
            (4,) * 5,
            (4,) * 5,
            (4, 4, 4, 4, 3, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4),
            (4, 4, 4, 3, 3, 3, 3, 4, 4, 4),
        ),
    ),
}


# --------------------------------------------------------------------------------------------------
# Position bias shared by both attention kinds
# --------------------------------------------------------------------------------------------------
def offset_index(q_res: int, k_res: int, q_step: int) -> torch.Tensor:
    """Index into the bias table for every (query, key) pair of a ``q_res``² x ``k_res``² grid.

    The offset of query (i, j) and key (r, c) is ``(|q_step*i - r|, |q_step*j - c|)``; distinct
    offsets are numbered in order of first appearance with queries and keys both row-major, exactly
    as the official loops do (so official tables line up). Returns a ``q_res² x k_res²`` long tensor.
    """
    return _offset_index(q_res, k_res, q_step).clone()


@functools.lru_cache(maxsize=8)
def _offset_index(q_res: int, k_res: int, q_step: int) -> torch.Tensor:
    # Cached: every attention block of a stage shares the same grid.
    # Always on the CPU (also under a ``torch.device`` context): it is data-dependent index work.
    qi = torch.arange(q_res, device="cpu")
    ki = torch.arange(k_res, device="cpu")
    d = (q_step * qi[:, None] - ki[None, :]).abs()  # q_res x k_res: the offset along one axis
    span = int(d.max()) + 1
    # All pairs, row-major in (q_row, q_col, k_row, k_col): one integer code per 2-D offset.
    code = (d[:, None, :, None] * span + d[None, :, None, :]).reshape(-1)
    n = code.numel()
    first = torch.full((span * span,), n, device="cpu").scatter_reduce(
        0, code, torch.arange(n, device="cpu"), "amin"
    )
    seen = torch.nonzero(first < n).squeeze(1)  # the codes that occur
    rank = torch.empty_like(first)
    rank[seen[torch.argsort(first[seen])]] = torch.arange(seen.numel(), device="cpu")
    return rank[code].view(q_res * q_res, k_res * k_res)


def _tracing() -> bool:
    """True under torch.jit tracing, torch.compile and torch.export (ONNX export included)."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


class _SegPositionBias(nn.Module):
    """The learned, resizable position bias of the segmentation EfficientFormerV2.

    ``attention_biases_seg`` (heads x offsets) is gathered by ``attention_bias_idxs_seg`` into a
    heads x Nq_ref x Nk_ref matrix and resized bicubically (align_corners=False) to the real
    Nq x Nk. After :meth:`fix` the resized bias for one input size lives in ``fixed_bias``
    (a non-persistent buffer, so it follows ``.to()``), used in eval mode only and recomputed
    whenever the table has been modified in place since (``Tensor._version``).
    """

    def _init_bias(self, num_heads: int, q_res: int, k_res: int, q_step: int) -> None:
        idx = offset_index(q_res, k_res, q_step)
        self.attention_biases_seg = nn.Parameter(torch.zeros(num_heads, int(idx.max()) + 1))
        self.register_buffer("attention_bias_idxs_seg", idx)
        self.register_buffer("fixed_bias", None, persistent=False)
        self._fixed_version = -1

    def _resized_bias(self, nq: int, nk: int) -> torch.Tensor:
        """1 x heads x nq x nk, from the current table."""
        bias = self.attention_biases_seg[:, self.attention_bias_idxs_seg].unsqueeze(0)
        if tuple(bias.shape[-2:]) == (nq, nk):
            # At the reference size (512x512 input: the training crop) the bicubic weights are exactly
            # (0, 1, 0, 0), so the resize is a bit-exact identity; skip its cost (tens of ms on CPU).
            return bias
        return F.interpolate(bias, size=(nq, nk), mode="bicubic", align_corners=False)

    def token_counts(self, in_hw: tuple[int, int]) -> tuple[int, int]:
        """(queries, keys) for an input map of ``in_hw``."""
        raise NotImplementedError

    def fix(self, in_hw: tuple[int, int] | None) -> None:
        """Precompute the bias for an input map of ``in_hw`` (this module's input), or drop it."""
        if in_hw is None:
            self.fixed_bias = None
            return
        self._refresh(*self.token_counts(in_hw))

    @torch.no_grad()
    def _refresh(self, nq: int, nk: int) -> None:
        self.fixed_bias = self._resized_bias(nq, nk)
        self._fixed_version = self.attention_biases_seg._version

    def position_bias(self, nq: int, nk: int) -> torch.Tensor:
        fixed = self.fixed_bias
        if fixed is None or self.training:  # training needs the gradient through the table
            return self._resized_bias(nq, nk)
        if tuple(fixed.shape[-2:]) != (nq, nk):
            raise InputError(
                f"{type(self).__name__}: position bias fixed for {tuple(fixed.shape[-2:])} queries x keys, "
                f"got {nq} x {nk}; call fix_input_size() with the new input size, or None for any size"
            )
        if not _tracing() and self.attention_biases_seg._version != self._fixed_version:
            self._refresh(nq, nk)  # the table was loaded or trained since: never serve a stale bias
            fixed = self.fixed_bias
        return fixed


# --------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------
class Attention4D(_SegPositionBias):
    """Multi-head self-attention on an NCHW map with talking heads and a local value branch.

    The official ``Attention4D`` (seg variant): key_dim 32, 8 heads, values 4 x 32 per head.
    With ``stride=2`` (stage 3) the map is first reduced by ``BN(DWConv3x3 s2)`` and the attention
    output is upsampled x2 (bilinear) before the projection.

    Args:
        dim: channels C.
        resolution: side of this module's input map at the 512-px reference input.
        stride: None or 2.

    Shape: N x C x H x W -> N x C x H x W.
    """

    def __init__(
        self,
        dim: int,
        resolution: int,
        stride: int | None = None,
        key_dim: int = 32,
        num_heads: int = 8,
        attn_ratio: int = 4,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.scale = key_dim**-0.5
        self.d = attn_ratio * key_dim
        self.dh = self.d * num_heads
        self.stride = stride
        if stride is not None:
            self.stride_conv = ConvBN(dim, dim, 3, stride, groups=dim, bias=True)
            resolution = -(-resolution // stride)
        nh_kd = key_dim * num_heads
        self.q = ConvBN(dim, nh_kd, bias=True)
        self.k = ConvBN(dim, nh_kd, bias=True)
        self.v = ConvBN(dim, self.dh, bias=True)
        self.v_local = ConvBN(self.dh, self.dh, 3, groups=self.dh, bias=True)
        # "Talking heads": 1x1 convs mixing the head axis before and after the softmax.
        self.talking_head1 = nn.Conv2d(num_heads, num_heads, 1)
        self.talking_head2 = nn.Conv2d(num_heads, num_heads, 1)
        self.proj = nn.Sequential(nn.GELU(), nn.Conv2d(self.dh, dim, 1), nn.BatchNorm2d(dim))
        self._init_bias(num_heads, resolution, resolution, q_step=1)

    def token_counts(self, in_hw: tuple[int, int]) -> tuple[int, int]:
        h, w = in_hw
        if self.stride is not None:
            h, w = -(-h // self.stride), -(-w // self.stride)
        return h * w, h * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        in_hw = x.shape[-2:]
        if self.stride is not None:
            x = self.stride_conv(x)
        h, w = x.shape[-2:]
        n = h * w
        q = self.q(x).reshape(b, self.num_heads, self.key_dim, n).transpose(-2, -1)  # b, heads, n, kd
        k = self.k(x).reshape(b, self.num_heads, self.key_dim, n)  # b, heads, kd, n
        v = self.v(x)
        v_local = self.v_local(v)
        v = v.reshape(b, self.num_heads, self.d, n).transpose(-2, -1)  # b, heads, n, d
        attn = (q @ k) * self.scale + self.position_bias(n, n)
        attn = self.talking_head2(self.talking_head1(attn).softmax(dim=-1))
        out = (attn @ v).transpose(-2, -1).reshape(b, self.dh, h, w) + v_local
        if self.stride is not None:
            out = F.interpolate(out, size=in_hw, mode="bilinear", align_corners=False)
        return self.proj(out)


class LGQuery(nn.Module):
    """The stride-2 query of AttnDown: ``BN(Conv1x1(DWConv3x3 s2(x) + x[:, :, ::2, ::2]))``.

    (The official ``nn.AvgPool2d(1, 2)`` is exactly the ``::2`` subsampling, written as slicing.)
    """

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.local = nn.Sequential(nn.Conv2d(dim, dim, 3, 2, 1, groups=dim))
        self.proj = ConvBN(dim, out_dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.local(x) + x[:, :, ::2, ::2])


class AttnDown(_SegPositionBias):
    """Attention downsampling between stages 3 and 4 (official ``Attention4DDownsample``).

    key_dim 16, 8 heads, values 4 x 16 per head; queries on the stride-2 grid (:class:`LGQuery`),
    keys/values on the full grid; plain softmax (no talking heads). The bias table covers a 16x16
    query grid against a 32x32 key grid with offsets ``(|2 q_row - k_row|, |2 q_col - k_col|)``.

    Shape: N x C x H x W -> N x out_dim x H/2 x W/2 (H, W even).
    """

    def __init__(
        self,
        dim: int,
        out_dim: int,
        resolution: int,
        key_dim: int = 16,
        num_heads: int = 8,
        attn_ratio: int = 4,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.scale = key_dim**-0.5
        self.d = attn_ratio * key_dim
        self.dh = self.d * num_heads
        nh_kd = key_dim * num_heads
        self.q = LGQuery(dim, nh_kd)
        self.k = ConvBN(dim, nh_kd, bias=True)
        self.v = ConvBN(dim, self.dh, bias=True)
        self.v_local = ConvBN(self.dh, self.dh, 3, 2, groups=self.dh, bias=True)
        self.proj = nn.Sequential(nn.GELU(), nn.Conv2d(self.dh, out_dim, 1), nn.BatchNorm2d(out_dim))
        self._init_bias(num_heads, -(-resolution // 2), resolution, q_step=2)

    def token_counts(self, in_hw: tuple[int, int]) -> tuple[int, int]:
        h, w = in_hw
        return (-(-h // 2)) * (-(-w // 2)), h * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        h, w = x.shape[-2:]
        q = self.q(x)
        h2, w2 = q.shape[-2:]
        q = q.reshape(b, self.num_heads, self.key_dim, h2 * w2).transpose(-2, -1)
        k = self.k(x).reshape(b, self.num_heads, self.key_dim, h * w)
        v = self.v(x)
        v_local = self.v_local(v)
        v = v.reshape(b, self.num_heads, self.d, h * w).transpose(-2, -1)
        attn = (q @ k) * self.scale + self.position_bias(h2 * w2, h * w)
        out = (attn.softmax(dim=-1) @ v).transpose(-2, -1).reshape(b, self.dh, h2, w2) + v_local
        return self.proj(out)


class Mlp(nn.Module):
    """``BN(Conv1x1(GELU(BN(DWConv3x3(GELU(BN(Conv1x1(x))))))))`` (official ``Mlp`` with mid_conv)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        # Creation order and init follow the official code, so a seeded build draws the same numbers:
        # trunc-normal std 0.02 for the two 1x1 convs, then the DW conv with PyTorch's default init.
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        for conv in (self.fc1, self.fc2):
            nn.init.trunc_normal_(conv.weight, std=0.02)
            nn.init.zeros_(conv.bias)
        self.mid = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.mid_norm = nn.BatchNorm2d(hidden)
        self.norm1 = nn.BatchNorm2d(hidden)
        self.norm2 = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.fc1(x)))
        x = self.act(self.mid_norm(self.mid(x)))
        return self.norm2(self.fc2(x))


def _layer_scale(dim: int, init: float) -> nn.Parameter:
    return nn.Parameter(torch.full((dim, 1, 1), init))


class FFN(nn.Module):
    """``x + drop_path(ls2 * Mlp(x))`` — the convolutional block of every stage."""

    def __init__(self, dim: int, mlp_ratio: float, drop_path: float, layer_scale_init: float):
        super().__init__()
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)
        self.layer_scale_2 = _layer_scale(dim, layer_scale_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.layer_scale_2 * self.mlp(x))


class AttnFFN(nn.Module):
    """``x + drop_path(ls1 * Attention4D(x))`` then ``x + drop_path(ls2 * Mlp(x))``."""

    def __init__(
        self,
        dim: int,
        mlp_ratio: float,
        drop_path: float,
        layer_scale_init: float,
        resolution: int,
        stride: int | None,
    ):
        super().__init__()
        self.token_mixer = Attention4D(dim, resolution, stride=stride)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)
        self.layer_scale_1 = _layer_scale(dim, layer_scale_init)
        self.layer_scale_2 = _layer_scale(dim, layer_scale_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.layer_scale_1 * self.token_mixer(x))
        return x + self.drop_path(self.layer_scale_2 * self.mlp(x))


class ConvDown(nn.Module):
    """``BN(Conv3x3 s2(x))`` between stages 1-2 and 2-3 (official ``Embedding``)."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(dim, out_dim, 3, 2, 1)
        self.norm = nn.BatchNorm2d(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class AttnConvDown(nn.Module):
    """``BN(Conv3x3 s2(x)) + AttnDown(x)`` between stages 3 and 4 (official ``Embedding(asub=True)``)."""

    def __init__(self, dim: int, out_dim: int, resolution: int):
        super().__init__()
        self.attn = AttnDown(dim, out_dim, resolution)
        self.conv = nn.Conv2d(dim, out_dim, 3, 2, 1)
        self.bn = nn.BatchNorm2d(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x) + self.bn(self.conv(x))


def _stem(in_chans: int, dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_chans, dim // 2, 3, 2, 1),
        nn.BatchNorm2d(dim // 2),
        nn.GELU(),
        nn.Conv2d(dim // 2, dim, 3, 2, 1),
        nn.BatchNorm2d(dim),
        nn.GELU(),
    )


def drop_path_rates(depths: Sequence[int], rate: float) -> list[list[float]]:
    """Per-stage lists of per-block rates: ``rate * global_idx / (total_blocks - 1)`` (official)."""
    total = sum(depths)
    rates = [rate * i / (total - 1) for i in range(total)]
    starts = [sum(depths[:s]) for s in range(len(depths))]
    return [rates[a : a + n] for a, n in zip(starts, depths)]


# --------------------------------------------------------------------------------------------------
# The backbone
# --------------------------------------------------------------------------------------------------
class EfficientFormerV2(nn.Module):
    """EfficientFormerV2 feature extractor (segmentation variant, SPEC 1.5).

    ``forward(x)``: x N x 3 x H x W (H, W multiples of 32) -> 4 maps
    ``[N x w0 x H/4 x W/4, N x w1 x H/8 x W/8, N x w2 x H/16 x W/16, N x w3 x H/32 x W/32]``.
    ``feature_info[i]`` gives ``num_chs`` = w_i and ``reduction`` = 4 * 2**i.

    Position biases are resized for the actual input on every forward; for a fixed deployment size
    call :meth:`fix_input_size` once (eval mode only, bit-identical outputs, the biases become
    constants for export). Memory of the fixed biases: 8 heads x Nq x Nk floats per attention
    layer, e.g. 2 MiB per stage-4 layer and 8 MiB for the AttnDown at 512x512.

    Args:
        config: the variant (see ``VARIANTS``).
        drop_path_rate: stochastic-depth rate of the last block (None: the variant's default).
        layer_scale_init: initial value of every layer scale (official 1e-5).
        in_chans: input channels.
    """

    def __init__(
        self,
        config: EfficientFormerV2Config,
        drop_path_rate: float | None = None,
        layer_scale_init: float = 1e-5,
        in_chans: int = 3,
    ):
        super().__init__()
        self.config = config
        rate = config.drop_path_rate if drop_path_rate is None else float(drop_path_rate)
        widths, depths = config.widths, config.depths
        dprs = drop_path_rates(depths, rate)
        self.patch_embed = _stem(in_chans, widths[0])
        network: list[nn.Module] = []
        for i, (dim, depth) in enumerate(zip(widths, depths)):
            resolution = -(-REF_RESOLUTION // 2 ** (i + 2))  # this stage's side at the reference input
            blocks: list[nn.Module] = []
            for j in range(depth):
                ratio = config.mlp_ratios[i][j]
                if i >= 2 and j >= depth - config.vit_num:  # last vit_num blocks of stages 3 and 4
                    stride = 2 if i == 2 else None
                    blocks.append(AttnFFN(dim, ratio, dprs[i][j], layer_scale_init, resolution, stride))
                else:
                    blocks.append(FFN(dim, ratio, dprs[i][j], layer_scale_init))
            network.append(nn.Sequential(*blocks))
            if i == 3:
                break
            if i >= 2:
                network.append(AttnConvDown(dim, widths[i + 1], resolution))
            else:
                network.append(ConvDown(dim, widths[i + 1]))
        self.network = nn.ModuleList(network)
        self.out_indices = (0, 2, 4, 6)
        self.feature_info: list[dict] = [
            {"num_chs": c, "reduction": 4 * 2**i, "module": f"network.{2 * i}"} for i, c in enumerate(widths)
        ]
        self.fixed_input_size: tuple[int, int] | None = None

    # -- fixed-size mode -------------------------------------------------------------------------------
    def _bias_modules(self) -> list[tuple[_SegPositionBias, int]]:
        """Every attention module with the stride of its input map: stage-3 blocks and the AttnDown
        read the stride-16 map, stage-4 blocks the stride-32 map."""
        stage3 = [b.token_mixer for b in self.network[4] if isinstance(b, AttnFFN)]
        stage4 = [b.token_mixer for b in self.network[6] if isinstance(b, AttnFFN)]
        return [(m, 16) for m in [*stage3, self.network[5].attn]] + [(m, 32) for m in stage4]

    def fix_input_size(self, size: tuple[int, int] | None) -> None:
        """Precompute every resized position bias for inputs of ``size`` = (H, W), or go back to
        computing them on each forward (``None``).

        Saves the bicubic resizing on every forward (tens of ms on CPU) and makes them constants
        for export. Outputs are bit-identical to the dynamic mode; the buffers are refreshed when
        the bias tables change, used only in eval mode, and any other input size raises.
        """
        if size is not None:
            h, w = (int(s) for s in size)
            self._check_size(h, w)
            size = (h, w)
        for m, stride in self._bias_modules():
            m.fix(None if size is None else (size[0] // stride, size[1] // stride))
        self.fixed_input_size = size

    def _check_size(self, h: int, w: int) -> None:
        if h % SIZE_DIVISOR or w % SIZE_DIVISOR:
            d = SIZE_DIVISOR
            raise InputError(
                f"input size {h}x{w} is not a multiple of {d}: EfficientFormerV2 needs height and width "
                f"divisible by {d} (pad to {-(-h // d) * d}x{-(-w // d) * d})"
            )

    # -- forward ---------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if not _tracing():  # eager checks; under export the shapes may be symbolic
            self._check_input(x)
        x = self.patch_embed(x)
        outs = []
        for i, block in enumerate(self.network):
            x = block(x)
            if i in self.out_indices:
                outs.append(x)
        return outs

    def _check_input(self, x: torch.Tensor) -> None:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        self._check_size(h, w)
        fixed = self.fixed_input_size
        if fixed is not None and not self.training and (h, w) != fixed:
            raise InputError(
                f"EfficientFormerV2 was fixed to input size {fixed[0]}x{fixed[1]} by fix_input_size(), "
                f"got {h}x{w}; call fix_input_size(({h}, {w})) or fix_input_size(None) for any size"
            )


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------
_CLASSIFIER_PREFIXES = ("norm.", "head.", "dist_head.")
_CLS_BIAS_SUFFIXES = (".attention_biases", ".attention_bias_idxs")


def _drop_reason(key: str, imagenet: bool) -> str | None:
    """Why an official key has no counterpart here, or None if it must map."""
    if imagenet and key.startswith(_CLASSIFIER_PREFIXES):
        return "ImageNet classifier (final norm, head, distillation head); a backbone has none"
    if key.endswith(_CLS_BIAS_SUFFIXES):
        if imagenet:
            return (
                "fixed-size classification position-bias table (7x7 / 14x14 grids at 224 px); the "
                "segmentation tables attention_biases_seg are separate and start at zero"
            )
        return "dead buffer of the CGRSeg release (never read by its forward)"
    return None


def convert_official_backbone_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official CGRSeg backbone state dict (keys without ``backbone.``) -> this model's state dict.

    Names are identical; the only change is dropping the release's dead ``*.attention_biases`` /
    ``*.attention_bias_idxs`` buffers (zero/one-filled, never read). Anything else passes through
    unchanged, so a strict load then reports every key that does not fit.
    """
    return {k: v for k, v in state.items() if _drop_reason(k, imagenet=False) is None}


def _detect_imagenet(obj: object) -> bool:
    """``{"model": state_dict}`` of the official EfficientFormerV2 classification model."""
    if not isinstance(obj, dict) or "state_dict" in obj or obj.get("format") is not None:
        return False
    state = obj.get("model")
    if not isinstance(state, Mapping):
        return False
    keys = [k for k in state if isinstance(k, str)]
    # ``.mlp.mid.`` (the DW conv in the MLP) is V2-specific; EfficientFormer V1 files lack it.
    return any(k.startswith("patch_embed.") for k in keys) and any(".mlp.mid." in k for k in keys)


def _convert_imagenet(obj: dict, model: nn.Module) -> dict[str, torch.Tensor]:
    if not isinstance(model, EfficientFormerV2):
        raise CheckpointError(
            f"an EfficientFormerV2 ImageNet checkpoint needs an EfficientFormerV2 backbone, "
            f"the model's backbone is {type(model).__name__}"
        )
    own = model.state_dict()
    out = remap_keys(
        obj["model"],
        rename=lambda key: key if key in own else None,
        drop=lambda key: _drop_reason(key, imagenet=True) is not None,
        what="EfficientFormerV2 ImageNet checkpoint (only norm.*, head.*, dist_head.* and the "
        "classification attention_biases / attention_bias_idxs are dropped)",
    )
    return _with_fresh_seg_tables(out, own)


def _with_fresh_seg_tables(
    state: dict[str, torch.Tensor], own: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """ImageNet models have no segmentation position-bias tables: they start at zero (as in the
    CGRSeg release, which loads ImageNet weights non-strictly), their index buffers as built."""
    for key, tensor in own.items():
        if key.endswith("attention_biases_seg") and key not in state:
            state[key] = torch.zeros_like(tensor)
        elif key.endswith("attention_bias_idxs_seg") and key not in state:
            state[key] = tensor.clone()
    return state


IMAGENET_LAYOUT = register_layout(
    CheckpointLayout(
        name="efficientformerv2-imagenet",
        detect=_detect_imagenet,
        convert=_convert_imagenet,
        target="backbone",
    )
)


# timm's layout (``timm/efficientformerv2_*.snap_dist_in1k`` on the Hugging Face Hub): the same
# modules as the official release under other names. Conv+BN pairs are ``ConvNorm`` modules
# (``.conv``/``.bn``), stages hold their own ``downsample``, layer scales are ``ls1/ls2.gamma`` of
# shape (C,) where ours are (C, 1, 1). Rules are tried in order on the key with its stage prefix
# (``stages.<i>.blocks.<j>.`` / ``stages.<i>.downsample.``) already rewritten.
_TIMM_CONVNORM = {"conv": "0", "bn": "1"}
_TIMM_BLOCK_RULES = [
    (r"mlp\.fc1\.conv\.(.+)", r"mlp.fc1.\1"),
    (r"mlp\.fc1\.bn\.(.+)", r"mlp.norm1.\1"),
    (r"mlp\.mid\.conv\.(.+)", r"mlp.mid.\1"),
    (r"mlp\.mid\.bn\.(.+)", r"mlp.mid_norm.\1"),
    (r"mlp\.fc2\.conv\.(.+)", r"mlp.fc2.\1"),
    (r"mlp\.fc2\.bn\.(.+)", r"mlp.norm2.\1"),
    (r"ls([12])\.gamma", r"layer_scale_\1"),
    (r"token_mixer\.proj\.conv\.(.+)", r"token_mixer.proj.1.\1"),
    (r"token_mixer\.proj\.bn\.(.+)", r"token_mixer.proj.2.\1"),
    (r"token_mixer\.(stride_conv|q|k|v|v_local)\.(conv|bn)\.(.+)", None),  # ConvNorm -> ConvBN
    (r"token_mixer\.(talking_head[12]\.(?:weight|bias))", r"token_mixer.\1"),
]
_TIMM_DOWN_RULES = [  # stages.3.downsample (conv + attention) -> network.5
    (r"conv\.conv\.(.+)", r"conv.\1"),
    (r"conv\.bn\.(.+)", r"bn.\1"),
    (r"attn\.q\.local\.(weight|bias)", r"attn.q.local.0.\1"),
    (r"attn\.q\.proj\.(conv|bn)\.(.+)", None),
    (r"attn\.(k|v|v_local)\.(conv|bn)\.(.+)", None),
    (r"attn\.proj\.conv\.(.+)", r"attn.proj.1.\1"),
    (r"attn\.proj\.bn\.(.+)", r"attn.proj.2.\1"),
]
_TIMM_STEM = {
    "stem.conv1.conv.": "patch_embed.0.",
    "stem.conv1.bn.": "patch_embed.1.",
    "stem.conv2.conv.": "patch_embed.3.",
    "stem.conv2.bn.": "patch_embed.4.",
}
_TIMM_DROPS = {
    ("norm.", "head.", "head_dist."): "ImageNet classifier (final norm, head, distillation head)",
    (".attention_biases",): "fixed-size classification position-bias table (7x7 grid at 224 px, indexed by "
    "offsets on that grid); the segmentation tables attention_biases_seg are separate and start at zero",
}


def _timm_drop(key: str) -> bool:
    return any(key.startswith(p) or key.endswith(p) for group in _TIMM_DROPS for p in group)


def _apply_rules(rest: str, rules: list[tuple[str, str | None]]) -> str | None:
    """``rest`` renamed by the first matching rule; a rule without replacement is a timm ConvNorm
    whose last two groups are (``conv``|``bn``, parameter): renamed to our ConvBN's ``0``/``1``."""
    for pattern, repl in rules:
        m = re.fullmatch(pattern, rest)
        if m is None:
            continue
        if repl is not None:
            return m.expand(repl)
        kind = m.lastindex - 1
        return f"{rest[: m.start(kind)]}{_TIMM_CONVNORM[m.group(kind)]}.{m.group(m.lastindex)}"
    return None


def map_timm_key(key: str) -> str | None:
    """Our name for a key of timm's EfficientFormerV2, or None when it has none."""
    for src, dst in _TIMM_STEM.items():
        if key.startswith(src):
            return dst + key[len(src) :]
    m = re.fullmatch(r"stages\.(\d)\.blocks\.(\d+)\.(.+)", key)
    if m:
        rest = _apply_rules(m.group(3), _TIMM_BLOCK_RULES)
        return None if rest is None else f"network.{2 * int(m.group(1))}.{m.group(2)}.{rest}"
    m = re.fullmatch(r"stages\.([12])\.downsample\.conv\.(conv|bn)\.(.+)", key)
    if m:
        return f"network.{2 * int(m.group(1)) - 1}.{'proj' if m.group(2) == 'conv' else 'norm'}.{m.group(3)}"
    m = re.fullmatch(r"stages\.3\.downsample\.(.+)", key)
    if m:
        rest = _apply_rules(m.group(1), _TIMM_DOWN_RULES)
        return None if rest is None else f"network.5.{rest}"
    return None


def _detect_timm(obj: object) -> bool:
    """A timm EfficientFormerV2 state dict (``stem.conv1.conv.*``, ``stages.N.blocks.*``)."""
    return (
        isinstance(obj, Mapping)
        and "stem.conv1.conv.weight" in obj
        and "stages.0.blocks.0.mlp.fc1.conv.weight" in obj
    )


def _convert_timm(obj: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    if not isinstance(model, EfficientFormerV2):
        raise CheckpointError(
            f"a timm EfficientFormerV2 checkpoint needs an EfficientFormerV2 backbone, got {type(model).__name__}"
        )
    own = model.state_dict()
    state = remap_keys(
        obj,
        map_timm_key,
        drop=_timm_drop,
        what="timm EfficientFormerV2 checkpoint (dropped by name: "
        + "; ".join(f"{', '.join(g)}: {why}" for g, why in _TIMM_DROPS.items())
        + ")",
    )
    for key, tensor in list(state.items()):
        if key.rsplit(".", 1)[-1].startswith("layer_scale_") and key in own:
            state[key] = tensor.reshape(-1, 1, 1)  # (C,) -> (C, 1, 1); a wrong C fails the strict load
    return _with_fresh_seg_tables(state, own)


TIMM_LAYOUT = register_layout(
    CheckpointLayout(
        name="efficientformerv2-timm", detect=_detect_timm, convert=_convert_timm, target="backbone"
    )
)


# --------------------------------------------------------------------------------------------------
# Factories
# --------------------------------------------------------------------------------------------------
def _create(variant: str, drop_path_rate: float | None, **kwargs) -> EfficientFormerV2:
    return EfficientFormerV2(VARIANTS[variant], drop_path_rate=drop_path_rate, **kwargs)


@register_model(kind="backbone", family="efficientformer_v2")
def efficientformerv2_s0(drop_path_rate: float | None = None, **kwargs) -> EfficientFormerV2:
    """EfficientFormerV2-S0 (widths 32/48/96/176); kwargs go to :class:`EfficientFormerV2`."""
    return _create("s0", drop_path_rate, **kwargs)


@register_model(kind="backbone", family="efficientformer_v2")
def efficientformerv2_s1(drop_path_rate: float | None = None, **kwargs) -> EfficientFormerV2:
    """EfficientFormerV2-S1 (widths 32/48/120/224), CGRSeg-T's backbone."""
    return _create("s1", drop_path_rate, **kwargs)


@register_model(kind="backbone", family="efficientformer_v2")
def efficientformerv2_s2(drop_path_rate: float | None = None, **kwargs) -> EfficientFormerV2:
    """EfficientFormerV2-S2 (widths 32/64/144/288), CGRSeg-B's backbone."""
    return _create("s2", drop_path_rate, **kwargs)


@register_model(kind="backbone", family="efficientformer_v2")
def efficientformerv2_l(drop_path_rate: float | None = None, **kwargs) -> EfficientFormerV2:
    """EfficientFormerV2-L (widths 40/80/192/384), CGRSeg-L's backbone."""
    return _create("l", drop_path_rate, **kwargs)
