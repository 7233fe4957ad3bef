"""FRM network: variants (shapes, params, GMACs), gradients, ablations, DNL formula, polyphase pooling."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightseg.flops import count_macs
from lightseg.losses import PixelContrastiveLoss, build_seg_loss
from lightseg.models import create_model, get_entry, list_models
from lightseg.models.frm import (
    FRMConfig,
    NonLocal,
    TransformerBlock,
    build_frm,
    polyphase_downsample,
)

# Published in docs/frm.md: parameters (19 classes) and GMACs in the "paper" convention (module
# hooks, lightseg.flops) at 1024×2048 and 512×512.
TABLE = {
    "frm_van_b0": (5_479_796, 85.01, 10.63),
    "frm_van_b1": (18_496_660, 217.08, 27.14),
    "frm_van_b2": (31_213_332, 322.19, 40.27),
}
# Backbone GMACs at 1024×2048 named by SPEC 2.2 (≈ 36 / 104 / 209 G).
BACKBONE_GMACS = {"van_b0": 36, "van_b1": 104, "van_b2": 209}


def _meta(name: str, **kw) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **kw).eval()


def test_registered_with_published_figures():
    assert list_models("frm_van_*", kind="segmentor") == sorted(TABLE)
    pub = get_entry("frm_van_b1").published
    assert pub["cityscapes_test_miou"] == 80.4 and pub["gflops"] == 214.82


@pytest.mark.parametrize("name", sorted(TABLE))
def test_variant_shapes_params_macs(name):
    params, gmacs_full, gmacs_512 = TABLE[name]
    model = _meta(name, num_classes=19)
    assert model.output_stride == 4
    assert sum(p.numel() for p in model.parameters()) == params
    assert model(torch.empty(2, 3, 512, 512, device="meta")).shape == (2, 19, 128, 128)
    assert model(torch.empty(1, 3, 1024, 2048, device="meta")).shape == (1, 19, 256, 512)
    assert count_macs(model, (1024, 2048), "paper") / 1e9 == pytest.approx(gmacs_full, abs=0.01)
    assert count_macs(model, (512, 512), "paper") / 1e9 == pytest.approx(gmacs_512, abs=0.01)


def test_default_model_matches_the_paper_cost():
    model = _meta("frm_van_b1", num_classes=19)
    gmacs = count_macs(model, (1024, 2048), "paper") / 1e9
    assert abs(gmacs - 214.82) / 214.82 < 0.05


@pytest.mark.parametrize("name", sorted(BACKBONE_GMACS))
def test_backbone_macs(name):
    gmacs = count_macs(_meta(name), (1024, 2048), "paper") / 1e9
    assert gmacs == pytest.approx(BACKBONE_GMACS[name], rel=0.03)


def test_real_forward_matches_stride_and_rejects_bad_sizes():
    model = create_model("frm_van_b0", num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 64)).shape == (1, 7, 8, 16)
    with pytest.raises(ValueError, match="multiple of 32"):
        model(torch.randn(1, 3, 32, 48))


def test_every_parameter_gets_a_gradient():
    """One SGD step through CE + contrastive, then every parameter of the model and of the loss
    has a non-zero gradient (the zero-initialised BN scales shadow their branch only at step 0)."""
    torch.manual_seed(0)
    model = create_model("frm_van_b0", num_classes=5, drop_path_rate=0.0).train()
    loss_fn = build_seg_loss(model, max_samples_per_class=16)
    params = list(model.parameters()) + list(loss_fn.parameters())
    opt = torch.optim.SGD(params, lr=0.1)
    # 64x64: the stride-32 map must have more than one position, or whitening zeroes q and k.
    x, target = torch.randn(1, 3, 64, 64), torch.randint(0, 5, (1, 64, 64))
    for _ in range(2):
        opt.zero_grad()
        total, parts = loss_fn(model.forward_train(x), target)
        total.backward()
        opt.step()
    assert set(parts) == {"ce", "contrastive"}
    names = [n for n, _ in model.named_parameters()] + [f"loss.{n}" for n, _ in loss_fn.named_parameters()]
    dead = [n for n, p in zip(names, params) if p.grad is None or p.grad.abs().sum() == 0]
    # The unary conv's bias shifts every logit of a softmax equally, so its gradient is zero in exact
    # arithmetic (as in mmseg's DNL, which keeps the bias too); float rounding may or may not show it.
    assert not [n for n in dead if n != "head.frm.block.mixer.unary.bias"]


def test_inference_model_has_no_projection_head():
    model = create_model("frm_van_b0", num_classes=19)
    keys_before = list(model.state_dict())
    loss_fn = build_seg_loss(model)
    # The 2-layer projection to 128-d belongs to the loss ...
    assert isinstance(loss_fn.contrastive, PixelContrastiveLoss)
    proj = loss_fn.contrastive.proj
    assert [tuple(m.weight.shape) for m in proj if isinstance(m, nn.Conv2d)] == [(128, 128, 1, 1)] * 2
    # ... and the model (what inference and export see) is untouched by it: same keys, the
    # parameter count published for the model, no parameter shared with the loss.
    assert list(model.state_dict()) == keys_before
    assert sum(p.numel() for p in model.parameters()) == TABLE["frm_van_b0"][0]
    assert not {id(p) for p in proj.parameters()} & {id(p) for p in model.parameters()}
    assert all(not isinstance(m, PixelContrastiveLoss) for m in model.modules())
    out = model.eval()(torch.randn(1, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 19, 8, 8)
    train_out = model.forward_train(torch.randn(1, 3, 32, 32))
    assert train_out["embed_features"].shape == (1, model.head.embed_channels, 8, 8)


@pytest.mark.parametrize(
    "option",
    [
        {"use_frm": False},
        {"use_unary": False},
        {"pooling": "avg"},
        {"nonlocal_kind": "plain"},
    ],
)
def test_ablations_build_and_run(option):
    model = create_model("frm_van_b0", num_classes=3, **option).eval()
    head = model.head
    if option.get("use_frm") is False:
        assert head.frm is None
    else:
        ((key, value),) = option.items()
        assert getattr(head.cfg, key) == value
        mixer = head.frm.block.mixer
        assert (mixer.unary is None) == (
            option.get("use_unary") is False or option.get("nonlocal_kind") == "plain"
        )
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 64)).shape == (1, 3, 8, 16)
    assert model.meta.options == option  # recorded, so checkpoints rebuild the ablation


def test_unknown_option_names_the_fields():
    with pytest.raises(TypeError, match="nonlocal_kind"):
        create_model("frm_van_b0", nonlocal_knd="plain")
    with pytest.raises(ValueError, match="polyphase"):
        FRMConfig(pooling="max")


def test_head_on_any_backbone():
    """build_frm reads widths and strides from feature_info (here three levels, strides 8/16/32)."""

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.feature_info = [{"num_chs": c, "reduction": r} for c, r in ((8, 8), (16, 16), (24, 32))]
            self.convs = nn.ModuleList(nn.Conv2d(3, i["num_chs"], 1) for i in self.feature_info)

        def forward(self, x):
            return [
                c(nn.functional.avg_pool2d(x, i["reduction"])) for c, i in zip(self.convs, self.feature_info)
            ]

    model = build_frm(Toy(), num_classes=4, cfg=FRMConfig(D=12, E=16)).eval()
    assert model.output_stride == 8
    assert [m.out_channels for m in (r[0] for r in model.head.frm.redistribute)] == [8, 16, 24]
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 4, 8, 8)


# --------------------------------------------------------------------------------------------------
# Building blocks against their formulas
# --------------------------------------------------------------------------------------------------
def _conv1x1(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Conv1x1 written out on an N×C×L tensor."""
    return torch.einsum("oc,ncl->nol", conv.weight[:, :, 0, 0], x) + conv.bias[None, :, None]


