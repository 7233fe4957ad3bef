"""CGRSeg head and models: published parameter counts, shapes, gradients, and the RCA / RCM / DPG
blocks against their formulas (SPEC 1.2-1.4) computed here with plain tensor ops."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightseg import create_model
from lightseg.models import get_entry
from lightseg.models.cgrseg import RCA, RCM, CGRSegHead, DPGHead, build_cgrseg, class_prototypes, pyramid_pool

# SPEC 1.1: parameter counts of the released code with 150 classes (total, backbone, head), millions.
PARAMS = {"cgrseg_t": (9.36, 5.75, 3.62), "cgrseg_b": (19.11, 12.15, 6.96), "cgrseg_l": (35.68, 25.58, 10.10)}
PUBLISHED_MIOU = {
    "cgrseg_t": (43.6, 42.2, 54.1),
    "cgrseg_b": (45.5, 43.5, 56.5),
    "cgrseg_l": (48.3, 46.0, 58.5),
}


@pytest.fixture(scope="module", params=list(PARAMS))
def model(request):
    torch.manual_seed(0)
    return request.param, create_model(request.param).eval()


def _count(module: nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def test_param_counts_and_shape_512(model):
    name, m = model
    total, backbone, head = PARAMS[name]
    assert _count(m) == pytest.approx(total, rel=3e-3)
    assert _count(m.backbone) == pytest.approx(backbone, abs=0.006)
    assert _count(m.head) == pytest.approx(head, abs=0.006)
    assert m.output_stride == 8
    with torch.no_grad():
        y = m(torch.randn(1, 3, 512, 512))
    assert y.shape == (1, 150, 64, 64)
    assert torch.isfinite(y).all()


def test_published_figures():
    for name, (ade, coco, ctx) in PUBLISHED_MIOU.items():
        pub = get_entry(name).published
        assert (pub["ade20k_miou"], pub["coco_stuff10k_miou"], pub["pascal_context_miou"]) == (ade, coco, ctx)
        assert pub["params_m"] == pytest.approx(PARAMS[name][0], abs=1.01)  # paper's B is 18.1
        assert get_entry(name).family == "cgrseg" and get_entry(name).kind == "segmentor"


@pytest.mark.parametrize("size", [(512, 1024), (480, 640)])
def test_output_shape_t(size):
    m = create_model("cgrseg_t", num_classes=19).eval()
    with torch.no_grad():
        y = m(torch.randn(1, 3, *size))
    assert y.shape == (1, 19, size[0] // 8, size[1] // 8)


@pytest.mark.parametrize("name", ["cgrseg_b", "cgrseg_l"])
def test_output_shape_b_l_on_meta(name):
    """B and L at the non-square sizes in the default run: the same forward on meta tensors (shapes
    only, seconds instead of minutes); the real-valued run is the slow test below."""
    m = create_model(name).eval().to("meta")
    for size in [(512, 1024), (480, 640)]:
        with torch.no_grad():
            y = m(torch.randn(1, 3, *size, device="meta"))
        assert y.shape == (1, 150, size[0] // 8, size[1] // 8)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cgrseg_b", "cgrseg_l"])
@pytest.mark.parametrize("size", [(512, 1024), (480, 640)])
def test_output_shape_b_l(name, size):
    m = create_model(name).eval()
    with torch.no_grad():
        y = m(torch.randn(1, 3, *size))
    assert y.shape == (1, 150, size[0] // 8, size[1] // 8)


def test_input_not_multiple_of_32():
    m = create_model("cgrseg_t")
    with pytest.raises(ValueError, match=r"multiple of 32.*pad to 128x96"):
        m(torch.randn(1, 3, 100, 96))


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    m = create_model("cgrseg_t", num_classes=5).train()
    # At init the channel gate's last conv is zero, which blocks every gradient into the gate's
    # first conv / LayerNorm, the prototype scorer and (through the prototypes) the coarse branch.
    nn.init.normal_(m.head.dpg.channel_gate[-1].weight, std=0.1)
    loss = m(torch.randn(2, 3, 128, 128)).square().mean()
    loss.backward()
    no_grad = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []
    # Both paths into the shared classifier: coarse (coarse_fuse) and DPG (channel gate).
    assert m.head.coarse_fuse[0].weight.grad.abs().sum() > 0
    assert m.head.dpg.prototype_score.weight.grad.abs().sum() > 0


def test_eval_load_ordering():
    """build -> eval -> load and build -> load -> eval must agree (stale cached bias trap)."""
    torch.manual_seed(0)
    src = create_model("cgrseg_t", num_classes=4)
    with torch.no_grad():
        for n, p in src.named_parameters():
            if n.endswith("attention_biases_seg"):
                p.normal_(std=2.0)
    state = src.state_dict()
    a = create_model("cgrseg_t", num_classes=4).eval()
    a.load_state_dict(state)
    b = create_model("cgrseg_t", num_classes=4)
    b.load_state_dict(state)
    b.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ya, yb, yref = a(x), b(x), src.eval()(x)
        a.load_state_dict({k: (torch.zeros_like(v) if "biases_seg" in k else v) for k, v in state.items()})
        y0 = a(x)  # a second load after eval must be seen too
    torch.testing.assert_close(ya, yb, rtol=0, atol=0)
    torch.testing.assert_close(ya, yref)
    assert not torch.allclose(ya, y0)  # the loaded bias tables do matter


# ---- blocks against their formulas -----------------------------------------------------------
def _randomize(module: nn.Module) -> None:
    """Random weights and BN statistics, so that no term of a formula can hide behind an init."""
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 2.0)
            elif t.is_floating_point():
                t.normal_(std=0.5)
    module.eval()


def _bn(x, bn: nn.BatchNorm2d):
    shape = (1, -1, 1, 1)
    return (x - bn.running_mean.view(shape)) / (bn.running_var.view(shape) + bn.eps).sqrt() * bn.weight.view(
        shape
    ) + bn.bias.view(shape)


def _dwconv(x, w, b):
    """Depthwise conv by explicit shifted sums, 'same' zero padding (odd kernels)."""
    kh, kw = w.shape[-2:]
    h, wd = x.shape[-2:]
    xp = F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2))
    out = b.view(1, -1, 1, 1).expand_as(x).clone()
    for i in range(kh):
        for j in range(kw):
            out = out + w[:, 0, i, j].view(1, -1, 1, 1) * xp[:, :, i : i + h, j : j + wd]
    return out


def _conv1x1(x, w, b):
    return torch.einsum("oc,nchw->nohw", w[:, :, 0, 0], x) + b.view(1, -1, 1, 1)


def _rca_ref(x, m: RCA):
    loc = _dwconv(x, m.local.weight, m.local.bias)
    n, c, h, w = x.shape
    row_mean = x.sum(dim=3, keepdim=True) / w  # mean over W: C×H×1
    col_mean = x.sum(dim=2, keepdim=True) / h  # mean over H: C×1×W
    y = (row_mean + col_mean).expand(n, c, h, w)
    t = torch.clamp(_bn(_dwconv(y, m.band_w.weight, m.band_w.bias), m.band_norm), min=0)
    att = 1 / (1 + torch.exp(-_dwconv(t, m.band_h.weight, m.band_h.bias)))
    return att * loc


def test_rca_formula():
    torch.manual_seed(1)
    m = RCA(4, band_kernel=5, square_kernel=3)
    _randomize(m)
    x = torch.randn(2, 4, 6, 7)
    torch.testing.assert_close(m(x), _rca_ref(x, m), rtol=1e-5, atol=1e-5)
    assert m.band_w.kernel_size == (1, 5) and m.band_h.kernel_size == (5, 1) and m.band_w.groups == 4


def test_rcm_formula():
    torch.manual_seed(2)
    m = RCM(4, band_kernel=3, square_kernel=3, mlp_ratio=2)
    assert torch.all(m.gamma == 1e-6)
    assert m.mlp.fc1.out_channels == 8
    _randomize(m)
    x = torch.randn(2, 4, 5, 5)
    hidden = F.gelu(_conv1x1(_bn(_rca_ref(x, m.rca), m.norm), m.mlp.fc1.weight, m.mlp.fc1.bias))
    ref = x + m.gamma.view(1, -1, 1, 1) * _conv1x1(hidden, m.mlp.fc2.weight, m.mlp.fc2.bias)
    torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)


def _dpg_ref(x, logits, m: DPGHead):
    n, c, h, w = x.shape
    k = logits.shape[1]
    a = torch.exp(logits.reshape(n, k, h * w))
    a = a / a.sum(dim=2, keepdim=True)  # softmax over pixels, per class
    protos = torch.stack(
        [torch.stack([(a[i, j] * x[i].reshape(c, -1)).sum(1) for j in range(k)]) for i in range(n)]
    )
    score = protos @ m.prototype_score.weight[0, :, 0, 0] + m.prototype_score.bias  # N×K
    att = torch.exp(score) / torch.exp(score).sum(dim=1, keepdim=True)
    z = (att[:, :, None] * protos).sum(1)  # N×C
    conv0, ln, conv3 = m.channel_gate[0], m.channel_gate[1], m.channel_gate[3]
    z1 = z @ conv0.weight[:, :, 0, 0].T + conv0.bias
    mu, var = z1.mean(1, keepdim=True), z1.var(1, unbiased=False, keepdim=True)
    z1 = (z1 - mu) / (var + ln.eps).sqrt() * ln.weight.view(1, -1) + ln.bias.view(1, -1)
    s = torch.sigmoid(torch.clamp(z1, min=0) @ conv3.weight[:, :, 0, 0].T + conv3.bias)
    return x * s[:, :, None, None] + x


def test_dpg_formula_and_init():
    torch.manual_seed(3)
    m = DPGHead(6)
    x, logits = torch.randn(2, 6, 4, 5), torch.randn(2, 3, 4, 5)
    # Zero-initialised last conv: s = 0.5 everywhere, Y = 1.5 X.
    torch.testing.assert_close(m(x, class_prototypes(x, logits)), 1.5 * x)
    _randomize(m)
    torch.testing.assert_close(
        m(x, class_prototypes(x, logits)), _dpg_ref(x, logits, m), rtol=1e-5, atol=1e-5
    )


def test_pyramid_pool_size():
    feats = [torch.randn(1, 2, 60, 80), torch.randn(1, 3, 30, 40), torch.randn(1, 4, 15, 20)]
    p = pyramid_pool(feats)
    assert p.shape == (1, 9, 8, 10)  # ((15-1)//2+1, (20-1)//2+1)
    torch.testing.assert_close(p[:, 5:], F.adaptive_avg_pool2d(feats[2], (8, 10)))


class _ToyBackbone(nn.Module):
    """Four strided convs: any backbone with feature_info can carry the head."""

    def __init__(self, widths=(8, 16, 24, 32)):
        super().__init__()
        cins = (3, *widths[:-1])
        strides = (4, 2, 2, 2)
        self.stages = nn.ModuleList(nn.Conv2d(a, b, s, s) for a, b, s in zip(cins, widths, strides))
        self.feature_info = [{"num_chs": w, "reduction": 4 * 2**i} for i, w in enumerate(widths)]

    def forward(self, x):
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out


def test_build_on_other_backbone():
    m = build_cgrseg(_ToyBackbone(), 7, "t").eval()
    assert isinstance(m.head, CGRSegHead) and m.head.in_channels == [16, 24, 32]
    with torch.no_grad():
        assert m(torch.randn(1, 3, 64, 96)).shape == (1, 7, 8, 12)
