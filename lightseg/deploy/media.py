"""Images and videos in and out: finding inputs, reading images and frames, writing videos.

The file types lightseg reads: :data:`IMAGE_SUFFIXES` (the datasets' list) and :data:`VIDEO_SUFFIXES`; every
unreadable file fails with an :class:`~lightseg.errors.InputError` naming it.
"""

from __future__ import annotations

import contextlib
import glob
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lightseg.data.base import IMAGE_SUFFIXES  # the one list, shared with the datasets
from lightseg.data.base import read_image as read_dataset_image
from lightseg.errors import DataError, InputError, InputNotFoundError, StorageError
from lightseg.storage import storage_error

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
ImageLike = np.ndarray | Image.Image | torch.Tensor


@dataclass
class InputItem:
    path: Path
    rel: Path  # output name stem, relative to the output folder
    kind: str  # "image" or "video"


def input_kind(path: Path) -> str | None:
    """``"image"``, ``"video"`` or ``None`` (unsupported), from the file suffix."""
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
            found = [f for f in files if input_kind(f)]
            if not found:
                raise InputError(
                    f"{p}: no images or videos found (looked for {' '.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)})"
                )
            skipped += [f for f in files if not input_kind(f)]
            items += [InputItem(f, f.relative_to(p).with_suffix(""), input_kind(f)) for f in found]  # type: ignore[arg-type]
        elif p.is_file():
            kind = input_kind(p)
            if kind is None:
                raise _unsupported(p)
            items.append(InputItem(p, Path(p.stem), kind))
        elif glob.has_magic(str(raw)):
            found = sorted(Path(f) for f in glob.glob(str(p), recursive=True) if input_kind(Path(f)))
            if not found:
                raise InputError(f"{raw}: the pattern matches no images or videos")
            items += [InputItem(f, Path(f.stem), input_kind(f)) for f in found]  # type: ignore[arg-type]
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


def image_files(inputs: Sequence[str | os.PathLike], what: str = "images") -> list[Path]:
    """The image files among ``inputs`` (files, folders, globs); fails naming the inputs when
    there are none (videos do not count)."""
    try:
        items = collect_inputs(inputs)[0]
    except InputError as e:
        raise InputError(f"{what}: {e}") from e
    files = [it.path for it in items if it.kind == "image"]
    if not files:
        raise InputError(
            f"{what}: no images among {' '.join(map(str, inputs))} (looked for {' '.join(IMAGE_SUFFIXES)})"
        )
    return files


def read_image(path: Path) -> np.ndarray:
    """H x W x 3 uint8 RGB, turned by its EXIF orientation, as the datasets read images; a corrupt
    or unreadable file fails naming it."""
    try:
        return read_dataset_image(Path(path))
    except DataError as e:
        cause = e.__cause__ or e
        raise InputError(f"{path}: cannot read image ({type(cause).__name__}: {cause})") from e


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


# --------------------------------------------------------------------------------------------------
# Videos (the ``video`` extra: PyAV)
# --------------------------------------------------------------------------------------------------
def _av(path: Path):
    try:
        import av
    except ImportError as e:
        raise InputError(f"{path}: reading videos needs PyAV: pip install 'lightseg[video]'") from e
    return av


class VideoReader:
    """Iterate over a video's frames (H x W x 3 uint8 RGB). ``rate``: frames per second;
    ``expected``: the frame count the container states (``None`` when it states none); else
    ``estimated`` from its duration.

    A file that cannot be opened, a decoding error, or fewer frames than the container states
    (a truncated file) raise :class:`InputError` naming the file and how many frames were decoded.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        av = _av(self.path)
        try:
            self._src = av.open(str(self.path))
            self._stream = self._src.streams.video[0]
        except Exception as e:
            raise InputError(f"{self.path}: cannot open video ({type(e).__name__}: {e})") from e
        self.rate = self._stream.average_rate or 25
        self.expected = int(self._stream.frames or 0) or None
        # Containers without a frame count (Matroska, WebM) still state their duration.
        duration = self._src.duration / 1e6 if self._src.duration else None
        self.estimated = round(duration * float(self.rate)) if duration and not self.expected else None
        self.decoded = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        try:
            for frame in self._src.decode(self._stream):
                self.decoded += 1
                yield frame.to_ndarray(format="rgb24")
        except Exception as e:  # PyAV raises its own error types for damaged data
            raise InputError(
                f"{self.path}: video damaged after {self.decoded} decoded frame(s) ({type(e).__name__}: {e})"
            ) from e
        finally:
            self._src.close()
        if self.decoded == 0:
            raise InputError(f"{self.path}: the video has no decodable frames")
        if self.expected and self.decoded < self.expected:
            raise InputError(
                f"{self.path}: truncated or damaged video: decoded {self.decoded} of the "
                f"{self.expected} frames its header states"
            )
        # The duration gives only an estimate (variable frame rates): allow a few frames off.
        if self.estimated and self.decoded < self.estimated - max(2, self.estimated // 50):
            raise InputError(
                f"{self.path}: truncated or damaged video: decoded {self.decoded} frames, its stated "
                f"duration holds about {self.estimated}"
            )


def _even(frame: np.ndarray) -> np.ndarray:
    """Pad an H x W x 3 frame by one edge pixel where a side is odd (yuv420p needs even sides)."""
    h, w = frame.shape[:2]
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


class VideoWriter:
    """An H.264 (or MPEG-4 Part 2 without libx264) ``.mp4`` written frame by frame; odd sides are
    padded by one pixel. Use as a context manager: closing flushes the encoder. A write that fails
    (a full, read-only or vanished disk) removes the file and raises one
    :class:`~lightseg.errors.StorageError` naming it."""

    def __init__(self, path: Path, rate):
        self.path = Path(path)
        self._av = _av(self.path)
        self._rate = rate
        self._stream = None
        self._closed = True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._sink = self._av.open(str(self.path), mode="w")
        except OSError as e:
            raise self._failed(e) from e
        self._closed = False

    def write(self, rgb: np.ndarray) -> None:
        frame = _even(np.asarray(rgb, dtype=np.uint8))
        try:
            if self._stream is None:
                codec = "libx264" if "libx264" in self._av.codecs_available else "mpeg4"
                self._stream = self._sink.add_stream(codec, rate=self._rate)
                self._stream.height, self._stream.width = frame.shape[:2]
                self._stream.pix_fmt = "yuv420p"
            for packet in self._stream.encode(self._av.VideoFrame.from_ndarray(frame, format="rgb24")):
                self._sink.mux(packet)
        except OSError as e:
            raise self._failed(e) from e

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            try:
                if self._stream is not None:
                    for packet in self._stream.encode():
                        self._sink.mux(packet)
            finally:
                self._sink.close()
        except OSError as e:
            raise self._failed(e) from e

    def _failed(self, e: OSError) -> StorageError:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                self._sink.close()
        with contextlib.suppress(OSError):
            self.path.unlink()
        return storage_error(e, self.path, "video", "run predict again")  # an OSError: never None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