@pytest.mark.parametrize("use_unary", [True, False])
def test_disentangled_nonlocal_equals_its_formula(use_unary):
    torch.manual_seed(0)
    dim, tau = 4, 0.05
    dnl = NonLocal(dim, "disentangled", use_unary, tau).eval()
    bn = dnl.out[1]
    nn.init.uniform_(bn.weight, 0.5, 1.5)  # undo the zero init so the output is informative
    nn.init.normal_(bn.bias)
    x = torch.randn(1, dim, 2, 3)
    xs = x.flatten(2)  # 1×4×6
    q, k, v = (_conv1x1(c, xs)[0] for c in (dnl.query, dnl.key, dnl.value))  # 2×6 each
    qw = q - q.mean(dim=1, keepdim=True)
    kw = k - k.mean(dim=1, keepdim=True)
    L = 6
    expected = torch.zeros(dim, L)
    wo = dnl.out[0].weight[:, :, 0, 0]
    for i in range(L):
        pair = torch.tensor(
            [float((qw[:, i] @ kw[:, j]).detach()) / (math.sqrt(2) * tau) for j in range(L)]
        ).softmax(0)
        weights = pair
        if use_unary:
            m = _conv1x1(dnl.unary, xs)[0, 0]
            weights = pair + m.softmax(0)
        y_i = sum(weights[j] * v[:, j] for j in range(L))
        z_i = wo @ y_i
        expected[:, i] = (z_i - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    with torch.no_grad():
        got = dnl(x).flatten(2)[0]
    torch.testing.assert_close(got, expected.detach(), rtol=1e-4, atol=1e-5)


def test_plain_nonlocal_is_embedded_gaussian():
    torch.manual_seed(0)
    nl = NonLocal(4, "plain")
    x = torch.randn(1, 4, 2, 2)
    q, k = _conv1x1(nl.query, x.flatten(2))[0], _conv1x1(nl.key, x.flatten(2))[0]
    expected = (q.t() @ k / math.sqrt(2)).softmax(dim=1)
    torch.testing.assert_close(nl.attention(x)[0], expected.detach())


def test_transformer_block_is_identity_at_init():
    block = TransformerBlock(8, FRMConfig(D=8)).train()
    z = torch.randn(2, 8, 3, 5)
    torch.testing.assert_close(block(z), z)


def test_polyphase_pooling_picks_the_max_norm_component():
    x = torch.zeros(2, 1, 4, 4)
    # Sample 0: component (1, 0) (odd rows, even cols) is the largest; sample 1: component (0, 1).
    x[0, 0, 1::2, 0::2] = torch.tensor([[3.0, 1.0], [1.0, 1.0]])  # norm √12
    x[0, 0, 0::2, 0::2] = 1.5  # norm 3 < √12, though the same sum (6): a mean would not tell them apart
    x[1, 0, 0::2, 1::2] = torch.tensor([[-2.0, -2.0], [-2.0, 0.0]])  # norm √12, negative values
    x[1, 0, 1::2, 1::2] = 1.0  # norm 2
    out = polyphase_downsample(x)
    torch.testing.assert_close(out[0, 0], torch.tensor([[3.0, 1.0], [1.0, 1.0]]))
    torch.testing.assert_close(out[1, 0], torch.tensor([[-2.0, -2.0], [-2.0, 0.0]]))
    # The choice is shift-equivariant: rolling the input by one pixel picks the same values.
    rolled = polyphase_downsample(torch.roll(x, shifts=(1, 1), dims=(-2, -1)))
    assert sorted(rolled[0, 0].flatten().tolist()) == sorted(out[0, 0].flatten().tolist())
