"""A user's own data: images + masks in the folder layouts people already have, detected on disk.

Layouts (the first that matches the root wins; :data:`LAYOUTS` is what every layout error prints):

- ``images/<split>/`` + ``masks/<split>/`` — one sub-folder per split;
- ``<split>/images/`` + ``<split>/masks/`` — one folder per split;
- flat ``images/`` + ``masks/`` with ``<split>.txt`` files listing stems;
- flat ``images/`` + ``masks/`` alone: ``val`` is a seeded random ``val_fraction`` (default 10%) of
  the pairs, ``train`` the rest, ``all`` everything; :attr:`FolderDataset.split_record` says which
  stems went where, and a training run writes it to its directory.

An image and its mask pair up by stem (``a.jpg`` with ``a.png``; ``mask_suffix`` such as
``_mask.png`` is stripped from mask names). Masks hold class ids: 8-bit grey or palette (P-mode)
PNGs, whose stored indices are the labels. Classes come from ``classes`` (a list or a file), else
the root's ``classes.txt`` (one name per line), ``classes.json`` or ``classes.yaml`` (a list of
names, of ``{name, color}``, or ``{classes: [...], palette: [...]}``); without any, the count is
inferred from the masks (largest value + 1) with a warning. ``palette.txt`` (``r g b`` per line)
is optional. ``ignore_index`` is the value in *your* files that marks ignored pixels (mapped to
255); ``reduce_zero_label`` maps 0 to ignore and k to k-1 after it.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lightseg.data.base import (
    IGNORE_INDEX,
    IMAGE_SUFFIXES,
    DataError,
    DatasetNotFoundError,
    Scan,
    SegDataset,
    SplitNotFoundError,
    list_files,
    lut_mask,
    match_pairs,
    read_mask,
    reduce_zero_label,
)

MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")
log = logging.getLogger(__name__)
CLASS_FILES = ("classes.txt", "classes.json", "classes.yaml", "classes.yml")

LAYOUTS = """\
  <root>/images/<split>/<name>.jpg|png|...   <root>/masks/<split>/<name>.png   (a sub-folder per split)
  <root>/<split>/images/<name>.*            <root>/<split>/masks/<name>.png   (a folder per split)
  <root>/images/<name>.*   <root>/masks/<name>.png   <root>/<split>.txt listing names  (split lists)
  <root>/images/<name>.*   <root>/masks/<name>.png   (flat: a seeded 10% becomes 'val', the rest 'train')
  plus <root>/classes.txt (one name per line; line k names mask value k), classes.json or classes.yaml,
  or --data.classes; masks are single-channel PNGs (grey or palette) holding class ids"""


def _read_list(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


def _default_palette(n: int) -> list[tuple[int, int, int]]:
    from lightseg.meta import default_palette

    return [tuple(int(v) for v in c) for c in default_palette(n)]  # type: ignore[misc]


# ----------------------------------------------------------------------------------------------------
# Layout detection


def detect_layout(root: Path) -> tuple[str, list[str]]:
    """``(layout, splits on disk)`` of a folder dataset root; a root that fits none lists all four."""
    if not root.is_dir():
        raise DatasetNotFoundError(f"folder dataset root {root} does not exist; accepted layouts:\n{LAYOUTS}")
    images, masks = root / "images", root / "masks"
    if images.is_dir():
        subdirs = sorted(p.name for p in images.iterdir() if p.is_dir() and (masks / p.name).is_dir())
        if subdirs:
            return "images/<split>", subdirs
        lists = sorted(p.stem for p in root.glob("*.txt") if p.name not in ("classes.txt", "palette.txt"))
        if masks.is_dir() and lists:
            return "split lists", [*lists, "all"]
        if masks.is_dir():
            return "flat", ["train", "val", "all"]
    per_split = sorted(p.name for p in root.iterdir() if (p / "images").is_dir() and (p / "masks").is_dir())
    if per_split:
        return "<split>/images", per_split
    found = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())[:12]
    raise DatasetNotFoundError(
        f"{root} holds no folder dataset (found: {', '.join(found) or 'nothing'}); accepted layouts:\n{LAYOUTS}"
    )


def _split_dirs(root: Path, layout: str, split: str) -> tuple[Path, Path]:
    if layout == "images/<split>":
        return root / "images" / split, root / "masks" / split
    if layout == "<split>/images":
        return root / split / "images", root / split / "masks"
    return root / "images", root / "masks"


def _index_by_stem(files: list[Path], strip: Sequence[str], what: str) -> dict[str, Path]:
    """``{stem: path}``; two files with one stem (``a.jpg`` and ``a.png``) are ambiguous."""
    out: dict[str, Path] = {}
    for p in files:
        low = p.name.lower()
        suffix = next((s for s in strip if low.endswith(s.lower())), p.suffix)
        stem = p.name[: len(p.name) - len(suffix)]
        if stem in out:
            raise DataError(f"two {what} files share the name {stem!r}: {out[stem]} and {p}; keep one")
        out[stem] = p
    return out


def holdout_split(stems: list[str], fraction: float, seed: int) -> list[str]:
    """The stems of a seeded random ``fraction`` (at least one pair when there are two or more)."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"data.val_fraction must be between 0 and 1 (exclusive), got {fraction}")
    n_val = min(max(1, round(len(stems) * fraction)), len(stems) - 1) if len(stems) > 1 else 0
    order = np.random.default_rng(seed).permutation(len(stems))
    return sorted(stems[i] for i in order[:n_val])


