"""Heads on any backbone: the CGRSeg head and the FRM head on backbones their papers did not use.

Both heads read their input widths and strides from ``backbone.feature_info``
(:func:`lightseg.models.cgrseg.build_cgrseg`, :func:`lightseg.models.frm.build_frm`), so a
combination is just a row of :data:`HYBRIDS`: a registered backbone, a head and its configuration.
None of these models comes from a paper; they exist for comparisons. ``create_model(name,
pretrained=True)`` starts the backbone from its ImageNet weights (:mod:`lightseg.weights`).

Each is registered under its head's family (``cgrseg`` or ``frm``): the head decides the recipe
(learning rate, output stride), the backbone is named separately.

Head configurations (ours): the CGRSeg head is the CGRSeg-T head (C=128, 5 context RCMs, strip
kernel 11) on the last three maps (strides 8/16/32); the FRM head is the light setting of
``frm_van_b0`` (D=256, E=128) on all four maps (output stride 4).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from torch import nn

from lightseg.errors import UnknownOptionError
from lightseg.models.cgrseg import VARIANTS as CGRSEG_VARIANTS
from lightseg.models.cgrseg import CGRSegHeadConfig, build_cgrseg
from lightseg.models.frm import FRM_VARIANTS, FRMConfig, build_frm
from lightseg.models.registry import get_entry, register_model
from lightseg.models.segmentor import Segmentor


@dataclass(frozen=True)
class Hybrid:
    """A registered backbone name, a head (``CGRSegHeadConfig`` or ``FRMConfig``) and the
    backbone's drop-path rate."""

    backbone: str
    head: CGRSegHeadConfig | FRMConfig
    drop_path_rate: float


_CGRSEG_T_HEAD = CGRSEG_VARIANTS["t"].head
_FRM_LIGHT_HEAD = FRM_VARIANTS["frm_van_b0"].head

# Drop-path: VAN-B0 as in frm_van_b0 (0.1), EfficientFormerV2-S1 as in CGRSeg-T (0.0),
# EfficientNet-Lite0 0.1 (ours; the TF classification recipe used 0.2 on ImageNet).
HYBRIDS: dict[str, Hybrid] = {
    "cgrseg_van_b0": Hybrid("van_b0", _CGRSEG_T_HEAD, 0.1),
    "cgrseg_effnetlite0": Hybrid("efficientnet_lite0", _CGRSEG_T_HEAD, 0.1),
    "frm_efficientformerv2_s1": Hybrid("efficientformerv2_s1", _FRM_LIGHT_HEAD, 0.0),
    "frm_effnetlite0": Hybrid("efficientnet_lite0", _FRM_LIGHT_HEAD, 0.1),
}


def build_hybrid(
    name: str,
    num_classes: int,
    drop_path_rate: float | None = None,
    backbone_options: dict[str, Any] | None = None,
    **head_options: Any,
) -> Segmentor:
    """Build the combination ``name`` of :data:`HYBRIDS`.

    ``backbone_options`` go to the backbone's factory (e.g. ``pretrained_norm`` for VAN);
    ``head_options`` override fields of its head configuration (e.g. ``channels=64`` for CGRSeg,
    ``use_frm=False`` for FRM); an unknown field fails naming the valid ones.
    """
    spec = HYBRIDS[name]
    valid = {f.name for f in fields(spec.head)}
    unknown = sorted(set(head_options) - valid)
    if unknown:
        raise UnknownOptionError(
            f"{name}: unknown head option(s) {unknown}; {type(spec.head).__name__} fields: {sorted(valid)}"
        )
    head_cfg = replace(spec.head, **head_options)
    rate = spec.drop_path_rate if drop_path_rate is None else drop_path_rate
    backbone: nn.Module = get_entry(spec.backbone).factory(drop_path_rate=rate, **(backbone_options or {}))
    if isinstance(head_cfg, FRMConfig):
        return build_frm(backbone, num_classes, head_cfg)
    return build_cgrseg(backbone, num_classes, head_cfg)


@register_model(kind="segmentor", family="cgrseg", backbone=HYBRIDS["cgrseg_van_b0"].backbone)
def cgrseg_van_b0(
    num_classes: int = 150,
    drop_path_rate: float | None = None,
    pretrained_norm: bool = False,
    **head_options: Any,
) -> Segmentor:
    """CGRSeg-T head on VAN-B0 (strides 8/16/32, widths 64/160/256) -> logits at stride 8.
    ``pretrained_norm``: see :mod:`lightseg.models.van`."""
    options = {"pretrained_norm": pretrained_norm}
    return build_hybrid("cgrseg_van_b0", num_classes, drop_path_rate, options, **head_options)


@register_model(kind="segmentor", family="cgrseg", backbone=HYBRIDS["cgrseg_effnetlite0"].backbone)
def cgrseg_effnetlite0(
    num_classes: int = 150, drop_path_rate: float | None = None, **head_options: Any
) -> Segmentor:
    """CGRSeg-T head on EfficientNet-Lite0 (strides 8/16/32, widths 40/112/320) -> logits at stride 8."""
    return build_hybrid("cgrseg_effnetlite0", num_classes, drop_path_rate, **head_options)


@register_model(kind="segmentor", family="frm", backbone=HYBRIDS["frm_efficientformerv2_s1"].backbone)
def frm_efficientformerv2_s1(
    num_classes: int = 19, drop_path_rate: float | None = None, **head_options: Any
) -> Segmentor:
    """FRM head (D=256, E=128) on EfficientFormerV2-S1 (widths 32/48/120/224) -> logits at stride 4."""
    return build_hybrid("frm_efficientformerv2_s1", num_classes, drop_path_rate, **head_options)


@register_model(kind="segmentor", family="frm", backbone=HYBRIDS["frm_effnetlite0"].backbone)
def frm_effnetlite0(
    num_classes: int = 19, drop_path_rate: float | None = None, **head_options: Any
) -> Segmentor:
    """FRM head (D=256, E=128) on EfficientNet-Lite0 (widths 24/40/112/320) -> logits at stride 4."""
    return build_hybrid("frm_effnetlite0", num_classes, drop_path_rate, **head_options)
