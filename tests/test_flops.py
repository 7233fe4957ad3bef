"""MAC counting (lightseg.flops): hand-computed small modules in both conventions, the published
CGRSeg figures, the meta-device shortcut against a real run, and the ``flops`` / ``models`` verbs."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightseg.cli import main
from lightseg.flops import FLOPS_JSON_KEYS, count_all_conventions, count_macs, profile_model, render_table


def _both(model: nn.Module, size=(6, 6), batch: int = 1) -> tuple[int, int]:
    c = count_all_conventions(model, size, batch=batch, in_chans=4)
    return c["paper"], c["all"]


class _Wrap(nn.Module):
    """Applies ``fn`` to the input (for functional ops that have no module)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


# ---- hand-computed modules ------------------------------------------------------------------------


def test_grouped_conv_with_bias():
    # out 8 x 6 x 6 = 288 positions*channels; each output sums 3*3*(4/2) = 18 products.
    conv = nn.Conv2d(4, 8, 3, padding=1, groups=2, bias=True)
    weight, bias = 288 * 18, 288
    assert _both(conv) == (weight + bias, weight + bias)


def test_strided_conv_without_bias():
    # 6x6 -> 3x3 output, 5 channels, each 3*3*4 = 36 products, no bias.
    conv = nn.Conv2d(4, 5, 3, stride=2, padding=1, bias=False)
    assert _both(conv) == (5 * 9 * 36, 5 * 9 * 36)


def test_batchnorm_counts_twice_numel_when_affine():
    numel = 4 * 6 * 6
    assert _both(nn.BatchNorm2d(4)) == (2 * numel, 2 * numel)
    assert _both(nn.BatchNorm2d(4, affine=False)) == (numel, numel)


def test_linear_counts_input_numel_times_out_features():
    # (1, 4, 6, 6) -> Linear over the last dim (6 -> 10): 144 input elements * 10, bias not counted.
    assert _both(nn.Linear(6, 10)) == (1440, 1440)


def test_matmul_only_in_all():
    # x: 1 x 4 x 36 tokens; x^T x is 36 x 36 outputs of 4 products each.
    def gram(x):
        t = x.flatten(2)
        return t.transpose(1, 2) @ t

    assert _both(_Wrap(gram)) == (0, 36 * 36 * 4)


def test_sdpa_only_in_all_on_cpu():
    # The 1 x 4 x 6 x 6 input as 2 heads x 9 tokens x 8 dims; q k^T and a v: 9*9*8 MACs each per head.
    heads, tokens, dims = 2, 9, 8

    def attn(x):
        t = x.reshape(1, heads, tokens, dims)
        return F.scaled_dot_product_attention(t, t, t)

    assert _both(_Wrap(attn)) == (0, 2 * heads * tokens * tokens * dims)


def test_functional_interpolate_and_pool_not_in_paper_but_modules_are():
    assert _both(_Wrap(lambda x: F.interpolate(x, scale_factor=2, mode="bilinear"))) == (0, 0)
    assert _both(_Wrap(lambda x: F.adaptive_avg_pool2d(x, 2))) == (0, 0)
    up = 4 * 12 * 12  # nn.Upsample: output numel
    assert _both(nn.Upsample(scale_factor=2, mode="bilinear")) == (up, up)
    assert _both(nn.AdaptiveAvgPool2d(2)) == (144, 144)  # pooling: input numel


def test_activations_relu_family_counted_gelu_not():
    assert _both(nn.ReLU()) == (144, 144)
    assert _both(nn.ReLU6()) == (144, 144)
    assert _both(nn.GELU()) == (0, 0)
    assert _both(nn.Sigmoid()) == (0, 0)


def test_module_called_twice_counts_twice_and_batch_scales():
    conv = nn.Conv2d(4, 4, 1, bias=False)  # 4 x 36 outputs of 4 products: 576 MACs per call
    twice = _Wrap(lambda x: conv(conv(x)))
    twice.conv = conv
    assert _both(twice) == (1152, 1152)
    assert _both(twice, batch=3) == (3 * 1152, 3 * 1152)


