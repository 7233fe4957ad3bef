"""A user's own data: ``images/`` + ``masks/`` + a class list, with a configurable label rule.

Options: ``classes`` (list, or a file with one name per line; default ``<root>/classes.txt``),
``palette`` (list of RGB, or a file with ``r g b`` per line; default ``<root>/palette.txt`` when present,
otherwise a fixed pseudo-random palette), ``ignore_index`` (the value in *your* mask files that marks
ignored pixels; mapped to 255 on load, so ``ds.ignore_index`` is always 255) and ``reduce_zero_label``
(0 → ignore, k → k−1; applied after the ignore mapping).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lightseg.data.base import (
    IGNORE_INDEX,
    IMAGE_SUFFIXES,
    DataError,
    Scan,
    SegDataset,
    list_files,
    lut_mask,
    match_pairs,
    reduce_zero_label,
)

LAYOUT = """\
  <root>/
    classes.txt                         one class name per line; line k names label value k
    palette.txt                         optional, "r g b" per line
    images/<split>/<name>.{jpg,png,...}   masks/<split>/<name>.png        (split sub-folders)
  or
    images/<name>.*   masks/<name>.png   <split>.txt listing <name> per line   (split lists)
  or
    images/<name>.*   masks/<name>.png   and --split all                       (no splits)"""


def _read_list(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


def _default_palette(n: int) -> list[tuple[int, int, int]]:
    rng = np.random.default_rng(3)  # fixed: the same colours on every run
    return [tuple(int(v) for v in c) for c in rng.integers(0, 256, (n, 3))]


class FolderDataset(SegDataset):
    """Generic ``images/`` + ``masks/`` dataset; masks named ``<image stem><mask_suffix>``."""

    name = "folder"
    layout = LAYOUT
    root_markers = ("images", "masks")

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Any = None,
        seed: int = 0,
        strict: bool = True,
        classes: Sequence[str] | str | Path | None = None,
        palette: Sequence[Sequence[int]] | str | Path | None = None,
        ignore_index: int = IGNORE_INDEX,
        reduce_zero_label: bool = False,
        mask_suffix: str = ".png",
    ) -> None:
        root_path = self.resolve_root(Path(root).expanduser())
        self.classes = self._load_classes(root_path, classes)
        self.palette = self._load_palette(root_path, palette, len(self.classes))
        self.file_ignore_index = int(ignore_index)
        self.reduce_zero_label = reduce_zero_label
        self.mask_suffix = mask_suffix
        self._lut = np.arange(256, dtype=np.uint8)
        if 0 <= self.file_ignore_index <= 255:
            self._lut[self.file_ignore_index] = IGNORE_INDEX
        super().__init__(root_path, split, transform, seed, strict)

    @staticmethod
    def _load_classes(root: Path, classes: Sequence[str] | str | Path | None) -> list[str]:
        if classes is None or isinstance(classes, (str, Path)):
            path = root / "classes.txt" if classes is None else Path(classes)
            if not path.is_file():
                raise DataError(f"folder dataset: class list {path} not found (one class name per line)")
            classes = _read_list(path)
        if not classes:
            raise DataError(f"folder dataset at {root}: the class list is empty")
        return list(classes)

    @staticmethod
    def _load_palette(root: Path, palette: Any, n: int) -> list[tuple[int, int, int]]:
        if palette is None and (root / "palette.txt").is_file():
            palette = root / "palette.txt"
        if palette is None:
            return _default_palette(n)
        if isinstance(palette, (str, Path)):
            palette = [
                tuple(int(v) for v in ln.replace(",", " ").split()) for ln in _read_list(Path(palette))
            ]
        pal = [tuple(int(v) for v in c) for c in palette]
        if len(pal) != n or any(len(c) != 3 for c in pal):
            raise DataError(f"folder dataset: palette needs {n} RGB triples (one per class), got {len(pal)}")
        return pal  # type: ignore[return-value]

    def resolve_split(self, split: str) -> str:
        return split  # any name: a sub-folder, a list file, or "all"

    def scan(self) -> Scan:
        img_dir, mask_dir = self.root / "images", self.root / "masks"
        names: list[str] | None = None
        if (img_dir / self.split).is_dir():
            img_dir, mask_dir = img_dir / self.split, mask_dir / self.split
        elif (self.root / f"{self.split}.txt").is_file():
            names = _read_list(self.root / f"{self.split}.txt")
        elif self.split != "all":
            raise DataError(
                f"folder dataset at {self.root}: no split {self.split!r} (neither images/{self.split}/ nor "
                f"{self.split}.txt; use --split all for a folder without splits); expected layout:\n{LAYOUT}"
            )
        images = {p.stem: p for p in list_files(img_dir, IMAGE_SUFFIXES)}
        masks = {}
        if mask_dir.is_dir():
            for p in list_files(mask_dir, (self.mask_suffix,)):
                masks[p.name[: -len(self.mask_suffix)]] = p
        if names is not None:
            images = {k: images.get(k, img_dir / f"{k}.jpg") for k in names}
            masks = {k: masks[k] for k in names if k in masks}
            scan = match_pairs({k: p for k, p in images.items() if p.is_file()}, masks)
            scan.missing_images += [p for k, p in images.items() if not p.is_file() and k not in masks]
            return scan
        return match_pairs(images, masks)

    def convert_mask(self, raw: np.ndarray, mask_path: Path) -> np.ndarray:
        mask = lut_mask(raw, self._lut, mask_path)
        return reduce_zero_label(mask) if self.reduce_zero_label else mask
