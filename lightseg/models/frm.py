"""The FRM network (Wang et al., "A feature refinement module for light-weight semantic segmentation
network", arXiv 2412.08670): a backbone, the Feature Refinement Module, an FPN decoder, stride 4.

What follows the paper (SPEC 2.1): an encoder-decoder on VAN with four stages F1..F4 (strides
4/8/16/32); a Feature Refinement Module that brings every stage to stride 32 by "polyphase pooling",
concatenates them and applies a disentangled non-local block (the "transformer block") for non-local
context; an FPN-style decoder; cross-entropy plus a pixel contrastive loss; 80.4 % Cityscapes test
mIoU at 214.82 GFLOPs.

What is ours (SPEC 2.2 — the paper's full text was not reachable; every choice is a field of
:class:`FRMConfig`, so ablations build from configuration):
- ``pooling="polyphase"``: at each ×2 step keep, per sample, the one of the four polyphase components
  with the largest L2 norm (adaptive polyphase sampling); ``"avg"``: average pooling.
- concatenation with F4, Conv1x1+BN+ReLU to width ``D``;
- transformer block ``Z = Z + DNL(Z)``, ``Z = Z + FFN(Z)``. DNL (``nonlocal_kind="disentangled"``):
  query/key/value Conv1x1 to D/2, whitened pairwise term
  ``softmax_j((q_i − q̄)·(k_j − k̄) / (√(D/2)·tau))`` plus (``use_unary``) the unary term
  ``softmax_j(Conv1x1_{D→1}(x_j))``, output Conv1x1 back to D + BN; ``"plain"``: the embedded-Gaussian
  non-local ``softmax_j(q_i·k_j / √(D/2))``. FFN = Conv1x1 (D→4D) → GELU → Conv1x1 (4D→D) + BN. Both
  final BNs start with zero scale, so the block is the identity at initialisation.
- redistribution: the refined map is split into one channel group per stage, each group projected
  (Conv1x1+BN) to that stage's width, upsampled (bilinear) and added to the stage (``use_frm=False``
  skips the whole module);
- FPN decoder: lateral Conv1x1+BN+ReLU to width ``E``, top-down addition, Conv3x3+BN+ReLU smoothing,
  every level upsampled to the finest stride and summed, Conv3x3+BN+ReLU, Dropout2d, Conv1x1 classifier.
- ``D`` and ``E`` of the default ``frm_van_b1`` are sized so the whole model costs 214.8 GMACs ± 5 % at
  1024×2048 with 19 classes (the paper's 214.82 "GFLOPs" read, as in CGRSeg, as multiply-accumulates
  counted by module hooks: convolutions and linear layers, bias included; see ``docs/frm.md``).

The pixel contrastive loss and its projection head live in :mod:`lightseg.losses`
(:class:`~lightseg.losses.PixelContrastiveLoss`), not here: :meth:`FRMHead.forward_train` only exposes
the decoder features, so inference and exported models carry no projection head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightseg.errors import ConfigError, InputError, UnknownOptionError
from lightseg.layers import ConvBN, ConvBNAct
from lightseg.models.registry import get_entry, register_model
from lightseg.models.segmentor import Segmentor


@dataclass(frozen=True)
class FRMConfig:
    """Every reconstructed choice of the FRM head (SPEC 2.2), defaults as in the default model.

    D: width of the refined context map (divisible by 2 and by the number of stages).
    E: width of the FPN decoder (also the width of the embeddings the contrastive loss sees).
    use_frm: ``False`` = ablation without the Feature Refinement Module (plain FPN on the backbone).
    pooling: ``"polyphase"`` (adaptive max-L2-norm polyphase component per sample) or ``"avg"``.
    nonlocal_kind: ``"disentangled"`` (whitened pairwise + unary) or ``"plain"`` (embedded Gaussian).
    use_unary: the DNL unary term (only with ``"disentangled"``).
    tau: temperature of the whitened pairwise term.
    ffn_ratio: hidden width of the FFN as a multiple of D.
    dropout: Dropout2d rate before the classifier.
    """

    D: int = 512
    E: int = 192
    use_frm: bool = True
    pooling: str = "polyphase"
    nonlocal_kind: str = "disentangled"
    use_unary: bool = True
    tau: float = 0.05
    ffn_ratio: int = 4
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.pooling not in ("polyphase", "avg"):
            raise ConfigError(f"pooling must be 'polyphase' or 'avg', got {self.pooling!r}")
        if self.nonlocal_kind not in ("disentangled", "plain"):
            raise ConfigError(f"nonlocal_kind must be 'disentangled' or 'plain', got {self.nonlocal_kind!r}")
        if self.D % 2:
            raise ConfigError(f"D must be even (the non-local block works at D/2), got {self.D}")
        if self.tau <= 0:
            raise ConfigError(f"tau must be positive, got {self.tau}")


# --------------------------------------------------------------------------------------------------
# Pooling to stride 32
# --------------------------------------------------------------------------------------------------
def polyphase_downsample(x: torch.Tensor) -> torch.Tensor:
    """Adaptive polyphase sampling by 2: of the four components ``x[..., i::2, j::2]`` keep, per
    sample, the one with the largest L2 norm (over C, H, W). N×C×H×W → N×C×H/2×W/2 (H, W even).

    Near-ties (e.g. on LayerNorm-ed maps, whose positions all have norm ≈ √C) make the choice
    sensitive to rounding: another runtime may pick another component (see docs/frm.md)."""
    h, w = x.shape[-2:]
    if h % 2 or w % 2:
        raise InputError(f"polyphase pooling needs even sides, got {h}x{w}")
    comps = torch.stack([x[..., i::2, j::2] for i in (0, 1) for j in (0, 1)], dim=1)  # N×4×C×h×w
    best = comps.flatten(2).norm(dim=2).argmax(dim=1)  # N
    return comps[torch.arange(x.shape[0], device=x.device), best]


def pool_by(x: torch.Tensor, factor: int, kind: str) -> torch.Tensor:
    """Downsample by ``factor`` (a power of two): repeated polyphase steps, or one average pooling."""
    if factor == 1:
        return x
    if factor & (factor - 1):
        raise ConfigError(f"pooling factor must be a power of two, got {factor}")
    if kind == "avg":
        return F.avg_pool2d(x, factor)
    for _ in range(int(math.log2(factor))):
        x = polyphase_downsample(x)
    return x


# --------------------------------------------------------------------------------------------------
# The transformer block: (disentangled) non-local token mixer + FFN
# --------------------------------------------------------------------------------------------------
def _zero_bn(bn: nn.BatchNorm2d) -> nn.BatchNorm2d:
    # Zero scale (and shift): the residual branch outputs 0 at init, so the block is the identity.
    nn.init.zeros_(bn.weight)
    nn.init.zeros_(bn.bias)
    return bn


class NonLocal(nn.Module):
    """Non-local token mixer (DNL: Yin et al., "Disentangled Non-Local Neural Networks", ECCV 2020).

    x: N×D×H×W → N×D×H×W (the residual branch; the caller adds x). With q, k, v = Conv1x1(x) (D/2
    channels, bias) and L = H·W positions:
    - ``kind="disentangled"``: ``A_ij = softmax_j((q_i − q̄)·(k_j − k̄) / (√(D/2)·tau))
      [+ softmax_j(Conv1x1_{D→1}(x)_j)]`` (q̄, k̄: means over positions);
    - ``kind="plain"``: ``A_ij = softmax_j(q_i·k_j / √(D/2))``.
    Output ``BN(Conv1x1_{D/2→D}(Σ_j A_ij v_j))`` with the BN zero-initialised.
    """

    def __init__(self, dim: int, kind: str = "disentangled", use_unary: bool = True, tau: float = 0.05):
        super().__init__()
        inner = dim // 2
        self.kind, self.tau = kind, tau
        self.query = nn.Conv2d(dim, inner, 1)
        self.key = nn.Conv2d(dim, inner, 1)
        self.value = nn.Conv2d(dim, inner, 1)
        self.unary = nn.Conv2d(dim, 1, 1) if (kind == "disentangled" and use_unary) else None
        self.out = nn.Sequential(nn.Conv2d(inner, dim, 1, bias=False), _zero_bn(nn.BatchNorm2d(dim)))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The N×L×L attention matrix (rows i sum to 1, or to 2 with the unary term)."""
        q, k = self.query(x).flatten(2), self.key(x).flatten(2)  # N×c×L
        scale = q.shape[1] ** -0.5
        if self.kind == "plain":
            return torch.softmax(q.transpose(1, 2) @ k * scale, dim=-1)
        q = q - q.mean(dim=2, keepdim=True)  # whitening: remove the mean over positions
        k = k - k.mean(dim=2, keepdim=True)
        attn = torch.softmax(q.transpose(1, 2) @ k * (scale / self.tau), dim=-1)
        if self.unary is not None:
            attn = attn + torch.softmax(self.unary(x).flatten(2), dim=-1)  # N×1×L, same for every i
        return attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        v = self.value(x).flatten(2)  # N×c×L
        y = (v @ self.attention(x).transpose(1, 2)).reshape(n, -1, h, w)  # y_i = Σ_j A_ij v_j
        return self.out(y)


