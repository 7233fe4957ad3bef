"""Segment images and videos: the :class:`Segmenter` API and the ``lightseg predict`` logic.

Full-resolution labels are defined as ``argmax_k`` of the logits bilinearly upsampled
(align_corners=False) from the model's output stride to the padded input size, then cropped to the
image — exactly what :func:`lightseg.engine.inference.forward_whole` computes. On the fast path
(whole image, one scale, no flip) :func:`upsample_argmax` gets the same labels without building the
K x H x W upsampled logits (see there). Multi-scale, flip and sliding-window inference go through
:func:`lightseg.engine.inference.predict_probs` (softmax averaged over passes).
"""

from __future__ import annotations

import contextlib
import glob
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from lightseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from lightseg.engine.inference import pad_to_multiple, predict_probs
from lightseg.errors import ConfigError, InputError, InputNotFoundError
from lightseg.visualize import colorize, default_palette, overlay

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
RUNTIMES = ("torch", "onnxruntime")
ImageLike = np.ndarray | Image.Image | torch.Tensor


# --------------------------------------------------------------------------------------------------
# Full-resolution argmax without the full-resolution logits
# --------------------------------------------------------------------------------------------------
def _bilinear_taps(out_len: int, in_len: int, keep: int, device: torch.device):
    """Source indices (i0, i1) and weight of i1 for the first ``keep`` of ``out_len`` outputs,
    as ``F.interpolate(mode="bilinear", align_corners=False, size=...)`` computes them."""
    scale = in_len / out_len
    src = ((torch.arange(keep, device=device, dtype=torch.float32) + 0.5) * scale - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=in_len - 1)
    i1 = (i0 + 1).clamp(max=in_len - 1)
    return i0, i1, src - i0


def _argmax0(v: torch.Tensor) -> torch.Tensor:
    """``v.argmax(0)`` for K x M (first index on ties, like ``argmax``), as a running maximum over
    the K rows: each step is one contiguous, vectorised pass, while ``argmax`` over a short
    (K ~ 10..150) reduced dimension is 3-5x slower on CPU."""
    best = v[0].clone()
    idx = torch.zeros(v.shape[1:], dtype=torch.long, device=v.device)
    for k in range(1, v.shape[0]):
        better = v[k] > best
        idx.masked_fill_(better, k)
        torch.maximum(best, v[k], out=best)
    return idx


