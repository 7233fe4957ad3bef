"""VAN backbone: variant table, shapes, feature_info, drop-path, the official ImageNet checkpoint layout."""

from __future__ import annotations

import pytest
import torch

from lightseg.checkpoint import CheckpointError, load_weights
from lightseg.models import create_model, get_entry, list_models
from lightseg.models.van import VAN_VARIANTS

# Widths / depths of the VAN paper (Table 1) and the official release (van_tiny/small/base/large).
PAPER_TABLE = {
    "van_b0": ((32, 64, 160, 256), (3, 3, 5, 2)),
    "van_b1": ((64, 128, 320, 512), (2, 2, 4, 2)),
    "van_b2": ((64, 128, 320, 512), (3, 3, 12, 3)),
    "van_b3": ((64, 128, 320, 512), (3, 5, 27, 3)),
}
# Backbone parameters (no ImageNet classifier), as published in docs/frm.md. The VAN paper's
# 4.1 / 13.9 / 26.6 / 44.8 M include the 1000-class head (C4·1000 + 1000 parameters).
PARAMS = {"van_b0": 3_848_800, "van_b1": 13_348_800, "van_b2": 26_065_472, "van_b3": 44_252_608}
PAPER_PARAMS_WITH_HEAD_M = {"van_b0": 4.1, "van_b1": 13.9, "van_b2": 26.6, "van_b3": 44.8}


def test_registered_as_backbones():
    assert list_models("van_*") == sorted(PAPER_TABLE)
    assert all(get_entry(n).kind == "backbone" and get_entry(n).family == "van" for n in PAPER_TABLE)


@pytest.mark.parametrize("name", sorted(PAPER_TABLE))
def test_variant_table_params_and_shapes(name):
    widths, depths = PAPER_TABLE[name]
    cfg = VAN_VARIANTS[name.split("_")[1]]
    assert (cfg.widths, cfg.depths, cfg.mlp_ratios) == (widths, depths, (8, 8, 4, 4))
    with torch.device("meta"):
        model = create_model(name)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == PARAMS[name]
    head = widths[-1] * 1000 + 1000
    assert (n_params + head) / 1e6 == pytest.approx(PAPER_PARAMS_WITH_HEAD_M[name], abs=0.06)
    assert model.feature_info == [{"num_chs": c, "reduction": r} for c, r in zip(widths, (4, 8, 16, 32))]
    feats = model(torch.empty(2, 3, 512, 512, device="meta"))
    assert [tuple(f.shape) for f in feats] == [
        (2, c, 512 // r, 512 // r) for c, r in zip(widths, (4, 8, 16, 32))
    ]


def test_real_forward_and_gradients():
    torch.manual_seed(0)
    model = create_model("van_b0").train()  # no drop-path: a dropped branch would get no gradient
    feats = model(torch.randn(2, 3, 32, 64))
    assert [tuple(f.shape[-2:]) for f in feats] == [(8, 16), (4, 8), (2, 4), (1, 2)]
    sum(f.square().mean() for f in feats).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_drop_path_grows_linearly():
    model = create_model("van_b0", drop_path_rate=0.3)
    rates = [blk.drop_path.rate for i in range(1, 5) for blk in getattr(model, f"block{i}")]
    assert len(rates) == 13
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3)
    assert rates == pytest.approx([0.3 * i / 12 for i in range(13)])
    # The stage LayerNorm is the official eps 1e-6 and the layer scale starts at 1e-2.
    assert model.norm1.eps == 1e-6
    assert torch.all(model.block1[0].layer_scale_1 == 1e-2)


# --------------------------------------------------------------------------------------------------
# The official ImageNet layout, written from the key names of VAN-Classification models/van.py
# --------------------------------------------------------------------------------------------------
def _bn(prefix: str, c: int) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.weight": torch.rand(c) + 0.5,
        f"{prefix}.bias": torch.randn(c),
        f"{prefix}.running_mean": torch.randn(c),
        f"{prefix}.running_var": torch.rand(c) + 0.5,
        f"{prefix}.num_batches_tracked": torch.tensor(7),
    }


def _conv(prefix: str, cout: int, cin: int, k: int) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": torch.randn(cout, cin, k, k) * 0.1, f"{prefix}.bias": torch.randn(cout) * 0.1}


def official_van_state(widths, depths, ratios=(8, 8, 4, 4)) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    cin = 3
    for i, (c, d, r) in enumerate(zip(widths, depths, ratios), start=1):
        sd |= _conv(f"patch_embed{i}.proj", c, cin, 7 if i == 1 else 3) | _bn(f"patch_embed{i}.norm", c)
        for j in range(d):
            b, h = f"block{i}.{j}", c * r
            sd |= _bn(f"{b}.norm1", c) | _bn(f"{b}.norm2", c)
            sd[f"{b}.layer_scale_1"] = torch.rand(c)
            sd[f"{b}.layer_scale_2"] = torch.rand(c)
            sd |= _conv(f"{b}.attn.proj_1", c, c, 1) | _conv(f"{b}.attn.proj_2", c, c, 1)
            sd |= _conv(f"{b}.attn.spatial_gating_unit.conv0", c, 1, 5)
            sd |= _conv(f"{b}.attn.spatial_gating_unit.conv_spatial", c, 1, 7)
            sd |= _conv(f"{b}.attn.spatial_gating_unit.conv1", c, c, 1)
            sd |= _conv(f"{b}.mlp.fc1", h, c, 1) | _conv(f"{b}.mlp.dwconv.dwconv", h, 1, 3)
            sd |= _conv(f"{b}.mlp.fc2", c, h, 1)
        sd[f"norm{i}.weight"], sd[f"norm{i}.bias"] = torch.rand(c) + 0.5, torch.randn(c)
        cin = c
    sd["head.weight"], sd["head.bias"] = torch.randn(1000, widths[-1]), torch.randn(1000)
    return sd


