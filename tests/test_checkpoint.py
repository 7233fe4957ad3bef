"""Checkpoints: round trips in the three layouts (lightseg safetensors, official mmseg CGRSeg,
official ImageNet backbone), URLs, and the errors a user sees for files that do not fit."""

import pytest
import torch
import torch.nn.functional as F

from lightseg import CheckpointError, create_model, load_checkpoint, save_weights

X = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _randomized_state(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in model.state_dict().items():
        if not v.is_floating_point():
            out[k] = v.clone()  # index tables, num_batches_tracked
        elif k.endswith("running_var"):
            out[k] = torch.rand(v.shape, generator=g) + 0.5
        else:
            out[k] = torch.randn(v.shape, generator=g) * 0.1
    return out


# ---- the official CGRSeg head, written here from SPEC 1.2-1.4 in the official key names ----------
T_CFG = {"widths": [48, 120, 224], "C": 128, "depth": 5, "neck": 11, "dw": 11}


def _bn_keys(prefix, c):
    return {
        prefix + "weight": (c,),
        prefix + "bias": (c,),
        prefix + "running_mean": (c,),
        prefix + "running_var": (c,),
    }


def _rcm_keys(p, d, k):
    keys = {
        p + "token_mixer.dwconv_hw.weight": (d, 1, 3, 3),
        p + "token_mixer.dwconv_hw.bias": (d,),
        p + "token_mixer.excite.0.weight": (d, 1, 1, k),
        p + "token_mixer.excite.0.bias": (d,),
        p + "token_mixer.excite.3.weight": (d, 1, k, 1),
        p + "token_mixer.excite.3.bias": (d,),
        p + "mlp.fc1.weight": (2 * d, d, 1, 1),
        p + "mlp.fc1.bias": (2 * d,),
        p + "mlp.fc2.weight": (d, 2 * d, 1, 1),
        p + "mlp.fc2.bias": (d,),
        p + "gamma": (d,),
    }
    return keys | _bn_keys(p + "token_mixer.excite.1.", d) | _bn_keys(p + "norm.", d)


def official_head_shapes(num_classes, widths, C, depth, neck, dw):
    shapes = {}
    for j in range(depth):
        shapes |= _rcm_keys(f"trans.transformer_blocks.{j}.", sum(widths), neck)
    for i, c in enumerate(widths):
        shapes |= _rcm_keys(f"meta.{i}.", c, dw)
        for f in ("fuse1", "fuse2"):
            shapes[f"SIM.{i}.{f}.conv.weight"] = (C, c, 1, 1)
            shapes |= _bn_keys(f"SIM.{i}.{f}.bn.", C)
        if i < len(widths) - 1:
            shapes |= {f"conv.{i}.weight": (c, C, 1, 1), f"conv.{i}.bias": (c,)}
    shapes["linear_fuse.conv.weight"] = (C, 1, 1, 1)
    shapes |= _bn_keys("linear_fuse.bn.", C)
    shapes |= {"lgc.conv_mask.weight": (1, C, 1, 1), "lgc.conv_mask.bias": (1,)}
    shapes |= {"lgc.channel_mul_conv.0.weight": (C, C, 1, 1), "lgc.channel_mul_conv.0.bias": (C,)}
    shapes |= {"lgc.channel_mul_conv.1.weight": (C, 1, 1), "lgc.channel_mul_conv.1.bias": (C, 1, 1)}
    shapes |= {"lgc.channel_mul_conv.3.weight": (C, C, 1, 1), "lgc.channel_mul_conv.3.bias": (C,)}
    shapes |= {"conv_seg.weight": (num_classes, C, 1, 1), "conv_seg.bias": (num_classes,)}
    return shapes


def _bn(x, sd, p):
    return F.batch_norm(x, sd[p + "running_mean"], sd[p + "running_var"], sd[p + "weight"], sd[p + "bias"])


def _rcm_ref(x, sd, p, k):
    c = x.shape[1]
    loc = F.conv2d(
        x, sd[p + "token_mixer.dwconv_hw.weight"], sd[p + "token_mixer.dwconv_hw.bias"], padding=1, groups=c
    )
    y = x.mean(3, keepdim=True) + x.mean(2, keepdim=True)
    t = F.conv2d(
        y,
        sd[p + "token_mixer.excite.0.weight"],
        sd[p + "token_mixer.excite.0.bias"],
        padding=(0, k // 2),
        groups=c,
    )
    t = F.relu(_bn(t, sd, p + "token_mixer.excite.1."))
    t = F.conv2d(
        t,
        sd[p + "token_mixer.excite.3.weight"],
        sd[p + "token_mixer.excite.3.bias"],
        padding=(k // 2, 0),
        groups=c,
    )
    t = _bn(torch.sigmoid(t) * loc, sd, p + "norm.")
    t = F.conv2d(
        F.gelu(F.conv2d(t, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
        sd[p + "mlp.fc2.weight"],
        sd[p + "mlp.fc2.bias"],
    )
    return x + t * sd[p + "gamma"].view(1, -1, 1, 1)


def official_head_ref(feats, sd, widths, C, depth, neck, dw):
    """The released head's forward (eval mode) on the stride 8/16/32 maps, from official keys."""
    up = lambda t, ref: F.interpolate(t, size=ref.shape[-2:], mode="bilinear", align_corners=False)  # noqa: E731
    h, w = feats[-1].shape[-2:]
    p = torch.cat([F.adaptive_avg_pool2d(f, ((h - 1) // 2 + 1, (w - 1) // 2 + 1)) for f in feats], 1)
    for j in range(depth):
        p = _rcm_ref(p, sd, f"trans.transformer_blocks.{j}.", neck)
    g = p.split(widths, 1)
    r = None
    for i in reversed(range(len(widths))):
        x = (
            feats[i]
            if r is None
            else feats[i] + F.conv2d(up(r, feats[i]), sd[f"conv.{i}.weight"], sd[f"conv.{i}.bias"])
        )
        x = _rcm_ref(x, sd, f"meta.{i}.", dw)
        a = _bn(F.conv2d(x, sd[f"SIM.{i}.fuse1.conv.weight"]), sd, f"SIM.{i}.fuse1.bn.")
        s = F.relu6(_bn(F.conv2d(g[i], sd[f"SIM.{i}.fuse2.conv.weight"]), sd, f"SIM.{i}.fuse2.bn.") + 3) / 6
        r = a * up(s, x)
    x = r
    cls = lambda t: F.conv2d(t, sd["conv_seg.weight"], sd["conv_seg.bias"])  # noqa: E731
    coarse = cls(F.relu(_bn(F.conv2d(x, sd["linear_fuse.conv.weight"], groups=C), sd, "linear_fuse.bn.")))
    protos = coarse.flatten(2).softmax(2) @ x.flatten(2).transpose(1, 2)  # N×K×C
    att = (protos @ sd["lgc.conv_mask.weight"].view(-1, 1) + sd["lgc.conv_mask.bias"]).softmax(1)  # N×K×1
    z = (att * protos).sum(1)[:, :, None, None]
    z = F.conv2d(z, sd["lgc.channel_mul_conv.0.weight"], sd["lgc.channel_mul_conv.0.bias"])
    z = F.relu(
        F.layer_norm(z, [C, 1, 1], sd["lgc.channel_mul_conv.1.weight"], sd["lgc.channel_mul_conv.1.bias"])
    )
    s = torch.sigmoid(F.conv2d(z, sd["lgc.channel_mul_conv.3.weight"], sd["lgc.channel_mul_conv.3.bias"]))
    return cls(x * s + x)


def make_mmseg_file(path, num_classes=150, seed=0):
    """An official-layout CGRSeg-T file with random values; returns its state dict."""
    g = torch.Generator().manual_seed(seed)
    backbone = _randomized_state(create_model("efficientformerv2_s1"), seed)
    for k in list(backbone):  # the release's dead classification-table buffers are in every file
        if k.endswith("attention_biases_seg"):
            base = k[: -len("attention_biases_seg")]
            backbone[base + "attention_biases"] = torch.zeros(backbone[k].shape[0], 49)
            backbone[base + "attention_bias_idxs"] = torch.ones(49, 49, dtype=torch.long)
    assert all(k.startswith(("patch_embed.", "network.")) for k in backbone)
    state = {"backbone." + k: v for k, v in backbone.items()}
    for k, shape in official_head_shapes(num_classes, **T_CFG).items():
        v = (
            torch.rand(shape, generator=g) + 0.5
            if k.endswith("running_var")
            else torch.randn(shape, generator=g) * 0.1
        )
        state["decode_head." + k] = v
        if k.endswith("running_var"):
            state["decode_head." + k[: -len("running_var")] + "num_batches_tracked"] = torch.tensor(100)
    torch.save({"state_dict": state, "meta": {"mmseg_version": "0.27.0"}}, path)
    return state


# ---- round trips -------------------------------------------------------------------------------
def test_lightseg_safetensors_round_trip(tmp_path):
    m = create_model("cgrseg_t", num_classes=11)
    m.load_state_dict(_randomized_state(m, 1))
    path = save_weights(m, tmp_path / "w.safetensors", classes=[f"c{i}" for i in range(11)])
    m2 = load_checkpoint(path)
    assert m2.num_classes == 11 and m2.meta.classes[3] == "c3"
    assert m2.meta == m.meta  # save_weights(classes=...) updated the source model's meta too
    with torch.no_grad():
        torch.testing.assert_close(m2.eval()(X), m.eval()(X), rtol=0, atol=0)


def test_mmseg_round_trip_matches_reference(tmp_path):
    path = tmp_path / "cgrseg-t_ade20k.pth"
    state = make_mmseg_file(path)
    m = create_model("cgrseg_t", weights=str(path)).eval()
    own = m.state_dict()
    for k, v in state.items():
        if k.startswith("backbone.") and not k.endswith(("attention_biases", "attention_bias_idxs")):
            assert torch.equal(own[k], v), k
    head_sd = {k[len("decode_head.") :]: v for k, v in state.items() if k.startswith("decode_head.")}
    with torch.no_grad():
        feats = m.backbone(X)
        ref = official_head_ref(feats[1:], head_sd, **T_CFG)
        torch.testing.assert_close(m(X), ref, rtol=1e-4, atol=1e-5)
    assert ref.shape == (1, 150, 8, 8)


def test_imagenet_backbone_into_cgrseg(tmp_path):
    backbone = _randomized_state(create_model("efficientformerv2_s1"), 2)
    src = {
        k: v
        for k, v in backbone.items()
        if not k.endswith(("attention_biases_seg", "attention_bias_idxs_seg"))
    }
    for k in [k for k in backbone if k.endswith("attention_biases_seg")]:
        base = k[: -len("attention_biases_seg")]
        src[base + "attention_biases"] = torch.randn(backbone[k].shape[0], 49)
        src[base + "attention_bias_idxs"] = torch.zeros(49, 49, dtype=torch.long)
    src |= {
        "norm.weight": torch.ones(224),
        "norm.bias": torch.zeros(224),
        "head.weight": torch.randn(1000, 224),
    }
    src |= {
        "head.bias": torch.zeros(1000),
        "dist_head.weight": torch.randn(1000, 224),
        "dist_head.bias": torch.zeros(1000),
    }
    path = tmp_path / "eformer_s1_450.pth"
    torch.save({"model": src}, path)
    torch.manual_seed(5)
    ref = create_model("cgrseg_t")
    torch.manual_seed(5)
    m = create_model("cgrseg_t", weights=str(path))
    own = m.state_dict()
    for k, v in backbone.items():
        expected = torch.zeros_like(v) if k.endswith("attention_biases_seg") else v
        assert torch.equal(own["backbone." + k], expected), k
    for k, v in ref.head.state_dict().items():  # the head is left as built
        assert torch.equal(own["head." + k], v), k


def test_file_url(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("LIGHTSEG_CACHE", raising=False)
    path = tmp_path / "mm.pth"
    make_mmseg_file(path, seed=3)
    m = create_model("cgrseg_t", weights=path.as_uri())
    assert len(list((tmp_path / "torch_home" / "hub" / "lightseg").glob("*/mm.pth"))) == 1
    assert torch.equal(
        m.state_dict()["head.classifier.conv.bias"],
        torch.load(path)["state_dict"]["decode_head.conv_seg.bias"],
    )


# ---- errors ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mmseg_state(tmp_path_factory):
    return make_mmseg_file(tmp_path_factory.mktemp("mm") / "src.pth", seed=4)


def _save(tmp_path, state):
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": state, "meta": {}}, path)
    return str(path)


def test_wrong_number_of_classes(tmp_path, mmseg_state):
    with pytest.raises(
        CheckpointError, match=r"mis-shaped.*head\.classifier\.conv\.weight \(checkpoint \(150, 128"
    ):
        create_model("cgrseg_t", num_classes=19, weights=_save(tmp_path, mmseg_state))


def test_missing_and_unexpected_keys(tmp_path, mmseg_state):
    state = dict(mmseg_state)
    del state["decode_head.lgc.conv_mask.weight"]
    state["backbone.network.9.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as e:
        create_model("cgrseg_t", weights=_save(tmp_path, state))
    assert "missing keys (1): head.dpg.prototype_score.weight" in str(e.value)
    assert "unexpected keys (1): backbone.network.9.weight" in str(e.value)
    state = dict(mmseg_state) | {"decode_head.aux.conv.weight": torch.zeros(1), "neck.x": torch.zeros(1)}
    with pytest.raises(
        CheckpointError, match=r"2 key\(s\) .* map to nothing: decode_head\.aux\.conv\.weight, neck\.x"
    ):
        create_model("cgrseg_t", weights=_save(tmp_path, state))


def test_corrupt_files(tmp_path):
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"\x80\x02 this is not a checkpoint")
    with pytest.raises(CheckpointError, match=r"corrupt\.pth: not a readable checkpoint"):
        create_model("cgrseg_t", weights=str(bad))
    m = create_model("cgrseg_t", num_classes=2)
    good = save_weights(m, tmp_path / "w.safetensors")
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"trunc\.safetensors: not a readable safetensors file"):
        load_checkpoint(trunc)
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pth"):
        create_model("cgrseg_t", weights=str(tmp_path / "nowhere.pth"))


def test_unknown_layout(tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({"weights": {"a": 1}, "epoch": 3}, path)
    with pytest.raises(CheckpointError, match=r"unrecognised checkpoint layout .*mmseg-cgrseg"):
        create_model("cgrseg_t", weights=str(path))


def test_unknown_model_name():
    with pytest.raises(KeyError, match=r"unknown model 'cgrseg_s'.*Did you mean: .*cgrseg_t"):
        create_model("cgrseg_s")