# ----------------------------------------------------------------------------------------------------
# Classes


def load_class_file(path: Path) -> tuple[list[str], list[tuple[int, int, int]] | None]:
    """Names (and colours when given) from a .txt, .json or .yaml class file."""
    if not path.is_file():
        raise DataError(f"class file {path} not found")
    if path.suffix == ".txt":
        return _read_list(path), None
    try:
        data = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    except (ValueError, yaml.YAMLError) as e:
        raise DataError(f"{path}: cannot parse the class file ({e})") from e
    return _classes_from_data(data, path)


def _classes_from_data(data: Any, path: Path) -> tuple[list[str], list[tuple[int, int, int]] | None]:
    palette = None
    if isinstance(data, dict) and "classes" in data:
        palette = data.get("palette")
        data = data["classes"]
    elif isinstance(data, dict):  # {name: [r, g, b]}
        data = [{"name": k, "color": v} for k, v in data.items()]
    if not isinstance(data, list):
        raise DataError(
            f"{path}: expected a list of names, of {{name, color}}, or {{classes: [...], palette: [...]}}"
        )
    names = []
    colours = []
    for item in data:
        if isinstance(item, dict):
            names.append(str(item.get("name", "")))
            colours.append(item.get("color", item.get("colour")))
        else:
            names.append(str(item))
    if palette is None and colours and all(c is not None for c in colours):
        palette = colours
    if palette is not None:
        palette = [tuple(int(v) for v in c) for c in palette]
    return names, palette


@functools.lru_cache(maxsize=8)
def _max_label(mask_paths: tuple[Path, ...], lut_key: bytes, reduce: bool) -> int:
    lut = np.frombuffer(lut_key, dtype=np.uint8)
    top = -1
    for p in mask_paths:
        m = lut_mask(read_mask(p), lut, p)
        if reduce:
            m = reduce_zero_label(m)
        values = np.unique(m)
        values = values[values != IGNORE_INDEX]
        if values.size:
            top = max(top, int(values[-1]))
    return top


