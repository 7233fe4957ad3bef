"""Heads on any backbone: CGRSeg and FRM heads on VAN, EfficientFormerV2 and EfficientNet-Lite0."""

from __future__ import annotations

import pytest
import torch

from lightseg.models import create_model, get_entry
from lightseg.models.efficientnet_lite import efficientnet_lite0_imagenet_weights
from lightseg.models.hybrids import HYBRIDS

# name -> (backbone widths at strides 4/8/16/32 from the backbones' own docs, output stride)
EXPECTED = {
    "cgrseg_van_b0": ((32, 64, 160, 256), 8),
    "cgrseg_effnetlite0": ((24, 40, 112, 320), 8),
    "frm_efficientformerv2_s1": ((32, 48, 120, 224), 4),
    "frm_effnetlite0": ((24, 40, 112, 320), 4),
}


def test_every_hybrid_is_registered_as_a_segmentor():
    assert set(HYBRIDS) == set(EXPECTED)
    for name in EXPECTED:
        assert get_entry(name).kind == "segmentor"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shapes_and_strides_at_512(name):
    widths, stride = EXPECTED[name]
    model = create_model(name, num_classes=11).eval()
    assert [i["num_chs"] for i in model.backbone.feature_info] == list(widths)
    assert [i["reduction"] for i in model.backbone.feature_info] == [4, 8, 16, 32]
    assert model.output_stride == stride
    with torch.no_grad():
        feats = model.backbone(torch.randn(1, 3, 512, 512))
        logits = model.head(feats)
    assert [tuple(f.shape[1:]) for f in feats] == [
        (c, 512 // s, 512 // s) for c, s in zip(widths, (4, 8, 16, 32))
    ]
    assert tuple(logits.shape) == (1, 11, 512 // stride, 512 // stride)
    assert torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="multiple of 32"):
        model(torch.randn(1, 3, 500, 512))


def _wake_zero_initialised(model: torch.nn.Module) -> None:
    # Zero-initialised scales (FRM's identity-at-init BNs, CGRSeg's zero last gate conv) block the
    # gradient of everything before them at step 0; give them small values (large ones would
    # saturate CGRSeg's sigmoid gate) so that every path is exercised.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 1 and not p.any():
                p.normal_(0.0, 0.1)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3).train()
    _wake_zero_initialised(model)
    out = model.forward_train(torch.randn(2, 3, 64, 64))
    (
        out["logits"].square().mean() + sum(v.float().mean() for k, v in out.items() if k != "logits")
    ).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"parameters without gradient: {dead}"


def test_unknown_head_option_is_named():
    with pytest.raises(TypeError, match=r"unknown head option.*'chanels'.*channels"):
        create_model("cgrseg_effnetlite0", num_classes=3, chanels=64)
    with pytest.raises(TypeError, match=r"unknown head option.*'d'.*'D'"):
        create_model("frm_effnetlite0", num_classes=3, d=64)


@pytest.mark.parametrize("name", ["cgrseg_effnetlite0", "frm_effnetlite0"])
def test_pretrained_effnet_hybrids_start_from_imagenet(name):
    try:
        path = efficientnet_lite0_imagenet_weights()
    except (ImportError, FileNotFoundError) as e:
        pytest.skip(f"real EfficientNet-Lite0 weights unavailable: {e}")
    src = torch.load(str(path), map_location="cpu", weights_only=True)
    model = create_model(name, num_classes=11, pretrained=True)
    own = model.backbone.state_dict()
    torch.testing.assert_close(own["stem.conv.weight"], src["_conv_stem.weight"])
    torch.testing.assert_close(own["blocks.15.project.norm.running_var"], src["_blocks.15._bn2.running_var"])
    fresh = create_model(name, num_classes=11).backbone.state_dict()
    assert not torch.equal(fresh["stem.conv.weight"], src["_conv_stem.weight"])
