"""EfficientFormerV2 (segmentation variant, SPEC 1.5): structure, numbers, bias handling, checkpoints."""

from __future__ import annotations

import itertools

import pytest
import torch

from lightseg.checkpoint import CheckpointError, load_weights
from lightseg.layers import DropPath
from lightseg.models import create_model, list_models
from lightseg.models.efficientformer_v2 import (
    AttnDown,
    EfficientFormerV2,
    _detect_imagenet,
    convert_official_backbone_keys,
    offset_index,
)

NAMES = ["efficientformerv2_s0", "efficientformerv2_s1", "efficientformerv2_s2", "efficientformerv2_l"]
# SPEC 1.5 widths per variant.
WIDTHS = {
    "efficientformerv2_s0": (32, 48, 96, 176),
    "efficientformerv2_s1": (32, 48, 120, 224),
    "efficientformerv2_s2": (32, 64, 144, 288),
    "efficientformerv2_l": (40, 80, 192, 384),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: on a shared 2-core machine a second thread only adds waiting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _meta_model(name: str, **kw) -> EfficientFormerV2:
    """A model whose parameters live on the meta device: shapes and counts without the compute."""
    with torch.device("meta"):
        model = create_model(name, **kw)
    return model.to("meta")


def _randomized(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict of ``model`` with every float tensor random (bias tables and BN stats included)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, t in model.state_dict().items():
        if t.is_floating_point():
            r = torch.randn(t.shape, generator=g) * 0.2
            out[k] = r.abs() + 0.5 if k.endswith("running_var") else r
        else:
            out[k] = t.clone()
    return out


def test_registered_as_backbones():
    assert set(NAMES) <= set(list_models("efficientformerv2_*", kind="backbone"))


@pytest.mark.parametrize("name", NAMES)
def test_feature_shapes_at_512(name):
    model = _meta_model(name).eval()
    feats = model(torch.empty(1, 3, 512, 512, device="meta"))
    widths = WIDTHS[name]
    assert [tuple(f.shape) for f in feats] == [
        (1, c, 512 // s, 512 // s) for c, s in zip(widths, (4, 8, 16, 32))
    ]
    assert [(i["num_chs"], i["reduction"]) for i in model.feature_info] == list(zip(widths, (4, 8, 16, 32)))


def test_feature_shapes_non_square_real_compute():
    torch.manual_seed(0)
    model = create_model("efficientformerv2_s0").eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 96, 160))
    assert [tuple(f.shape) for f in feats] == [
        (1, 32, 24, 40),
        (1, 48, 12, 20),
        (1, 96, 6, 10),
        (1, 176, 3, 5),
    ]
    assert all(torch.isfinite(f).all() for f in feats)
    feats = _meta_model("efficientformerv2_s1").eval()(torch.empty(2, 3, 480, 640, device="meta"))
    assert [tuple(f.shape) for f in feats] == [
        (2, 32, 120, 160),
        (2, 48, 60, 80),
        (2, 120, 30, 40),
        (2, 224, 15, 20),
    ]


def test_input_size_must_be_multiple_of_32():
    model = _meta_model("efficientformerv2_s0")
    with pytest.raises(ValueError, match=r"multiple of 32.*pad to 512x640"):
        model(torch.empty(1, 3, 500, 640, device="meta"))


# Backbone parameter counts of the official code with its segmentation bias tables; SPEC 1.1 gives the
# backbone parts of CGRSeg T/B/L as 5.75M / 12.15M / 25.58M (S0 is not used by CGRSeg).
PARAMS = {
    "efficientformerv2_s0": 3_259_152,
    "efficientformerv2_s1": 5_748_360,
    "efficientformerv2_s2": 12_151_408,
    "efficientformerv2_l": 25_578_016,
}
SPEC_MILLIONS = {"efficientformerv2_s1": 5.75, "efficientformerv2_s2": 12.15, "efficientformerv2_l": 25.58}


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count(name):
    n = sum(p.numel() for p in _meta_model(name).parameters())
    assert n == PARAMS[name]
    if name in SPEC_MILLIONS:
        assert round(n / 1e6, 2) == SPEC_MILLIONS[name]


def _official_offset_loop(q_res: int, k_res: int, step: int) -> torch.Tensor:
    """The official enumeration, written as plain loops: offsets numbered by first appearance."""
    queries = list(itertools.product(range(q_res), range(q_res)))
    keys = list(itertools.product(range(k_res), range(k_res)))
    seen: dict[tuple[int, int], int] = {}
    idx = [
        seen.setdefault((abs(step * a - c), abs(step * b - d)), len(seen))
        for a, b in queries
        for c, d in keys
    ]
    return torch.tensor(idx).view(len(queries), len(keys))


@pytest.mark.parametrize("args", [(8, 8, 1), (8, 16, 2), (5, 9, 2), (3, 3, 1)])
def test_offset_index_matches_official_enumeration(args):
    assert torch.equal(offset_index(*args), _official_offset_loop(*args))


def test_bias_tables_match_reference_grids():
    model = _meta_model("efficientformerv2_s1")
    stage3 = model.network[4][-1].token_mixer  # 32x32 map, halved to 16x16 by the stride
    stage4 = model.network[6][-1].token_mixer  # 16x16
    down = model.network[5].attn  # 16x16 queries vs 32x32 keys
    # 16 x 16 distinct (|drow|, |dcol|) on a 16x16 grid; |2q - k| takes 32 values per axis for the AttnDown.
    assert tuple(stage3.attention_biases_seg.shape) == (8, 256)
    assert tuple(stage4.attention_bias_idxs_seg.shape) == (256, 256)
    assert tuple(down.attention_biases_seg.shape) == (8, 1024)
    assert tuple(down.attention_bias_idxs_seg.shape) == (256, 1024)


def test_bias_at_reference_size_equals_bicubic_identity():
    torch.manual_seed(0)
    down = create_model("efficientformerv2_s0").network[5].attn
    with torch.no_grad():
        down.attention_biases_seg.normal_()
    table = down.attention_biases_seg[:, down.attention_bias_idxs_seg].unsqueeze(0)
    bicubic = torch.nn.functional.interpolate(table, size=(256, 1024), mode="bicubic", align_corners=False)
    assert torch.equal(down.position_bias(256, 1024), bicubic)  # 512x512 input: 16x16 queries, 32x32 keys
    assert down.position_bias(64, 256).shape == (1, 8, 64, 256)


def test_drop_path_grows_linearly():
    model = _meta_model("efficientformerv2_s2")  # default rate 0.02, 4+4+12+8 = 28 blocks
    rates = [m.rate for m in model.modules() if isinstance(m, DropPath)]  # one per block, in order
    assert rates == pytest.approx([0.02 * i / 27 for i in range(28)])
    model = _meta_model("efficientformerv2_s0", drop_path_rate=0.13)  # 14 blocks
    assert [m.rate for m in model.modules() if isinstance(m, DropPath)] == pytest.approx(
        [0.13 * i / 13 for i in range(14)]
    )


X_SMALL = (1, 3, 64, 96)


@torch.no_grad()
def test_eval_then_load_equals_load_then_eval():
    torch.manual_seed(0)
    state = _randomized(create_model("efficientformerv2_s0"), seed=1)
    x = torch.randn(*X_SMALL)
    first_eval = create_model("efficientformerv2_s0").eval()
    first_eval.load_state_dict(state)
    first_load = create_model("efficientformerv2_s0")
    first_load.load_state_dict(state)
    first_load.eval()
    fixed = create_model("efficientformerv2_s0")
    fixed.fix_input_size(X_SMALL[-2:])
    fixed.eval()
    fixed.load_state_dict(state)
    ref = first_load(x)
    for model in (first_eval, fixed):
        assert all(torch.equal(a, b) for a, b in zip(model(x), ref))
    # The check can fail: the loaded bias tables do change the output.
    zero_bias = {
        k: torch.zeros_like(v) if k.endswith("attention_biases_seg") else v for k, v in state.items()
    }
    first_load.load_state_dict(zero_bias)
    assert not torch.allclose(first_load(x)[3], ref[3])


@torch.no_grad()
def test_fixed_input_size_mode():
    torch.manual_seed(0)
    model = create_model("efficientformerv2_s0")
    model.load_state_dict(_randomized(model, seed=2))
    model.eval()
    x = torch.randn(*X_SMALL)
    dynamic = model(x)
    model.fix_input_size(X_SMALL[-2:])
    assert all(torch.equal(a, b) for a, b in zip(model(x), dynamic))
    with pytest.raises(ValueError, match=r"fixed to input size 64x96.*fix_input_size\(None\)"):
        model(torch.randn(1, 3, 64, 64))
    # A table changed in place after fixing (an optimiser step, a load) is picked up, not served stale.
    down = model.network[5].attn
    down.attention_biases_seg.add_(1.0)
    model.fix_input_size(None)
    dynamic = model(x)
    model.fix_input_size(X_SMALL[-2:])
    down.attention_biases_seg.sub_(0.5)
    fixed_out = model(x)
    model.fix_input_size(None)
    assert all(torch.equal(a, b) for a, b in zip(fixed_out, model(x)))
    assert not torch.equal(fixed_out[3], dynamic[3])
    assert model(torch.randn(1, 3, 64, 64))[3].shape == (1, 176, 2, 2)  # any size again
    with pytest.raises(ValueError, match="multiple of 32"):
        model.fix_input_size((500, 512))


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = create_model("efficientformerv2_s0").train()
    model.fix_input_size((64, 64))  # fixed mode must not cut the gradient of the tables in training
    feats = model(torch.randn(2, 3, 64, 64))
    loss = sum((f * torch.randn_like(f)).sum() for f in feats)
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


# --- checkpoints --------------------------------------------------------------------------------------
def _imagenet_state(model: EfficientFormerV2, seed: int = 0) -> dict[str, torch.Tensor]:
    """An official ImageNet file's ``model`` dict: backbone keys without the seg tables, plus the
    classification bias tables (7x7 grids at 224 px; AttnDown 7x7 queries vs 14x14 keys) and the
    classifier (final BN, head, distillation head; 1000 classes)."""
    g = torch.Generator().manual_seed(seed)
    state = {k: v for k, v in _randomized(model, seed).items() if not k.endswith("_seg")}
    c = model.feature_info[-1]["num_chs"]
    for name, m in model.named_modules():
        if hasattr(m, "attention_biases_seg"):
            n_keys = 196 if isinstance(m, AttnDown) else 49
            state[f"{name}.attention_biases"] = torch.randn(8, n_keys, generator=g)
            state[f"{name}.attention_bias_idxs"] = torch.randint(0, n_keys, (49, n_keys), generator=g)
    state.update(
        {
            "norm.weight": torch.rand(c, generator=g),
            "norm.bias": torch.randn(c, generator=g),
            "norm.running_mean": torch.randn(c, generator=g),
            "norm.running_var": torch.rand(c, generator=g),
            "norm.num_batches_tracked": torch.tensor(1000),
            "head.weight": torch.randn(1000, c, generator=g),
            "head.bias": torch.randn(1000, generator=g),
            "dist_head.weight": torch.randn(1000, c, generator=g),
            "dist_head.bias": torch.randn(1000, generator=g),
        }
    )
    return state


def test_imagenet_checkpoint_loads_and_reproduces_weights(tmp_path):
    model = create_model("efficientformerv2_s0")
    source = _imagenet_state(model, seed=3)
    path = tmp_path / "eformer_s0_450.pth"
    torch.save({"model": source, "epoch": 449}, path)
    assert load_weights(model, path) == "efficientformerv2-imagenet"
    loaded = model.state_dict()
    for k, v in loaded.items():
        if k.endswith("attention_biases_seg"):
            assert torch.count_nonzero(v) == 0, k  # the seg tables start at zero
        elif not k.endswith("attention_bias_idxs_seg"):
            assert torch.equal(v, source[k]), k
    # create_model(weights=...) goes the same way.
    again = create_model("efficientformerv2_s0", weights=str(path))
    assert torch.equal(again.network[6][-1].mlp.fc2.weight, source["network.6.3.mlp.fc2.weight"])


def test_imagenet_checkpoint_with_unmapped_key_fails(tmp_path):
    model = create_model("efficientformerv2_s0")
    source = _imagenet_state(model)
    source["network.2.1.mlp.extra.weight"] = torch.zeros(3)
    path = tmp_path / "bad.pth"
    torch.save({"model": source}, path)
    with pytest.raises(CheckpointError, match=r"network\.2\.1\.mlp\.extra\.weight"):
        load_weights(model, path)


def test_imagenet_layout_detect_is_specific():
    model = create_model("efficientformerv2_s0")
    state = _imagenet_state(model)
    assert _detect_imagenet({"model": state})
    assert not _detect_imagenet({"state_dict": {"backbone." + k: v for k, v in state.items()}})
    assert not _detect_imagenet({"format": "lightseg-train", "model": state})
    assert not _detect_imagenet({"model": {"conv1.weight": torch.zeros(1)}})
    assert not _detect_imagenet(state)


def test_official_backbone_keys_map_one_to_one():
    model = create_model("efficientformerv2_s0")
    own = model.state_dict()
    official = dict(own)  # the CGRSeg release adds dead classification-named buffers per attention module
    official["network.4.5.token_mixer.attention_biases"] = torch.zeros(8, 49)
    official["network.4.5.token_mixer.attention_bias_idxs"] = torch.ones(49, 49, dtype=torch.long)
    official["network.5.attn.attention_biases"] = torch.zeros(8, 196)
    official["network.5.attn.attention_bias_idxs"] = torch.ones(49, 196, dtype=torch.long)
    converted = convert_official_backbone_keys(official)
    assert list(converted) == list(own)
    model.load_state_dict(converted, strict=True)