class _Small(nn.Module):
    """Conv + BN + ReLU, attention-like matmul, functional resize, classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.cls = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        x = self.stem(x)
        t = x.flatten(2)
        a = (t.transpose(1, 2) @ t).softmax(-1)
        x = x + (t @ a).view_as(x)
        return F.interpolate(self.cls(x), scale_factor=2.0, mode="bilinear")


def test_small_model_by_hand_and_meta_equals_real():
    model = _Small()
    h = w = 16
    p = (h // 2) * (w // 2)  # 64 positions after the stride-2 stem
    stem = p * 8 * (27 + 1) + 2 * 8 * p + 8 * p  # conv (+bias), BN affine, ReLU
    cls = p * 5 * (8 + 1)
    matmuls = p * p * 8 * 2  # t^T t and t a
    assert count_macs(model, (h, w), "paper") == stem + cls
    assert count_macs(model, (h, w), "all") == stem + cls + matmuls
    with torch.device("meta"):
        meta = _Small()
    assert count_all_conventions(meta, (h, w)) == count_all_conventions(model, (h, w))
    model.stem[1].eval()  # a frozen BN inside a training model keeps its own mode
    count_macs(model, (h, w))
    assert model.training and model.cls.training and not model.stem[1].training


def test_bad_convention_and_size_fail_clearly():
    with pytest.raises(ValueError, match="paper, all"):
        count_macs(nn.ReLU(), (4, 4), "flops")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="height, width"):
        count_macs(nn.ReLU(), (4,))


# ---- the published CGRSeg figures (SPEC 1.1) ------------------------------------------------------

# name: (paper GMACs as published, all-ops GMACs, params (M) of the released code with 150 classes:
# total, backbone, head)
CGRSEG = {
    "cgrseg_t": (4.0, 4.62, (9.36, 5.75, 3.62)),
    "cgrseg_b": (7.6, 8.74, (19.11, 12.15, 6.96)),
    "cgrseg_l": (14.9, 16.35, (35.68, 25.58, 10.10)),
}


@pytest.mark.parametrize("name", sorted(CGRSEG))
def test_cgrseg_published_gmacs_and_params(name):
    paper, all_ops, (params, backbone, head) = CGRSEG[name]
    prof = profile_model(name, (512, 512), num_classes=150)
    assert prof["gmacs_paper"] == pytest.approx(paper, rel=0.03)
    assert prof["gmacs_all"] == pytest.approx(all_ops, rel=0.03)
    assert prof["params"] / 1e6 == pytest.approx(params, abs=0.01)
    assert prof["params_backbone"] / 1e6 == pytest.approx(backbone, abs=0.01)
    assert prof["params_head"] / 1e6 == pytest.approx(head, abs=0.01)


def test_cgrseg_meta_count_equals_real_run():
    from lightseg.models import create_model

    torch.manual_seed(0)
    real = create_model("cgrseg_t", num_classes=150)
    prof = profile_model("cgrseg_t", (128, 192), num_classes=150)  # built on meta
    counts = count_all_conventions(real, (128, 192))
    assert counts["paper"] / 1e9 == prof["gmacs_paper"]
    assert counts["all"] / 1e9 == prof["gmacs_all"]


# ---- command line ---------------------------------------------------------------------------------


def test_cli_flops_json_keys(capsys):
    assert main(["flops", "cgrseg_t", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert tuple(out) == FLOPS_JSON_KEYS
    assert out["gmacs_paper"] == pytest.approx(4.0, rel=0.03)
    assert out["params"] == out["params_backbone"] + out["params_head"]


def test_cli_flops_table_states_unit_and_unknown_model_fails(capsys):
    assert main(["flops", "cgrseg_t", "--size", "256", "256"]) == 0
    out = capsys.readouterr().out
    assert "256x256" in out and "MAC" in out
    assert main(["flops", "cgrseg_tt"]) == 2
    assert "cgrseg_t" in capsys.readouterr().err  # close match offered


def test_cli_models_markdown_table(capsys):
    assert main(["models", "cgrseg_[t]", "--format", "markdown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| model | kind | params (M) |")
    assert set(lines[1]) == {"|", "-"}
    cells = [c.strip() for c in lines[2].split("|")[1:-1]]
    assert cells[:3] == ["cgrseg_t", "segmentor", "9.36"]
    assert cells[5] == "43.6"  # published ADE20K mIoU from the registry entry


def test_render_table_text_aligns_columns():
    row = {
        "name": "m",
        "kind": "segmentor",
        "params": 1_500_000,
        "gmacs_paper": 1.0,
        "gmacs_all": 1.25,
        "size": [512, 512],
        "num_classes": 150,
        "published": {"ade20k_miou": 40.0, "cityscapes_miou": 70.0},
    }
    text = render_table([row, {**row, "name": "longer_name"}])
    header, rule, first, second, note = text.splitlines()
    assert header.split()[:3] == ["model", "kind", "params"] and set(rule) == {"-", " "}
    assert len(first) == len(second)
    assert "1.50" in first and "1.25" in first and "40.0" in first and "cityscapes_miou=70.0" in first
    assert "512x512" in note