class FolderDataset(SegDataset):
    """Your own images + masks in any of :data:`LAYOUTS`."""

    name = "folder"
    layout = LAYOUTS

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
        mask_suffix: str | None = None,
        val_fraction: float = 0.1,
        split_seed: int = 0,
    ) -> None:
        root_path = Path(root).expanduser()
        self.detected_layout, self.available_splits = detect_layout(root_path)
        self.file_ignore_index = int(ignore_index)
        self.reduce_zero_label = reduce_zero_label
        self.mask_suffixes = (mask_suffix,) if mask_suffix else MASK_SUFFIXES
        self.val_fraction, self.split_seed = float(val_fraction), int(split_seed)
        self.split_record: dict[str, Any] | None = None
        self._lut = np.arange(256, dtype=np.uint8)
        if 0 <= self.file_ignore_index <= 255:
            self._lut[self.file_ignore_index] = IGNORE_INDEX
        names, colours = self._load_classes(root_path, classes)
        self.classes = names if names is not None else self._infer_classes(root_path)
        self.palette = self._load_palette(root_path, palette if palette is not None else colours)
        super().__init__(root_path, split, transform, seed, strict)

    def resolve_root(self, root: Path) -> Path:
        return root  # detect_layout has checked it

    def resolve_split(self, split: str) -> str:
        if split not in self.available_splits:
            raise SplitNotFoundError(
                f"folder dataset at {self.root} ({self.detected_layout} layout): no split {split!r}; "
                f"splits here: {', '.join(self.available_splits)}. Accepted layouts:\n{LAYOUTS}"
            )
        return split

    # --- classes -----------------------------------------------------------------------------------
    @staticmethod
    def _load_classes(
        root: Path, classes: Sequence[str] | str | Path | None
    ) -> tuple[list[str] | None, list[tuple[int, int, int]] | None]:
        colours = None
        if isinstance(classes, (str, Path)):
            names, colours = load_class_file(Path(classes).expanduser())
        elif classes is not None:
            names = [str(c) for c in classes]
        else:
            found = next((root / f for f in CLASS_FILES if (root / f).is_file()), None)
            if found is None:
                return None, None
            names, colours = load_class_file(found)
        if not names:
            raise DataError(f"folder dataset at {root}: the class list is empty")
        return names, colours

    def _infer_classes(self, root: Path) -> list[str]:
        masks = []
        for split in self.available_splits:
            if split != "all":
                masks += list_files(_split_dirs(root, self.detected_layout, split)[1], self.mask_suffixes)
        top = _max_label(tuple(sorted(set(masks))), self._lut.tobytes(), self.reduce_zero_label)
        if top < 0:
            raise DataError(f"folder dataset at {root}: no class file and no labelled mask pixels to count")
        log.warning(
            "warning: folder dataset at %s: no class file (%s) nor --data.classes; %d classes inferred "
            "from the masks (largest value %d), named 0..%d. A class that appears in no mask is missed "
            "this way, and if %d marks unlabelled pixels add --data.ignore_index %d: write classes.txt "
            "to be sure.",
            root, ", ".join(CLASS_FILES), top + 1, top, top, top, top,
        )  # fmt: skip
        return [str(i) for i in range(top + 1)]

    def _load_palette(self, root: Path, palette: Any) -> list[tuple[int, int, int]]:
        n = len(self.classes)
        if palette is None and (root / "palette.txt").is_file():
            palette = root / "palette.txt"
        if palette is None:
            return _default_palette(n)
        if isinstance(palette, (str, Path)):
            palette = [
                tuple(int(v) for v in ln.replace(",", " ").split()) for ln in _read_list(Path(palette))
            ]
        pal = [tuple(int(v) for v in c) for c in palette]
        if len(pal) != n or any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in pal):
            raise DataError(
                f"folder dataset at {root}: the palette needs {n} RGB triples 0..255 (one per class), "
                f"got {len(pal)}"
            )
        return pal  # type: ignore[return-value]

    # --- pairs -------------------------------------------------------------------------------------
    def scan(self) -> Scan:
        img_dir, mask_dir = _split_dirs(self.root, self.detected_layout, self.split)
        images = _index_by_stem(list_files(img_dir, IMAGE_SUFFIXES), IMAGE_SUFFIXES, "image")
        masks = _index_by_stem(
            list_files(mask_dir, self.mask_suffixes) if mask_dir.is_dir() else [], self.mask_suffixes, "mask"
        )
        if self.detected_layout == "split lists" and self.split != "all":
            names = set(_read_list(self.root / f"{self.split}.txt"))
            scan = match_pairs(
                {k: p for k, p in images.items() if k in names},
                {k: p for k, p in masks.items() if k in names},
            )
            unknown = sorted(names - set(images) - set(masks))
            scan.missing_images += [img_dir / f"{k}.jpg" for k in unknown]
            return scan
        if self.detected_layout == "flat" and self.split != "all":
            stems = sorted(set(images) & set(masks))
            val = holdout_split(stems, self.val_fraction, self.split_seed)
            self.split_record = {
                "layout": "flat",
                "val_fraction": self.val_fraction,
                "split_seed": self.split_seed,
                "val": val,
                "train": sorted(set(stems) - set(val)),
            }
            keep = set(val) if self.split == "val" else set(stems) - set(val)
            unpaired_images = {k: p for k, p in images.items() if k not in masks}
            unpaired_masks = {k: p for k, p in masks.items() if k not in images}
            scan = match_pairs({k: images[k] for k in keep}, {k: masks[k] for k in keep})
            scan.missing_masks += list(unpaired_images.values())
            scan.missing_images += list(unpaired_masks.values())
            return scan
        return match_pairs(images, masks)

    def convert_mask(self, raw: np.ndarray, mask_path: Path) -> np.ndarray:
        mask = lut_mask(raw, self._lut, mask_path)
        return reduce_zero_label(mask) if self.reduce_zero_label else mask