class TransformerBlock(nn.Module):
    """``Z = Z + NonLocal(Z)``; ``Z = Z + FFN(Z)``, FFN = Conv1x1 (D→rD) → GELU → Conv1x1 → BN.
    N×D×h×w → N×D×h×w; the identity at initialisation."""

    def __init__(self, dim: int, cfg: FRMConfig):
        super().__init__()
        self.mixer = NonLocal(dim, cfg.nonlocal_kind, cfg.use_unary, cfg.tau)
        hidden = dim * cfg.ffn_ratio
        self.ffn = nn.Sequential(
            nn.Conv2d(dim, hidden, 1),
            nn.GELU(),
            nn.Conv2d(hidden, dim, 1, bias=False),
            _zero_bn(nn.BatchNorm2d(dim)),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z + self.mixer(z)
        return z + self.ffn(z)


# --------------------------------------------------------------------------------------------------
# Feature Refinement Module
# --------------------------------------------------------------------------------------------------
def _upsample_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    if x.shape[-2:] == ref.shape[-2:]:
        return x
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


class FeatureRefinementModule(nn.Module):
    """Pool every stage to the coarsest stride, concatenate, project to D, refine with the
    transformer block, and add the refined context back to every stage.

    feats: [N×c_i×H/r_i×W/r_i] → the same shapes. ``reductions`` must be powers-of-two multiples of
    each other (the coarsest divided by each is the pooling factor).
    """

    def __init__(self, in_channels: list[int], reductions: list[int], cfg: FRMConfig):
        super().__init__()
        n = len(in_channels)
        if cfg.D % n:
            raise ConfigError(f"D={cfg.D} must be divisible by the number of stages ({n})")
        coarsest = max(reductions)
        self.factors = [coarsest // r for r in reductions]
        if any(f * r != coarsest for f, r in zip(self.factors, reductions)):
            raise ConfigError(f"stage reductions {reductions} must divide the coarsest one ({coarsest})")
        self.pooling = cfg.pooling
        self.project = ConvBNAct(sum(in_channels), cfg.D, 1)
        self.block = TransformerBlock(cfg.D, cfg)
        self.redistribute = nn.ModuleList(ConvBN(cfg.D // n, c, 1) for c in in_channels)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        pooled = [pool_by(f, k, self.pooling) for f, k in zip(feats, self.factors)]
        z = self.block(self.project(torch.cat(pooled, dim=1)))  # N×D×H/32×W/32
        groups = z.chunk(len(feats), dim=1)
        return [f + _upsample_to(proj(g), f) for f, g, proj in zip(feats, groups, self.redistribute)]


# --------------------------------------------------------------------------------------------------
# FPN decoder and head
# --------------------------------------------------------------------------------------------------
class FPNDecoder(nn.Module):
    """FPN (Lin et al. 2017) fused to the finest level, as in Semantic FPN (Kirillov et al. 2019).

    feats [N×c_i×h_i×w_i] (finest first) → N×E×h_0×w_0: lateral Conv1x1+BN+ReLU to E, top-down
    addition of the upsampled coarser level, Conv3x3+BN+ReLU per level, all levels upsampled to the
    finest and summed, Conv3x3+BN+ReLU.
    """

    def __init__(self, in_channels: list[int], width: int):
        super().__init__()
        self.lateral = nn.ModuleList(ConvBNAct(c, width, 1) for c in in_channels)
        self.smooth = nn.ModuleList(ConvBNAct(width, width, 3) for _ in in_channels)
        self.fuse = ConvBNAct(width, width, 3)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        lat = [conv(f) for conv, f in zip(self.lateral, feats)]
        for i in range(len(lat) - 2, -1, -1):
            lat[i] = lat[i] + _upsample_to(lat[i + 1], lat[i])
        levels = [conv(x) for conv, x in zip(self.smooth, lat)]
        fused = levels[0]
        for x in levels[1:]:
            fused = fused + _upsample_to(x, levels[0])
        return self.fuse(fused)


class FRMHead(nn.Module):
    """FRM + FPN decoder + classifier on any backbone's maps.

    feats: the backbone's list of maps (finest first, ``reductions`` as its ``feature_info``) →
    logits N×K×H/s×W/s with ``s = output_stride`` = the finest reduction (4 on VAN).
    """

    def __init__(self, in_channels: list[int], reductions: list[int], num_classes: int, cfg: FRMConfig):
        super().__init__()
        if list(reductions) != sorted(reductions):
            raise ConfigError(f"backbone maps must come finest first, got reductions {reductions}")
        self.cfg = cfg
        self.output_stride = int(reductions[0])
        self.embed_channels = cfg.E  # width of forward_train()["embed_features"]
        self.frm = FeatureRefinementModule(in_channels, reductions, cfg) if cfg.use_frm else None
        self.decoder = FPNDecoder(in_channels, cfg.E)
        self.dropout = nn.Dropout2d(cfg.dropout)
        self.classifier = nn.Conv2d(cfg.E, num_classes, 1)
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def decode(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Decoder features N×E×H/s×W/s (what the pixel contrastive loss embeds)."""
        if self.frm is not None:
            feats = self.frm(feats)
        return self.decoder(feats)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.dropout(self.decode(feats)))

    def forward_train(self, feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"logits": N×K×H/s×W/s, "embed_features": N×E×H/s×W/s}``."""
        x = self.decode(feats)
        return {"logits": self.classifier(self.dropout(x)), "embed_features": x}


def build_frm(backbone: nn.Module, num_classes: int, cfg: FRMConfig | None = None) -> Segmentor:
    """The FRM head on any backbone exposing ``feature_info`` (``num_chs``, ``reduction``)."""
    cfg = cfg or FRMConfig()
    info = backbone.feature_info
    chs, reds = [int(i["num_chs"]) for i in info], [int(i["reduction"]) for i in info]
    head = FRMHead(chs, reds, num_classes, cfg)
    return Segmentor(backbone, head, num_classes, size_divisor=max(reds))


# --------------------------------------------------------------------------------------------------
# Variants (ours, SPEC 2.2): backbone, head widths, backbone drop-path
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FRMVariant:
    backbone: str
    head: FRMConfig
    drop_path_rate: float = 0.1


FRM_VARIANTS: dict[str, FRMVariant] = {
    "frm_van_b0": FRMVariant("van_b0", FRMConfig(D=256, E=128)),
    # D, E sized so the whole model is 214.8 GMACs ± 5 % at 1024×2048, 19 classes (the paper's figure).
    "frm_van_b1": FRMVariant("van_b1", FRMConfig(D=512, E=192)),
    "frm_van_b2": FRMVariant("van_b2", FRMConfig(D=512, E=192)),
}

_CFG_FIELDS = {f.name for f in fields(FRMConfig)}


def _frm(
    name: str, num_classes: int, drop_path_rate: float | None, pretrained_norm: bool, options: dict[str, Any]
) -> Segmentor:
    variant = FRM_VARIANTS[name]
    unknown = sorted(set(options) - _CFG_FIELDS)
    if unknown:
        raise UnknownOptionError(
            f"{name}: unknown option(s) {unknown}; FRMConfig fields: {sorted(_CFG_FIELDS)}"
        )
    rate = variant.drop_path_rate if drop_path_rate is None else drop_path_rate
    backbone = get_entry(variant.backbone).factory(drop_path_rate=rate, pretrained_norm=pretrained_norm)
    return build_frm(backbone, num_classes, replace(variant.head, **options))


@register_model(kind="segmentor", family="frm", backbone=FRM_VARIANTS["frm_van_b0"].backbone)
def frm_van_b0(
    num_classes: int = 19, drop_path_rate: float | None = None, pretrained_norm: bool = False, **options: Any
) -> Segmentor:
    """FRM on VAN-B0 (ours: D=256, E=128). ``options``: any :class:`FRMConfig` field."""
    return _frm("frm_van_b0", num_classes, drop_path_rate, pretrained_norm, options)


@register_model(
    kind="segmentor",
    family="frm",
    backbone=FRM_VARIANTS["frm_van_b1"].backbone,
    published={"cityscapes_test_miou": 80.4, "gflops": 214.82, "gflops_input": "1024x2048"},
)
def frm_van_b1(
    num_classes: int = 19, drop_path_rate: float | None = None, pretrained_norm: bool = False, **options: Any
) -> Segmentor:
    """FRM on VAN-B1, the paper's model (D=512, E=192 sized to its 214.82 GFLOPs).
    ``options``: any :class:`FRMConfig` field (e.g. ``use_frm=False`` for the ablation).
    ``pretrained_norm``: see :mod:`lightseg.models.van` (default: ImageNet-normalised input, as
    VAN-Segmentation and mmseg fine-tune VAN)."""
    return _frm("frm_van_b1", num_classes, drop_path_rate, pretrained_norm, options)


@register_model(kind="segmentor", family="frm", backbone=FRM_VARIANTS["frm_van_b2"].backbone)
def frm_van_b2(
    num_classes: int = 19, drop_path_rate: float | None = None, pretrained_norm: bool = False, **options: Any
) -> Segmentor:
    """FRM on VAN-B2 (ours: D=512, E=192). ``options``: any :class:`FRMConfig` field."""
    return _frm("frm_van_b2", num_classes, drop_path_rate, pretrained_norm, options)
