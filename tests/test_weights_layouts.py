"""The layouts the weights registry points to, checked against the real model definitions.

VAN's official release (``van-imagenet``): key names, shapes and stage outputs of the official
``models/van.py`` are committed in ``fixtures/van_official.json.gz`` (extracted by
``tests/van_reference.py``).

timm's EfficientFormerV2 (the layout of ``timm/efficientformerv2_*.snap_dist_in1k``): the key names
and shapes of timm's model and the stage outputs it gives for fixed weights and input are committed
in ``fixtures/timm_efficientformerv2.json.gz`` (extracted by ``tests/timm_reference.py``); where
timm itself is importable, the comparison also runs against the live model.

The stage outputs agree exactly only with the fixed-size ``attention_biases`` tables at zero: the
layout drops them by name (they index offsets on timm's 7x7 grid at 224 px; our segmentation tables
are resized from a 512-px grid and start at zero), so both models then add no position bias.
"""

import pytest
import torch
from safetensors.torch import save_file
from timm_reference import VARIANTS, load_fixture, randomized_state, reference_input, timm_efficientformer_v2
from van_reference import VARIANTS as VAN_VARIANTS

from lightseg import CheckpointError, create_model
from lightseg.checkpoint import load_weights


@pytest.fixture(scope="module")
def timm_fixture():
    return load_fixture()


def _timm_file(tmp_path, shapes) -> str:
    path = tmp_path / "model.safetensors"  # the file name on the timm Hub repos
    save_file({k: v.contiguous() for k, v in randomized_state(shapes).items()}, str(path))
    return str(path)


def _shapes(fixture, variant):
    return {k: tuple(s) for k, s in fixture["variants"][variant]["keys"]}


# The larger variants repeat the same blocks: slow-marked to keep CI short.
@pytest.mark.parametrize(
    "variant", [v if v == "s0" else pytest.param(v, marks=pytest.mark.slow) for v in VARIANTS]
)
def test_timm_layout_loads_every_key_strictly(timm_fixture, tmp_path, variant):
    shapes = _shapes(timm_fixture, variant)
    model = create_model(f"efficientformerv2_{variant}")
    assert load_weights(model, _timm_file(tmp_path, shapes)) == "efficientformerv2-timm"
    own, src = model.state_dict(), randomized_state(shapes)
    assert torch.equal(own["patch_embed.3.weight"], src["stem.conv2.conv.weight"])
    assert torch.equal(own["network.2.0.layer_scale_2"].flatten(), src["stages.1.blocks.0.ls2.gamma"])
    assert all(not own[k].any() for k in own if k.endswith("attention_biases_seg"))  # fresh, zero


@pytest.mark.parametrize("variant", ["s0", pytest.param("l", marks=pytest.mark.slow)])
def test_timm_layout_reproduces_timms_stage_outputs(timm_fixture, tmp_path, variant):
    model = create_model(f"efficientformerv2_{variant}").eval()
    load_weights(model, _timm_file(tmp_path, _shapes(timm_fixture, variant)))
    with torch.no_grad():
        feats = model(reference_input())
    for i, (ours, ref) in enumerate(zip(feats, timm_fixture["variants"][variant]["stages"])):
        torch.testing.assert_close(
            ours[0].mean((1, 2)), torch.tensor(ref["mean"]), rtol=1e-4, atol=1e-6, msg=f"stage {i}"
        )
        torch.testing.assert_close(
            ours[0].std((1, 2)), torch.tensor(ref["std"]), rtol=1e-4, atol=1e-6, msg=f"stage {i}"
        )


@pytest.mark.slow  # imports timm (seconds) for what the fixture already pins down
def test_timm_layout_matches_the_live_timm_model(tmp_path):
    try:
        ctx = timm_efficientformer_v2()
        tm = ctx.__enter__()
    except ImportError:
        pytest.skip("timm is not installed (pip install --no-deps timm)")
    try:
        reference = tm.efficientformerv2_s1().eval()
        shapes = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
        reference.load_state_dict(randomized_state(shapes))
        with torch.no_grad():
            expected = reference.forward_intermediates(reference_input(), intermediates_only=True)
    finally:
        ctx.__exit__(None, None, None)
    model = create_model("efficientformerv2_s1").eval()
    load_weights(model, _timm_file(tmp_path, shapes))
    with torch.no_grad():
        for ours, ref in zip(model(reference_input()), expected):
            torch.testing.assert_close(ours, ref, rtol=0, atol=0)


def test_timm_layout_names_a_key_it_cannot_place(timm_fixture, tmp_path):
    shapes = _shapes(timm_fixture, "s0") | {"stages.0.blocks.0.extra.weight": (4,)}
    with pytest.raises(CheckpointError, match=r"map to nothing: stages\.0\.blocks\.0\.extra\.weight"):
        load_weights(create_model("efficientformerv2_s0"), _timm_file(tmp_path, shapes))


def test_timm_layout_of_another_variant_fails_naming_keys(timm_fixture, tmp_path):
    with pytest.raises(
        CheckpointError, match=r"(?s)efficientformerv2-timm layout.*missing keys.*mis-shaped keys"
    ):
        load_weights(create_model("efficientformerv2_s1"), _timm_file(tmp_path, _shapes(timm_fixture, "s0")))


# ---- VAN: the official release (van_*.pth.tar, also on the Hub as VAN-*-original) ----------------
@pytest.fixture(scope="module")
def van_fixture():
    from van_reference import load_fixture as load_van

    return load_van()


def _van_file(tmp_path, shapes) -> str:
    # A timm training checkpoint, as released: weights under "state_dict" next to other entries.
    path = tmp_path / "van.pth.tar"
    torch.save({"epoch": 300, "arch": "van", "state_dict": randomized_state(shapes)}, path)
    return str(path)


@pytest.mark.parametrize(
    "name",
    [v if v == "van_b0" else pytest.param(v, marks=pytest.mark.slow) for v in VAN_VARIANTS],
)
def test_van_layout_loads_every_official_key_strictly(van_fixture, tmp_path, name):
    shapes = _shapes(van_fixture, name)
    model = create_model(name)
    assert load_weights(model, _van_file(tmp_path, shapes)) == "van-imagenet"
    src = randomized_state(shapes)
    assert torch.equal(
        model.state_dict()["block1.0.mlp.dwconv.weight"], src["block1.0.mlp.dwconv.dwconv.weight"]
    )


def test_van_layout_reproduces_the_official_stage_outputs(van_fixture, tmp_path):
    from van_reference import reference_input as van_input

    model = create_model("van_b0").eval()
    load_weights(model, _van_file(tmp_path, _shapes(van_fixture, "van_b0")))
    with torch.no_grad():
        feats = model(van_input())
    for i, (ours, ref) in enumerate(zip(feats, van_fixture["variants"]["van_b0"]["stages"])):
        torch.testing.assert_close(
            ours[0].mean((1, 2)), torch.tensor(ref["mean"]), rtol=1e-4, atol=1e-6, msg=f"stage {i}"
        )
        torch.testing.assert_close(
            ours[0].std((1, 2)), torch.tensor(ref["std"]), rtol=1e-4, atol=1e-6, msg=f"stage {i}"
        )