def _cell_argmax(logits: torch.Tensor, low: torch.Tensor, s: int, chunk: int) -> torch.Tensor:
    """Exact labels for an even integer factor ``s``: N x K x h x w -> N x sh x sw.

    ``low`` = ``logits.argmax(1)``. With align_corners=False, output row ``s*i + s/2 + a``
    (a = 0..s-1) lies between source rows i and i+1 with weight ``(a + 0.5) / s``; the border rows
    clamp to the edge, which is the same as interpolating a replicate-padded map. So the output is
    a grid of (h+1) x (w+1) cells of s x s pixels sharing four corners and one weight pattern,
    shifted by s/2.
    """
    n, k, h, w = logits.shape
    ys = torch.arange(-1, h + 1, device=logits.device).clamp(0, h - 1)  # replicate padding
    xs = torch.arange(-1, w + 1, device=logits.device).clamp(0, w - 1)
    lowp = low[:, ys][:, :, xs]  # N x (h+2) x (w+2)
    a, b, c, d = lowp[:, :-1, :-1], lowp[:, :-1, 1:], lowp[:, 1:, :-1], lowp[:, 1:, 1:]
    grid = a[:, :, None, :, None].expand(n, h + 1, s, w + 1, s).clone()
    ns, ps, qs = torch.nonzero((a != b) | (a != c) | (a != d), as_tuple=True)
    if len(ns) == 0:
        return grid.reshape(n, (h + 1) * s, (w + 1) * s)[:, s // 2 : s // 2 + h * s, s // 2 : s // 2 + w * s]
    lam = (torch.arange(s, dtype=logits.dtype, device=logits.device) + 0.5) / s
    wy, wx = (1 - lam, lam), (1 - lam, lam)
    # Corner order (top-left, top-right, bottom-left, bottom-right) -> 4 x s*s bilinear weights.
    weights = torch.stack([(wy[i][:, None] * wx[j][None, :]).reshape(-1) for i in (0, 1) for j in (0, 1)])
    flat = logits.permute(1, 0, 2, 3).reshape(k, n * h * w)  # class-major: gathers stay contiguous
    for st in range(0, len(ns), chunk):
        n_, p, q = ns[st : st + chunk], ps[st : st + chunk], qs[st : st + chunk]
        y0, y1, x0, x1 = ys[p], ys[p + 1], xs[q], xs[q + 1]
        base = n_ * (h * w)
        corners = torch.stack(
            [
                flat[:, base + y0 * w + x0],
                flat[:, base + y0 * w + x1],
                flat[:, base + y1 * w + x0],
                flat[:, base + y1 * w + x1],
            ],
            2,
        )  # K x cells x 4
        grid[n_, p, :, q, :] = _argmax0(corners @ weights).view(-1, s, s)  # K x cells x s*s -> labels
    half = s // 2
    return grid.reshape(n, (h + 1) * s, (w + 1) * s)[:, half : half + h * s, half : half + w * s]


def _pixel_argmax(
    logits: torch.Tensor, big: tuple[int, int], keep: tuple[int, int], chunk: int
) -> torch.Tensor:
    """Exact labels for any size: interpolate only pixels whose four sources disagree."""
    n, k, h, w = logits.shape
    y0, y1, ly = _bilinear_taps(big[0], h, keep[0], logits.device)
    x0, x1, lx = _bilinear_taps(big[1], w, keep[1], logits.device)
    low = logits.argmax(1)
    a, b = low[:, y0][:, :, x0], low[:, y0][:, :, x1]
    c, d = low[:, y1][:, :, x0], low[:, y1][:, :, x1]
    out = a.clone()
    ns, ys, xs = torch.nonzero((a != b) | (a != c) | (a != d), as_tuple=True)
    flat = logits.permute(0, 2, 3, 1).reshape(n * h * w, k)  # (pixel, class) rows
    for s in range(0, len(ns), chunk):
        n_, yy, xx = ns[s : s + chunk], ys[s : s + chunk], xs[s : s + chunk]
        base = n_ * (h * w)
        r0, r1, c0, c1 = y0[yy] * w, y1[yy] * w, x0[xx], x1[xx]
        wy, wx = ly[yy, None], lx[xx, None]
        top = (1 - wx) * flat[base + r0 + c0] + wx * flat[base + r0 + c1]
        bottom = (1 - wx) * flat[base + r1 + c0] + wx * flat[base + r1 + c1]
        out[n_, yy, xx] = ((1 - wy) * top + wy * bottom).argmax(1)
    return out


# Above this share of vertically adjacent low-resolution pixels with different labels, the
# boundary-only computation costs more than upsampling everything.
MAX_BOUNDARY_FRACTION = 0.25


def upsample_argmax(
    logits: torch.Tensor, size: Sequence[int], crop: Sequence[int] | None = None, chunk: int = 512
) -> torch.Tensor:
    """``argmax(bilinear(logits -> size), dim=1)[..., :crop_h, :crop_w]`` as N x h x w int64 labels.

    Why it is cheap: every upsampled pixel is a convex combination of the logit vectors of its
    (at most) four source pixels, so when those four agree on their argmax c, c is also the
    argmax of the combination. Only where they disagree (near label boundaries) are all K
    classes interpolated — for the usual even integer factor (stride 8) one s x s cell at a time
    as a small matrix product (:func:`_cell_argmax`), otherwise pixel by pixel. Equal to the
    direct computation up to float rounding (near-ties may flip).

    The boundary pass runs on one torch thread: its small ops gain nothing from a second thread
    (CGRSeg-T, CamVid, 512x512: 1.5 ms on one thread, 1.6-2.6 ms on two), and between ONNX Runtime
    runs two torch threads and ONNX Runtime's spinning workers slow each other down.

    Args:
        logits: N x K x h x w (any stride).
        size: (H, W) of the bilinear upsampling (the padded input size).
        crop: (h', w') <= size to keep (the image size before padding); default ``size``.
    """
    h, w = logits.shape[-2:]
    big = (int(size[0]), int(size[1]))
    keep = big if crop is None else (int(crop[0]), int(crop[1]))
    s = big[0] // h
    with _one_torch_thread():
        low = logits.permute(0, 2, 3, 1).contiguous().argmax(-1)  # argmax over dim 1: 5x slower
        if (low[:, 1:] != low[:, :-1]).float().mean() <= MAX_BOUNDARY_FRACTION:
            if s >= 2 and s % 2 == 0 and big == (s * h, s * w):
                return _cell_argmax(logits, low, s, chunk)[:, : keep[0], : keep[1]]
            return _pixel_argmax(logits, big, keep, chunk * 64)
    # Label changes almost everywhere (e.g. an untrained model): the direct way is faster.
    up = F.interpolate(logits, size=big, mode="bilinear", align_corners=False)
    return up[:, :, : keep[0], : keep[1]].argmax(1)


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------------
# Models and runtimes
# --------------------------------------------------------------------------------------------------
def load_model(
    name: str | None, weights: str | os.PathLike | None, num_classes: int | None = None
) -> nn.Module:
    """A segmentor for prediction.

    - ``weights`` is a lightseg checkpoint and ``num_classes`` is not given: rebuilt from the file
      (its metadata names the model; ``name``, if given, must agree);
    - otherwise ``create_model(name, num_classes=num_classes or 150, weights=weights)``, loaded
      strictly: weights for another number of classes fail naming the file and the keys.
    """
    from lightseg.checkpoint import CheckpointError, load_checkpoint
    from lightseg.models.registry import create_model

    if weights is not None and num_classes is None:
        try:
            model = load_checkpoint(weights)
        except CheckpointError:
            model = None  # a foreign layout: needs the name (and class count) from the caller
        if model is not None:
            saved = getattr(model, "model_name", None)
            if name and saved and saved != name:
                raise CheckpointError(f"{weights}: holds weights of {saved!r}, not {name!r}")
            return model.eval()
    if not name:
        raise ConfigError("a model name is needed unless the weights are a lightseg checkpoint")
    model = create_model(
        name, num_classes=num_classes or 150, weights=None if weights is None else str(weights)
    )
    return model.eval()


class OrtModel:
    """An ONNX Runtime stand-in for a segmentor in the inference helpers: ``model(x)`` returns
    stride-s logits like the eager model. Static shapes: each new padded input size is exported
    once (dynamic batch, BN folded, attention biases fixed) into ``cache_dir``."""

    def __init__(
        self, model: nn.Module, threads: int | None = None, cache_dir: str | os.PathLike | None = None
    ):
        self.model = model
        self.size_divisor = int(getattr(model, "size_divisor", 32))
        self.num_classes = int(model.num_classes)
        self.threads = threads
        self._tmp = None if cache_dir else tempfile.TemporaryDirectory(prefix="lightseg-onnx-")
        self.cache_dir = Path(cache_dir or self._tmp.name)
        self._runners: dict[tuple[int, int], Any] = {}

    def runner(self, h: int, w: int):
        from lightseg.engine.export import OrtRunner, export_onnx

        if (h, w) not in self._runners:
            name = getattr(self.model, "model_name", type(self.model).__name__)
            path = self.cache_dir / f"{name}_{h}x{w}.onnx"
            if not path.exists():
                export_onnx(self.model, path, (h, w), dynamic_batch=True)
            self._runners[(h, w)] = OrtRunner(path, threads=self.threads)
        return self._runners[(h, w)]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return torch.from_numpy(self.runner(int(h), int(w))(x))


def prepare_runtime(
    model: nn.Module, runtime: str = "torch", optimize: str = "none", threads: int | None = None
) -> Any:
    """The callable that runs ``model``: eager (``optimize`` none / fold-bn / compile) or ORT."""
    from lightseg.fuse import optimize_for_inference

    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
    if runtime == "onnxruntime":
        return OrtModel(model.eval(), threads=threads)
    return optimize_for_inference(model, optimize)


# --------------------------------------------------------------------------------------------------
# The Segmenter
# --------------------------------------------------------------------------------------------------
def to_rgb_array(image: ImageLike) -> np.ndarray:
    """numpy H x W x 3 / PIL / torch 3 x H x W (RGB, 0..255) -> H x W x 3 float32."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise InputError(f"expected a 3 x H x W image tensor, got shape {tuple(image.shape)}")
        return image.detach().permute(1, 2, 0).cpu().float().numpy()
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise InputError(f"expected an H x W x 3 RGB array, got shape {arr.shape}")
    return arr.astype(np.float32)


class Segmenter:
    """Label maps for images, from a model or a checkpoint.

    ``Segmenter(model)`` or ``Segmenter("cgrseg_t", weights="w.safetensors")``; then
    ``seg(image) -> H x W int64 labels`` or ``seg([img1, img2, ...]) -> list`` (same-size images
    are batched ``batch_size`` at a time). Images are RGB in 0..255: numpy H x W x 3, PIL, or
    torch 3 x H x W; any size (padded to the model's multiple, cropped back).
    ``predict_probs`` returns K x H x W class probabilities.
    """

    def __init__(
        self,
        model: nn.Module | str,
        *,
        weights: str | os.PathLike | None = None,
        num_classes: int | None = None,
        runtime: str = "torch",
        optimize: str = "none",
        threads: int | None = None,
        mode: str = "whole",
        crop_size: Sequence[int] = (512, 512),
        stride: Sequence[int] = (341, 341),
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
        batch_size: int = 1,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        classes: Sequence[str] | None = None,
        palette: Sequence[Sequence[int]] | None = None,
    ):
        if isinstance(model, (str, os.PathLike)):
            model = load_model(str(model), weights, num_classes)
        elif weights is not None:
            from lightseg.checkpoint import load_weights

            load_weights(model, weights)
        self.model = model.eval()
        self.num_classes = int(model.num_classes)
        self.classes = list(classes or getattr(model, "class_names", None) or [])
        self.palette = [
            list(c) for c in (palette or getattr(model, "palette", None) or default_palette(self.num_classes))
        ]
        if len(self.palette) < self.num_classes:
            raise ConfigError(f"palette has {len(self.palette)} colours for {self.num_classes} classes")
        self.runner = prepare_runtime(self.model, runtime, optimize, threads)
        self.options = dict(
            mode=mode, crop_size=tuple(crop_size), stride=tuple(stride), scales=tuple(scales), flip=flip
        )
        self.batch_size = max(1, int(batch_size))
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    @property
    def fast_path(self) -> bool:
        """Whole image, one scale 1.0, no flip: labels via :func:`upsample_argmax`."""
        o = self.options
        return o["mode"] == "whole" and o["scales"] == (1.0,) and not o["flip"]

    def _batch(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        return (x - self.mean) / self.std

    @torch.no_grad()
    def _labels(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if self.fast_path:
            xp = pad_to_multiple(x, int(getattr(self.runner, "size_divisor", self.model.size_divisor)))
            return upsample_argmax(self.runner(xp).float(), xp.shape[-2:], crop=(h, w))
        return predict_probs(self.runner, x, (h, w), **self.options).argmax(1)

    def _groups(self, arrays: list[np.ndarray]) -> Iterator[list[int]]:
        """Indices of same-size images, at most ``batch_size`` per group, in input order."""
        group: list[int] = []
        for i, a in enumerate(arrays):
            if group and (len(group) == self.batch_size or arrays[group[0]].shape != a.shape):
                yield group
                group = []
            group.append(i)
        if group:
            yield group

    def __call__(self, images: ImageLike | Sequence[ImageLike]) -> np.ndarray | list[np.ndarray]:
        """H x W int64 labels for one image, or a list of them for a list of images."""
        single = not isinstance(images, (list, tuple))
        arrays = [to_rgb_array(im) for im in ([images] if single else images)]
        out: list[np.ndarray] = [None] * len(arrays)  # type: ignore[list-item]
        for group in self._groups(arrays):
            labels = self._labels(self._batch([arrays[i] for i in group])).cpu().numpy()
            for i, lab in zip(group, labels):
                out[i] = lab
        return out[0] if single else out

    @torch.no_grad()
    def predict_probs(self, image: ImageLike) -> np.ndarray:
        """K x H x W float32 class probabilities (softmax, averaged over TTA passes)."""
        x = self._batch([to_rgb_array(image)])
        return predict_probs(self.runner, x, None, **self.options)[0].cpu().numpy()


# --------------------------------------------------------------------------------------------------
# Files: collection, reading, writing
# --------------------------------------------------------------------------------------------------
@dataclass
class InputItem:
    path: Path
    rel: Path  # output name stem, relative to the output folder
    kind: str  # "image" or "video"


@dataclass
class PredictReport:
    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)  # unsupported files met inside folders

    @property
    def ok(self) -> bool:
        return not self.failed


def _kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    return None


def _unsupported(path: Path) -> InputError:
    return InputError(
        f"{path}: unsupported file type {path.suffix or '(no suffix)'!r}; images: {' '.join(IMAGE_SUFFIXES)}; "
        f"videos: {' '.join(VIDEO_SUFFIXES)}"
    )


def collect_inputs(inputs: Sequence[str | os.PathLike]) -> tuple[list[InputItem], list[Path]]:
    """Expand files, folders (recursively) and globs into items; returns (items, skipped).

    Fails naming the path for a missing path, a glob or folder without images/videos, or a named
    file of an unsupported type; unsupported files inside folders are returned as ``skipped``.
    """
    items: list[InputItem] = []
    skipped: list[Path] = []
    for raw in inputs:
        p = Path(raw).expanduser()
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file())
            found = [f for f in files if _kind(f)]
            if not found:
                raise InputError(
                    f"{p}: no images or videos found (looked for {' '.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)})"
                )
            skipped += [f for f in files if not _kind(f)]
            items += [InputItem(f, f.relative_to(p).with_suffix(""), _kind(f)) for f in found]  # type: ignore[arg-type]
        elif p.is_file():
            kind = _kind(p)
            if kind is None:
                raise _unsupported(p)
            items.append(InputItem(p, Path(p.stem), kind))
        elif glob.has_magic(str(raw)):
            found = sorted(Path(f) for f in glob.glob(str(p), recursive=True) if _kind(Path(f)))
            if not found:
                raise InputError(f"{raw}: the pattern matches no images or videos")
            items += [InputItem(f, Path(f.stem), _kind(f)) for f in found]  # type: ignore[arg-type]
        else:
            raise InputNotFoundError(f"input not found: {p}")
    # Distinct output names: a later duplicate gets _1, _2, ...
    seen: set[Path] = set()
    for it in items:
        base, n = it.rel, 0
        while it.rel in seen:
            n += 1
            it.rel = base.with_name(f"{base.name}_{n}")
        seen.add(it.rel)
    return items, skipped


def read_image(path: Path) -> Image.Image:
    """An RGB PIL image; a corrupt or unreadable file fails naming it."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except Exception as e:  # PIL raises many types for broken files
        raise InputError(f"{path}: cannot read image ({type(e).__name__}: {e})") from e


def _write_image_outputs(
    seg: Segmenter,
    image: Image.Image,
    labels: np.ndarray,
    out_stem: Path,
    probs: np.ndarray | None,
    alpha: float,
) -> list[Path]:
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    label_path = out_stem.with_name(out_stem.name + ".png")
    overlay_path = out_stem.with_name(out_stem.name + "_overlay.jpg")
    colorize(labels, seg.palette).save(label_path)
    overlay(image, labels, seg.palette, alpha).save(overlay_path, quality=92)
    written = [label_path, overlay_path]
    if probs is not None:
        prob_path = out_stem.with_name(out_stem.name + "_probs.npy")
        np.save(prob_path, probs.astype(np.float16))
        written.append(prob_path)
    return written


def predict_image(
    seg: Segmenter, path: Path, out_stem: Path, save_probs: bool = False, alpha: float = 0.5
) -> list[Path]:
    """Label PNG ``<stem>.png`` (palette image), overlay ``<stem>_overlay.jpg`` and optionally
    ``<stem>_probs.npy`` (K x H x W float16)."""
    image = read_image(path)
    if save_probs:
        probs = seg.predict_probs(image)
        labels = probs.argmax(0)
    else:
        probs, labels = None, seg(image)
    return _write_image_outputs(seg, image, labels, out_stem, probs, alpha)


def _even(frame: np.ndarray) -> np.ndarray:
    """Pad an H x W x 3 frame by one edge pixel where a side is odd (yuv420p needs even sides)."""
    h, w = frame.shape[:2]
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def predict_video(
    seg: Segmenter, path: Path, out_stem: Path, alpha: float = 0.5, progress: bool = True
) -> list[Path]:
    """Overlay video ``<stem>_overlay.mp4`` and colour-label video ``<stem>_labels.mp4`` (H.264 or
    MPEG-4 Part 2, same frame rate; odd sides padded by one pixel). Needs the ``video`` extra (PyAV)."""
    try:
        import av
    except ImportError as e:
        raise InputError(f"{path}: reading videos needs PyAV: pip install 'lightseg[video]'") from e
    from tqdm import tqdm

    from lightseg.visualize import label_to_rgb

    out_stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [out_stem.with_name(out_stem.name + s) for s in ("_overlay.mp4", "_labels.mp4")]
    try:
        src = av.open(str(path))
    except Exception as e:
        raise InputError(f"{path}: cannot open video ({type(e).__name__}: {e})") from e
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with src:
        stream = src.streams.video[0]
        rate = stream.average_rate or 25
        sinks = [av.open(str(p), mode="w") for p in paths]
        outs = []
        try:
            bar = tqdm(total=stream.frames or None, desc=path.name, unit="frame", disable=not progress)
            for frame in src.decode(stream):
                rgb = frame.to_ndarray(format="rgb24")
                labels = seg(rgb)
                pics = [
                    np.asarray(overlay(rgb, labels, seg.palette, alpha)),
                    label_to_rgb(labels, seg.palette),
                ]
                if not outs:
                    for sink in sinks:
                        o = sink.add_stream(codec, rate=rate)
                        o.height, o.width = _even(pics[0]).shape[:2]
                        o.pix_fmt = "yuv420p"
                        outs.append(o)
                for sink, o, pic in zip(sinks, outs, pics):
                    for packet in o.encode(av.VideoFrame.from_ndarray(_even(pic), format="rgb24")):
                        sink.mux(packet)
                bar.update(1)
            bar.close()
            if not outs:
                raise InputError(f"{path}: the video has no frames")
            for sink, o in zip(sinks, outs):
                for packet in o.encode():
                    sink.mux(packet)
        except InputError:
            raise
        except Exception as e:
            raise InputError(f"{path}: cannot decode video ({type(e).__name__}: {e})") from e
        finally:
            for sink in sinks:
                sink.close()
    return paths


def predict_paths(
    seg: Segmenter,
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    save_probs: bool = False,
    alpha: float = 0.5,
    progress: bool = True,
) -> PredictReport:
    """Run ``seg`` over files / folders / globs / videos, writing into ``out_dir``.

    A file that fails (corrupt image, undecodable video) is recorded in the report and the run
    goes on; nothing is skipped silently (unsupported files met in folders are listed too).
    """
    from tqdm import tqdm

    items, skipped = collect_inputs(inputs)
    report = PredictReport(skipped=skipped)
    out_dir = Path(out_dir)
    for it in tqdm(items, desc="predict", unit="file", disable=not progress or len(items) < 2):
        try:
            if it.kind == "image":
                report.written += predict_image(seg, it.path, out_dir / it.rel, save_probs, alpha)
            else:
                report.written += predict_video(seg, it.path, out_dir / it.rel, alpha, progress)
        except InputError as e:
            report.failed.append((it.path, str(e)))
    return report


# --------------------------------------------------------------------------------------------------
# CLI verb
# --------------------------------------------------------------------------------------------------
def add_predict_args(p) -> None:
    p.add_argument("model", help="registered model name (see `lightseg models`)")
    p.add_argument("inputs", nargs="+", help="image files, folders, globs or video files")
    p.add_argument(
        "--weights", required=True, help="checkpoint file (lightseg safetensors, training or mmseg)"
    )
    p.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    p.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="classes of the weights (default: from the file, else the dataset, else 150)",
    )
    p.add_argument(
        "--dataset",
        default=None,
        help="take classes/palette (and class count) from this dataset, e.g. camvid",
    )
    p.add_argument("--mode", choices=["whole", "slide"], default="whole")
    p.add_argument("--crop-size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    p.add_argument("--stride", type=int, nargs=2, default=(341, 341), metavar=("H", "W"))
    p.add_argument("--scales", type=float, nargs="+", default=[1.0], help="multi-scale TTA ratios")
    p.add_argument("--flip", action="store_true", help="add horizontally flipped passes")
    p.add_argument("--runtime", choices=RUNTIMES, default="torch")
    p.add_argument("--optimize", choices=["none", "fold-bn", "compile"], default="fold-bn")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's default)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument(
        "--save-probs", action="store_true", help="also write <name>_probs.npy (K x H x W float16)"
    )
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    p.add_argument("--no-progress", action="store_true")


def dataset_meta(name: str) -> tuple[list[str], list[list[int]]]:
    """(classes, palette) of a dataset module ``lightseg.data.<name>``."""
    import importlib

    try:
        mod = importlib.import_module(f"lightseg.data.{name.lower()}")
    except ImportError as e:
        raise ConfigError(f"unknown dataset {name!r} (no module lightseg.data.{name.lower()})") from e
    for obj in vars(mod).values():
        if isinstance(obj, type) and hasattr(obj, "CLASSES") and hasattr(obj, "PALETTE"):
            return list(obj.CLASSES), [list(c) for c in obj.PALETTE]
    raise ConfigError(f"lightseg.data.{name.lower()} defines no dataset class with CLASSES and PALETTE")


def run_predict(args, rest: list[str]) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    classes = palette = None
    num_classes = args.num_classes
    if args.dataset:
        classes, palette = dataset_meta(args.dataset)
        num_classes = num_classes or len(classes)
    seg = Segmenter(
        args.model,
        weights=args.weights,
        num_classes=num_classes,
        runtime=args.runtime,
        optimize=args.optimize,
        threads=args.threads,
        mode=args.mode,
        crop_size=args.crop_size,
        stride=args.stride,
        scales=args.scales,
        flip=args.flip,
        batch_size=args.batch_size,
        classes=classes,
        palette=palette,
    )
    report = predict_paths(
        seg,
        args.inputs,
        args.out,
        save_probs=args.save_probs,
        alpha=args.alpha,
        progress=not args.no_progress,
    )
    print(f"wrote {len(report.written)} files to {args.out}")
    if report.skipped:
        print(f"skipped {len(report.skipped)} unsupported files: " + ", ".join(map(str, report.skipped[:10])))
    if report.failed:
        print(f"{len(report.failed)} inputs failed:", file=sys.stderr)
        for _, msg in report.failed:
            print(f"  {msg}", file=sys.stderr)
        return 1
    return 0