@pytest.fixture(scope="module")
def van_b0_file(tmp_path_factory):
    torch.manual_seed(1)
    state = official_van_state(*PAPER_TABLE["van_b0"])
    path = tmp_path_factory.mktemp("van") / "van_tiny_754.pth.tar"
    torch.save({"state_dict": state}, path)
    return path, state


def test_imagenet_layout_loads_strictly(van_b0_file):
    path, state = van_b0_file
    model = create_model("van_b0", weights=str(path))
    own = model.state_dict()
    assert torch.equal(own["block2.1.mlp.dwconv.weight"], state["block2.1.mlp.dwconv.dwconv.weight"])
    assert torch.equal(own["norm4.weight"], state["norm4.weight"])
    assert torch.equal(own["patch_embed1.norm.running_var"], state["patch_embed1.norm.running_var"])
    # Every non-head key of the file landed somewhere (the model has no other keys).
    assert len(own) == len(state) - 2
    # The loaded model computes with those weights (BN statistics are not trivial ones).
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, 64, 64))
    assert all(torch.isfinite(f).all() for f in out)


def test_imagenet_layout_loads_into_the_backbone_of_a_segmentor(van_b0_file):
    path, state = van_b0_file
    model = create_model("frm_van_b0", num_classes=19)
    assert load_weights(model, path) == "van-imagenet"
    loaded = model.backbone.block3[4].attn.proj_2.weight
    assert torch.equal(loaded, state["block3.4.attn.proj_2.weight"])


def test_imagenet_layout_wrong_variant_names_the_keys(tmp_path):
    state = official_van_state(*PAPER_TABLE["van_b1"])  # B1 weights into B0: wider everywhere
    path = tmp_path / "van_small.pth.tar"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match="mis-shaped keys"):
        create_model("van_b0", weights=str(path))
    state = official_van_state(*PAPER_TABLE["van_b2"])  # B2 into B1: 12 blocks in stage 3, not 4
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match=r"block1\.2\.norm1") as err:
        create_model("van_b1", weights=str(path))
    assert "van-imagenet" in str(err.value)


def test_imagenet_layout_does_not_fire_on_mmseg_files():
    from lightseg.models.van import detect_imagenet

    state = official_van_state(*PAPER_TABLE["van_b0"])
    mmseg = {"state_dict": {f"backbone.{k}": v for k, v in state.items() if not k.startswith("head.")}}
    mmseg["state_dict"]["decode_head.conv_seg.weight"] = torch.zeros(19, 128, 1, 1)
    assert detect_imagenet({"state_dict": state}) and detect_imagenet(state)
    assert not detect_imagenet(mmseg) and not detect_imagenet(mmseg["state_dict"])


def test_pretrained_norm_feeds_the_stem_what_the_imagenet_weights_were_trained_on():
    """The official VAN weights were trained on (rgb - 127.5) / 127.5 (timm 0.4.12's Inception
    mean/std); pretrained_norm=True gives the stem exactly that from ImageNet-normalised input."""
    torch.manual_seed(0)
    own = create_model("van_b0", pretrained_norm=True).eval()
    plain = create_model("van_b0").eval()
    assert set(own.state_dict()) == set(plain.state_dict())  # a fixed map: nothing to load or save
    plain.load_state_dict(own.state_dict())
    rgb = torch.rand(1, 3, 64, 96) * 255
    imagenet = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    imagenet_std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    x = (rgb - imagenet) / imagenet_std  # what lightseg's pipeline feeds
    with torch.no_grad():
        got, want = own(x), plain((rgb - 127.5) / 127.5)
        as_is = plain(x)  # the default: ImageNet statistics, as VAN-Segmentation and mmseg
    for g, w, a in zip(got, want, as_is):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(g, a, atol=1e-2)


def test_pretrained_norm_travels_with_the_segmentor(tmp_path):
    from lightseg.checkpoint import save_weights
    from lightseg.models import load_checkpoint

    model = create_model("frm_van_b0", 5, pretrained_norm=True)
    assert model.backbone.renorm is not None and create_model("frm_van_b0", 5).backbone.renorm is None
    assert create_model("cgrseg_van_b0", 5, pretrained_norm=True).backbone.renorm is not None
    save_weights(model, tmp_path / "m.safetensors")
    assert load_checkpoint(tmp_path / "m.safetensors").backbone.renorm is not None
