"""CGRSeg: context-guided spatial feature reconstruction (Ni et al., ECCV 2024, arXiv 2405.06228).

Readable top to bottom: the rectangular self-calibration attention (RCA) and module (RCM), pyramid
pooling aggregation, pyramid context extraction, the top-down spatial feature reconstruction with
sigmoid gates, the coarse prediction, the dynamic prototype guided (DPG) head, the full head, the
variants T/B/L, the filter for the official mmseg checkpoints and the public factories.

Everything follows the official release (``models/decode_heads/{cgr_head,rcm,dpg_head}.py`` and
``local_configs/cgrseg/cgrseg-{t,b,l}_ade20k_160k.py`` of github.com/nizhenliang/CGRSeg) weight for
weight: an official mmseg checkpoint loads strictly through :func:`convert_mmseg_checkpoint`.

Things of the release that we deliberately do not reproduce (none of them owns a weight):
- ``linear_fuse``'s ``is_dw=False`` default (every config sets ``is_dw=True``: a depthwise 1x1 conv);
- ``FuseBlockMulti``'s ``stride`` and ``activations`` (nothing reads them), the ``SyncBN``/``ReLU6``
  values the head builds for it, and the unused arguments of ``RCA`` (``kernel_size``, ``dw_size``,
  ``padding``, ``stride``, ``relu``);
- ``DPGHead``'s ``pool='avg'`` and ``channel_add`` branches (the head only builds ``'att'`` /
  ``channel_mul``; the others never exist in a checkpoint);
- mmseg's ``align_corners`` (only the loss-side resize reads it; it is ``False`` here everywhere).

The official state dict has no dead head weights: every ``decode_head`` key is used. Its backbone part
carries dead ``attention_biases`` / ``attention_bias_idxs`` buffers, dropped by name in
:func:`lightseg.models.efficientformer_v2.convert_official_backbone_keys`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightseg.checkpoint import CheckpointError, CheckpointLayout, register_layout, remap_keys
from lightseg.layers import ConvBN
from lightseg.models.efficientformer_v2 import convert_official_backbone_keys
from lightseg.models.registry import get_entry, register_model
from lightseg.models.segmentor import Segmentor

__all__ = [
    "RCA",
    "RCM",
    "VARIANTS",
    "CGRSegHead",
    "CGRSegHeadConfig",
    "CGRSegVariant",
    "DPGHead",
    "build_cgrseg",
    "cgrseg_b",
    "cgrseg_l",
    "cgrseg_t",
    "convert_mmseg_checkpoint",
    "pyramid_pool",
]


def _resize(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    # Every resize of the official head is bilinear with align_corners=False.
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


# ---------------------------------------------------------------------------------------------
# RCA and RCM (official rcm.py)
# ---------------------------------------------------------------------------------------------
class RCA(nn.Module):
    """Rectangular self-calibration attention: ``att(x) ⊙ DWConv_{s×s}(x)``.

    ``att = sigmoid(DWConv_{k×1}(ReLU(BN(DWConv_{1×k}(mean_W(x) + mean_H(x))))))``: the sum of the
    two strip poolings is a C×H×W "cross" map; the horizontal then vertical band convs spread it
    into a rectangle. With ``ratio`` r the band convs are grouped with C/r groups and C/r middle
    channels (official default r = 1: depthwise). Shape preserving: N×C×H×W -> N×C×H×W.
    Official names: ``dwconv_hw`` = ``local``, ``excite.{0,1,3}`` = ``band_w``, ``band_norm``, ``band_h``.
    """

    def __init__(self, dim: int, band_kernel: int = 11, square_kernel: int = 3, ratio: int = 1):
        super().__init__()
        mid = dim // ratio
        self.local = nn.Conv2d(dim, dim, square_kernel, padding=square_kernel // 2, groups=dim)
        self.band_w = nn.Conv2d(dim, mid, (1, band_kernel), padding=(0, band_kernel // 2), groups=mid)
        self.band_norm = nn.BatchNorm2d(mid)
        self.band_h = nn.Conv2d(mid, dim, (band_kernel, 1), padding=(band_kernel // 2, 0), groups=mid)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean(dim=3, keepdim=True) + x.mean(dim=2, keepdim=True)  # N×C×H×1 + N×C×1×W
        return torch.sigmoid(self.band_h(F.relu(self.band_norm(self.band_w(y)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(x) * self.local(x)


class ConvMlp(nn.Module):
    """Conv1x1 (C -> hidden) -> GELU -> Conv1x1 (hidden -> C), both with bias."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class RCM(nn.Module):
    """Rectangular self-calibration module: ``x + γ ⊙ MLP(BN(RCA(x)))``, γ initialised to 1e-6.

    A MetaNeXt-style block (official ``RCM``; its RCA is called ``token_mixer`` there). The MLP ratio
    is 2 in the released code (which is what reproduces the published parameter counts).
    N×C×H×W -> N×C×H×W.
    """

    def __init__(
        self,
        dim: int,
        band_kernel: int = 11,
        square_kernel: int = 3,
        mlp_ratio: float = 2.0,
        ratio: int = 1,
        ls_init: float = 1e-6,
    ):
        super().__init__()
        self.rca = RCA(dim, band_kernel, square_kernel, ratio)
        self.norm = nn.BatchNorm2d(dim)
        self.mlp = ConvMlp(dim, int(mlp_ratio * dim))
        self.gamma = nn.Parameter(torch.full((dim,), ls_init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(self.rca(x))) * self.gamma.view(1, -1, 1, 1)


# ---------------------------------------------------------------------------------------------
# Pyramid pooling aggregation and the top-down reconstruction (official cgr_head.py)
# ---------------------------------------------------------------------------------------------
def pyramid_pool(features: list[torch.Tensor]) -> torch.Tensor:
    """Pool every map to half the size of the last (coarsest) one, rounding up, and concatenate.

    ``[N×c_i×H_i×W_i] -> N×Σc_i×((H_last−1)//2+1)×((W_last−1)//2+1)`` (≈ stride 64 for
    stride-32 last maps; official ``PyramidPoolAgg(stride=2)``).
    """
    h, w = features[-1].shape[-2:]
    size = ((h - 1) // 2 + 1, (w - 1) // 2 + 1)
    return torch.cat([F.adaptive_avg_pool2d(f, size) for f in features], dim=1)


class ReconstructionLevel(nn.Module):
    """One level of the spatial feature reconstruction, coarse to fine.

    ``L = x + Conv1x1_{C→c}(up(R_above))`` (not on the coarsest level), ``L = RCM(L)``, then
    ``R = BN(Conv1x1_{c→C}(L)) ⊙ up(hsig(BN(Conv1x1_{c→C}(g))))`` where ``g`` is this level's
    slice of the pyramid context. Output: N×C×h×w at this level's resolution.
    Official names: ``conv.i`` = ``lateral``, ``meta.i`` = ``rcm``, ``SIM.i.fuse1`` = ``local_proj``,
    ``SIM.i.fuse2`` = ``gate_proj``.
    """

    def __init__(
        self,
        width: int,
        channels: int,
        band_kernel: int,
        square_kernel: int,
        mlp_ratio: float,
        ratio: int,
        lateral: bool,
    ):
        super().__init__()
        self.lateral = nn.Conv2d(channels, width, 1) if lateral else None
        self.rcm = RCM(width, band_kernel, square_kernel, mlp_ratio, ratio)
        self.local_proj = ConvBN(width, channels, 1)
        self.gate_proj = ConvBN(width, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor, above: torch.Tensor | None) -> torch.Tensor:
        if self.lateral is not None:
            if above is None:
                raise ValueError("a level with a lateral conv needs the reconstruction from above")
            x = x + self.lateral(_resize(above, x.shape[-2:]))
        x = self.rcm(x)
        gate = _resize(F.hardsigmoid(self.gate_proj(context)), x.shape[-2:])  # relu6(z+3)/6
        return self.local_proj(x) * gate


# ---------------------------------------------------------------------------------------------
# Classifier and the dynamic prototype guided head (official dpg_head.py)
# ---------------------------------------------------------------------------------------------
class Classifier(nn.Module):
    """Dropout2d -> Conv1x1 (C -> K, bias; weight normal std 0.01, bias 0).

    mmseg's ``cls_seg`` with ``conv_seg``: the SAME module makes the coarse and the final logits.
    """

    def __init__(self, channels: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout2d(dropout)
        self.conv = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv.weight, std=0.01)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.dropout(x))


def class_prototypes(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``P_k = Σ_p softmax_p(M_k)_p · x_p``: x N×C×H×W, logits N×K×H×W -> N×C×K×1.

    The official ``SpatialGatherModule(scale=1)`` (OCR's soft object regions).
    """
    attn = logits.flatten(2).softmax(dim=2)  # N×K×HW
    protos = torch.bmm(attn, x.flatten(2).transpose(1, 2))  # N×K×C
    return protos.transpose(1, 2).unsqueeze(3)


class DPGHead(nn.Module):
    """Dynamic prototype guidance: ``x ⊙ s(P) + x``.

    ``a = softmax_k(Conv1x1_{C→1}(P))``, ``z = Σ_k a_k P_k`` (N×C×1×1),
    ``s = sigmoid(Conv1x1(ReLU(LayerNorm_{[C,1,1]}(Conv1x1(z)))))``. The last conv is zero-initialised
    (s = 0.5 at the start), ``prototype_score`` is Kaiming-normal (fan_in, relu) with zero bias.
    Official names: ``lgc.conv_mask`` = ``prototype_score``, ``lgc.channel_mul_conv`` = ``channel_gate``.
    x: N×C×H×W, prototypes N×C×K×1 -> N×C×H×W.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.prototype_score = nn.Conv2d(channels, 1, 1)
        self.channel_gate = nn.Sequential(
            nn.Conv2d(channels, channels, 1),
            nn.LayerNorm([channels, 1, 1]),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1),
        )
        nn.init.kaiming_normal_(self.prototype_score.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.prototype_score.bias)
        nn.init.zeros_(self.channel_gate[-1].weight)
        nn.init.zeros_(self.channel_gate[-1].bias)

    def pool(self, prototypes: torch.Tensor) -> torch.Tensor:
        """Attention pooling over the K prototypes: N×C×K×1 -> N×C×1×1."""
        a = self.prototype_score(prototypes).flatten(1).softmax(dim=1)  # N×K
        return torch.einsum("nck,nk->nc", prototypes.flatten(2), a)[:, :, None, None]

    def forward(self, x: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.channel_gate(self.pool(prototypes)))
        return x * s + x


# ---------------------------------------------------------------------------------------------
# The head
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CGRSegHeadConfig:
    """Head hyper-parameters (official names in brackets).

    channels [channels] C; context_depth [next_repeat] RCMs on the pooled pyramid; context_kernel
    [neck_size] their strip kernel; level_kernel [dw_size] the strip kernel of the per-level RCMs;
    square_kernel [square_kernel_size]; mlp_ratio [mr]; rca_ratio [ratio]; dropout [dropout_ratio].
    """

    channels: int
    context_depth: int
    context_kernel: int
    level_kernel: int
    square_kernel: int = 3
    mlp_ratio: float = 2.0
    rca_ratio: int = 1
    dropout: float = 0.1
    num_levels: int = 3


class CGRSegHead(nn.Module):
    """The CGRSeg decode head on the last ``len(in_channels)`` backbone maps.

    Input: the backbone's list of maps (only the last ``len(in_channels)`` are read, widths
    ``in_channels``, strides e.g. 8/16/32). Output: logits N×K×H/8×W/8 (the stride of the first
    map read, ``output_stride``). No loss and no resize here.
    """

    def __init__(
        self,
        in_channels: list[int],
        num_classes: int,
        channels: int,
        context_depth: int,
        context_kernel: int,
        level_kernel: int,
        square_kernel: int = 3,
        mlp_ratio: float = 2.0,
        rca_ratio: int = 1,
        dropout: float = 0.1,
        output_stride: int = 8,
    ):
        super().__init__()
        self.in_channels = list(in_channels)
        self.output_stride = output_stride
        total = sum(self.in_channels)
        # Pyramid context extraction (official trans.transformer_blocks).
        self.context = nn.Sequential(
            *(RCM(total, context_kernel, square_kernel, mlp_ratio, rca_ratio) for _ in range(context_depth))
        )
        last = len(self.in_channels) - 1
        self.levels = nn.ModuleList(
            ReconstructionLevel(c, channels, level_kernel, square_kernel, mlp_ratio, rca_ratio, i < last)
            for i, c in enumerate(self.in_channels)
        )
        # Coarse prediction: depthwise 1x1 conv + BN + ReLU (official linear_fuse, an mmcv ConvModule).
        self.coarse_fuse = nn.Sequential(
            nn.Conv2d(channels, channels, 1, groups=channels, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.dpg = DPGHead(channels)
        self.classifier = Classifier(channels, num_classes, dropout)
        self._init_conv_modules()

    def _init_conv_modules(self) -> None:
        # mmcv's ConvModule initialises its conv Kaiming-normal (fan_out, relu) with zero bias.
        convs = [self.coarse_fuse[0]]
        for level in self.levels:
            convs += [level.local_proj[0], level.gate_proj[0]]
        for conv in convs:
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")

    def reconstruct(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Stride-8 features X (N×C×H/8×W/8) from the maps [X2, X3, X4]."""
        context = self.context(pyramid_pool(features)).split(self.in_channels, dim=1)
        above = None
        for i in reversed(range(len(features))):
            above = self.levels[i](features[i], context[i], above)
        return above

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """features: backbone maps (the last ``len(in_channels)`` are used) -> logits N×K×H/8×W/8."""
        feats = list(features)[-len(self.in_channels) :]
        x = self.reconstruct(feats)
        coarse = self.classifier(self.coarse_fuse(x))
        return self.classifier(self.dpg(x, class_prototypes(x, coarse)))


# ---------------------------------------------------------------------------------------------
# Variants
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CGRSegVariant:
    """A backbone registry name and the head configuration."""

    backbone: str
    head: CGRSegHeadConfig


# local_configs/cgrseg/cgrseg-{t,b,l}_ade20k_160k.py: channels, next_repeat, neck_size, dw_size
# (square_kernel_size 3, mr 2, ratio 1, dropout_ratio 0.1 in all three). The head input widths
# (48/120/224, 64/144/288, 80/192/384) come from the backbone's feature_info.
VARIANTS: dict[str, CGRSegVariant] = {
    "t": CGRSegVariant("efficientformerv2_s1", CGRSegHeadConfig(128, 5, 11, 11)),
    "b": CGRSegVariant("efficientformerv2_s2", CGRSegHeadConfig(256, 6, 11, 11)),
    "l": CGRSegVariant("efficientformerv2_l", CGRSegHeadConfig(256, 5, 9, 9)),
}


def build_cgrseg(
    backbone: nn.Module, num_classes: int, variant_or_head_cfg: CGRSegVariant | CGRSegHeadConfig | str
) -> Segmentor:
    """A CGRSeg head on any backbone exposing ``feature_info``; returns a :class:`Segmentor`.

    The head reads the last ``num_levels`` entries of ``backbone.feature_info`` (widths and the
    output stride). ``variant_or_head_cfg`` may be a variant name (``"t"``, ``"b"``, ``"l"``).
    """
    cfg = variant_or_head_cfg
    if isinstance(cfg, str):
        cfg = VARIANTS[cfg.lower()]
    if isinstance(cfg, CGRSegVariant):
        cfg = cfg.head
    info = list(backbone.feature_info)[-cfg.num_levels :]
    head = CGRSegHead(
        in_channels=[int(i["num_chs"]) for i in info],
        num_classes=num_classes,
        channels=cfg.channels,
        context_depth=cfg.context_depth,
        context_kernel=cfg.context_kernel,
        level_kernel=cfg.level_kernel,
        square_kernel=cfg.square_kernel,
        mlp_ratio=cfg.mlp_ratio,
        rca_ratio=cfg.rca_ratio,
        dropout=cfg.dropout,
        output_stride=int(info[0]["reduction"]),
    )
    size_divisor = max(int(i["reduction"]) for i in backbone.feature_info)
    return Segmentor(backbone, head, num_classes, size_divisor=size_divisor)


def _build_variant(name: str, num_classes: int, drop_path_rate: float | None, **kwargs: Any) -> Segmentor:
    variant = VARIANTS[name]
    if drop_path_rate is not None:
        kwargs["drop_path_rate"] = drop_path_rate
    backbone = get_entry(variant.backbone).factory(**kwargs)
    return build_cgrseg(backbone, num_classes, variant)


# ---------------------------------------------------------------------------------------------
# Official mmseg checkpoints: {"state_dict": {"backbone.*", "decode_head.*"}, "meta": ...}
# ---------------------------------------------------------------------------------------------
# Inside an RCM (official ``RCM``/``RCA`` attribute names -> ours).
_RCM_RULES = [
    (r"token_mixer\.dwconv_hw\.(weight|bias)", r"rca.local.\1"),
    (r"token_mixer\.excite\.0\.(weight|bias)", r"rca.band_w.\1"),
    (r"token_mixer\.excite\.1\.(.+)", r"rca.band_norm.\1"),
    (r"token_mixer\.excite\.3\.(weight|bias)", r"rca.band_h.\1"),
    (r"(norm\..+|mlp\.fc[12]\.(?:weight|bias)|gamma)", r"\1"),
]
# decode_head.* -> head.*; an RCM prefix is followed by one of _RCM_RULES.
_HEAD_RULES = [
    (r"conv_seg\.(weight|bias)", r"classifier.conv.\1"),
    (r"linear_fuse\.conv\.weight", r"coarse_fuse.0.weight"),  # mmcv ConvModule: .conv / .bn
    (r"linear_fuse\.bn\.(.+)", r"coarse_fuse.1.\1"),
    (r"lgc\.conv_mask\.(weight|bias)", r"dpg.prototype_score.\1"),
    (r"lgc\.channel_mul_conv\.([013])\.(weight|bias)", r"dpg.channel_gate.\1.\2"),
    (r"conv\.(\d+)\.(weight|bias)", r"levels.\1.lateral.\2"),
    (r"SIM\.(\d+)\.fuse1\.conv\.weight", r"levels.\1.local_proj.0.weight"),
    (r"SIM\.(\d+)\.fuse1\.bn\.(.+)", r"levels.\1.local_proj.1.\2"),
    (r"SIM\.(\d+)\.fuse2\.conv\.weight", r"levels.\1.gate_proj.0.weight"),
    (r"SIM\.(\d+)\.fuse2\.bn\.(.+)", r"levels.\1.gate_proj.1.\2"),
]
_HEAD_RCM_PREFIXES = [
    (r"trans\.transformer_blocks\.(\d+)\.", r"context.\1."),
    (r"meta\.(\d+)\.", r"levels.\1.rcm."),
]


def _map_head_key(key: str) -> str | None:
    """Official ``decode_head`` key (without the prefix) -> our head key, or None if unknown."""
    for pattern, repl in _HEAD_RULES:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, repl, key)
    for prefix, prefix_repl in _HEAD_RCM_PREFIXES:
        m = re.match(prefix, key)
        if m is None:
            continue
        rest = key[m.end() :]
        for pattern, repl in _RCM_RULES:
            if re.fullmatch(pattern, rest):
                return m.expand(prefix_repl) + re.sub(pattern, repl, rest)
    return None


def _mmseg_state(obj: Any) -> dict[str, torch.Tensor] | None:
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        return None
    return state


def _is_mmseg_cgrseg(obj: Any) -> bool:
    state = _mmseg_state(obj)
    if not state:
        return False
    keys = [k for k in state if isinstance(k, str)]
    return any(k.startswith("decode_head.") for k in keys) and any(
        k.startswith(("decode_head.lgc.", "decode_head.trans.")) for k in keys
    )


def convert_mmseg_checkpoint(obj: Any, model: nn.Module) -> dict[str, torch.Tensor]:
    """Map an official mmseg CGRSeg checkpoint to ``model``'s state dict keys (Segmentor layout).

    ``backbone.*`` keys keep their names (our EfficientFormerV2 uses the official module names);
    ``decode_head.*`` keys go through the explicit tables above. Every source key is accounted for:
    anything that maps nowhere raises :class:`CheckpointError` listing it. Shapes (e.g. another
    number of classes) are checked by the strict load that follows.
    """
    state = _mmseg_state(obj)
    if state is None:
        raise CheckpointError("no 'state_dict' in the mmseg checkpoint")
    if not isinstance(getattr(model, "head", None), CGRSegHead):
        raise CheckpointError(f"an mmseg CGRSeg checkpoint needs a CGRSeg model, got {type(model).__name__}")
    backbone = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    # The release's dead ``attention_biases`` / ``attention_bias_idxs`` buffers are dropped there, by name.
    out = {"backbone." + k: v for k, v in convert_official_backbone_keys(backbone).items()}

    def rename(key: str) -> str | None:
        if not key.startswith("decode_head."):
            return None
        mapped = _map_head_key(key[len("decode_head.") :])
        return None if mapped is None else "head." + mapped

    head = remap_keys(state, rename, drop=lambda key: key.startswith("backbone."), what="mmseg checkpoint")
    return {**out, **head}


MMSEG_LAYOUT = register_layout(
    CheckpointLayout(name="mmseg-cgrseg", detect=_is_mmseg_cgrseg, convert=convert_mmseg_checkpoint)
)


# ---------------------------------------------------------------------------------------------
# Public factories. ``published``: SPEC 1.1 (paper); throughput in images/s on a GPU, GFLOPs =
# multiply-accumulates at 512x512 as the paper counts them.
# ---------------------------------------------------------------------------------------------
@register_model(
    kind="segmentor",
    family="cgrseg",
    backbone=VARIANTS["t"].backbone,
    published={
        "params_m": 9.4,
        "gflops": 4.0,
        "ade20k_miou": 43.6,
        "coco_stuff10k_miou": 42.2,
        "pascal_context_miou": 54.1,
        "throughput": 138.4,
    },
)
def cgrseg_t(num_classes: int = 150, drop_path_rate: float | None = None, **kwargs: Any) -> Segmentor:
    """CGRSeg-T: EfficientFormerV2-S1 + CGRSeg head (C 128). Logits at stride 8.

    ``drop_path_rate`` (None: the backbone's default) and ``kwargs`` go to the backbone factory.
    """
    return _build_variant("t", num_classes, drop_path_rate, **kwargs)


@register_model(
    kind="segmentor",
    family="cgrseg",
    backbone=VARIANTS["b"].backbone,
    published={
        "params_m": 18.1,  # the released code gives 19.1
        "gflops": 7.6,
        "ade20k_miou": 45.5,
        "coco_stuff10k_miou": 43.5,
        "pascal_context_miou": 56.5,
        "throughput": 98.4,
    },
)
def cgrseg_b(num_classes: int = 150, drop_path_rate: float | None = None, **kwargs: Any) -> Segmentor:
    """CGRSeg-B: EfficientFormerV2-S2 + CGRSeg head (C 256). Logits at stride 8."""
    return _build_variant("b", num_classes, drop_path_rate, **kwargs)


@register_model(
    kind="segmentor",
    family="cgrseg",
    backbone=VARIANTS["l"].backbone,
    published={
        "params_m": 35.7,
        "gflops": 14.9,
        "ade20k_miou": 48.3,
        "coco_stuff10k_miou": 46.0,
        "pascal_context_miou": 58.5,
        "throughput": 73.0,
    },
)
def cgrseg_l(num_classes: int = 150, drop_path_rate: float | None = None, **kwargs: Any) -> Segmentor:
    """CGRSeg-L: EfficientFormerV2-L + CGRSeg head (C 256, strip kernel 9). Logits at stride 8."""
    return _build_variant("l", num_classes, drop_path_rate, **kwargs)
