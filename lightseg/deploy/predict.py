"""``lightseg predict``'s work: run a :class:`~lightseg.deploy.segmenter.Segmenter` over files,
folders, globs and videos and write label PNGs, overlays and label videos."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from lightseg.deploy.media import VideoReader, VideoWriter, collect_inputs, read_image
from lightseg.deploy.segmenter import Segmenter
from lightseg.errors import InputError, StorageError
from lightseg.storage import atomic_file, storage_error
from lightseg.visualize import colorize, draw_legend, label_to_rgb, overlay

OVERLAY_FORMATS = ("jpg", "png")


@dataclass
class PredictReport:
    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)  # unsupported files met inside folders

    @property
    def ok(self) -> bool:
        return not self.failed


def overlay_with_legend(seg: Segmenter, image: Image.Image | np.ndarray, labels: np.ndarray, alpha: float):
    """The colour overlay with a legend of the classes present."""
    return draw_legend(overlay(image, labels, seg.palette, alpha), labels, seg.palette, seg.classes)


def predict_image(
    seg: Segmenter,
    path: Path,
    out_stem: Path,
    save_probs: bool = False,
    alpha: float = 0.5,
    overlay_format: str = "jpg",
) -> list[Path]:
    """Label PNG ``<stem>.png`` (palette image), overlay ``<stem>_overlay.<jpg|png>`` with a legend
    and optionally ``<stem>_probs.npy`` (K x H x W float16)."""
    image = read_image(path)
    if save_probs:
        probs = seg.predict_probs(image)
        labels = probs.argmax(0)
    else:
        probs, labels = None, seg(image)
    label_path = out_stem.with_name(out_stem.name + ".png")
    overlay_path = out_stem.with_name(f"{out_stem.name}_overlay.{overlay_format}")
    _write(label_path, lambda f: colorize(labels, seg.palette).save(f, format="PNG"))
    picture = overlay_with_legend(seg, image, labels, alpha)
    options = {"format": "JPEG", "quality": 92} if overlay_format == "jpg" else {"format": "PNG"}
    _write(overlay_path, lambda f: picture.save(f, **options))
    written = [label_path, overlay_path]
    if probs is not None:
        prob_path = out_stem.with_name(out_stem.name + "_probs.npy")
        _write(prob_path, lambda f: np.save(f, probs.astype(np.float16)))
        written.append(prob_path)
    return written


def _write(path: Path, save: Callable[[BinaryIO], object]) -> None:
    """One output file, complete or absent: a full, read-only or vanished disk stops predict with one
    :class:`~lightseg.errors.StorageError` naming the file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise storage_error(e, path, "prediction", "run predict again") from e
    with atomic_file(path, "prediction", "run predict again", durable=False) as f:  # no 10 ms sync per file
        save(f)


def predict_video(
    seg: Segmenter, path: Path, out_stem: Path, alpha: float = 0.5, progress: bool = True
) -> list[Path]:
    """Overlay video ``<stem>_overlay.mp4`` and colour-label video ``<stem>_labels.mp4`` (same frame
    rate). A damaged or truncated video keeps the frames decoded so far in both files and then
    fails naming how many were decoded. Needs the ``video`` extra (PyAV)."""
    from tqdm import tqdm

    reader = VideoReader(path)
    paths = [out_stem.with_name(out_stem.name + s) for s in ("_overlay.mp4", "_labels.mp4")]
    bar = tqdm(total=reader.expected, desc=path.name, unit="frame", disable=not progress)
    try:
        with VideoWriter(paths[0], reader.rate) as over_out, VideoWriter(paths[1], reader.rate) as label_out:
            try:
                for rgb in reader:
                    labels = seg(rgb)
                    over_out.write(np.asarray(overlay_with_legend(seg, rgb, labels, alpha)))
                    label_out.write(label_to_rgb(labels, seg.palette))
                    bar.update(1)
            finally:
                bar.close()
    except StorageError:  # one video could not be written: the other, cut short, goes too
        for p in paths:
            p.unlink(missing_ok=True)
        raise
    return paths


def check_out_dir(out_dir: str | os.PathLike) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: is a file; predictions are written into a folder: pass a folder path")
    return out


def predict_paths(
    seg: Segmenter,
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    save_probs: bool = False,
    alpha: float = 0.5,
    overlay_format: str = "jpg",
    progress: bool = True,
) -> PredictReport:
    """Run ``seg`` over files / folders / globs / videos, writing into ``out_dir``.

    A file that fails (corrupt image, damaged video) is recorded in the report and the run goes
    on; nothing is skipped silently (unsupported files met in folders are listed too).
    """
    from tqdm import tqdm

    if overlay_format not in OVERLAY_FORMATS:
        raise InputError(
            f"overlay format must be one of {', '.join(OVERLAY_FORMATS)}; got {overlay_format!r}"
        )
    out_dir = check_out_dir(out_dir)
    items, skipped = collect_inputs(inputs)
    report = PredictReport(skipped=skipped)
    for it in tqdm(items, desc="predict", unit="file", disable=not progress or len(items) < 2):
        try:
            if it.kind == "image":
                report.written += predict_image(
                    seg, it.path, out_dir / it.rel, save_probs, alpha, overlay_format
                )
            else:
                report.written += predict_video(seg, it.path, out_dir / it.rel, alpha, progress)
        except InputError as e:
            report.failed.append((it.path, str(e)))
    return report
