"""A user's own data: images + masks in the folder layouts people and labelling tools write.

The layout is detected on disk (:mod:`lightseg.data.layouts`: ``images/`` + ``masks/`` in their
variants, Pascal VOC as CVAT and labelme2voc write it, Kaggle's ``train/`` + ``train_labels/``,
masks beside their images as Roboflow writes them, Supervisely's ``<dataset>/img`` +
``masks_machine``); a layout without a validation split holds one out (``val_fraction``, seeded by
``split_seed``), and :attr:`FolderDataset.split_record` says which names went where.

Masks hold class ids (8-bit grey or palette PNGs, whose stored indices are the labels) or colours
(RGB PNGs painted in the colours of a colour table, mapped to ids by exact colour). The class table
comes from ``classes`` (a list or a file), else the first class file found in the dataset folder
(:data:`lightseg.data.classes.CLASS_FILES`: ``classes.txt``, ``class_dict.csv``, ``labelmap.txt``,
Roboflow's ``_classes.csv`` …); without any, the count is inferred from the masks (largest value + 1)
with a warning. Colours come from ``palette`` (a list or a file), else ``palette.txt``, else the
class file, else the palette of palette-mode masks; they become the model's palette.

``ignore_index`` marks ignored pixels (mapped to 255): a value of your mask files, or a class name
of the table (``Void``). A class the table names is taken out of the class list, and the ids after
it move down by one. ``reduce_zero_label`` maps 0 to ignore and k to k-1 after that.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lightseg.data.base import (
    IGNORE_INDEX,
    DataError,
    Scan,
    SegDataset,
    SplitNotFoundError,
    match_pairs,
    read_mask,
    reduce_zero_label,
)
from lightseg.data.classes import (
    ClassTable,
    ColourLookup,
    describe_colours,
    find_class_file,
    read_class_file,
    read_palette,
)
from lightseg.data.layouts import LAYOUTS, Layout, Subset, find_layout, image_files, mask_files, stem_of

log = logging.getLogger(__name__)
COLOUR_TABLE_HINT = (
    "give the colour of each class: class_dict.csv (name,r,g,b per row), classes.json "
    "([{name: road, color: [128, 64, 128]}, ...]), labelmap.txt (CVAT: name:r,g,b::) in the dataset "
    'folder, or --data.palette "[[r,g,b], ...]" in class order'
)


def holdout_split(stems: list[str], fraction: float, seed: int) -> list[str]:
    """The stems of a seeded random ``fraction`` (at least one pair when there are two or more)."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"data.val_fraction must be between 0 and 1 (exclusive), got {fraction}")
    n_val = min(max(1, round(len(stems) * fraction)), len(stems) - 1) if len(stems) > 1 else 0
    order = np.random.default_rng(seed).permutation(len(stems))
    return sorted(stems[i] for i in order[:n_val])


def _default_palette(n: int) -> list[tuple[int, int, int]]:
    from lightseg.meta import default_palette

    return [tuple(int(v) for v in c) for c in default_palette(n)]  # type: ignore[misc]


def _by_stem(files: list[Path], suffixes: Sequence[str], what: str) -> dict[str, Path]:
    """``{stem: path}``; two files with one stem (``a.jpg`` and ``a.png``) are ambiguous."""
    out: dict[str, Path] = {}
    for p in files:
        stem = stem_of(p, suffixes)
        if stem in out:
            raise DataError(f"two {what} files share the name {stem!r}: {out[stem]} and {p}; keep one")
        out[stem] = p
    return out


@functools.lru_cache(maxsize=8)
def _max_label(mask_paths: tuple[Path, ...], lut_key: bytes, reduce: bool) -> int:
    lut = np.frombuffer(lut_key, dtype=np.uint8)
    top = -1
    for p in mask_paths:
        raw = read_mask(p)
        if raw.dtype != np.uint8 and raw.size and raw.max() > 255:
            raise DataError(f"{p}: mask values {int(raw.min())}..{int(raw.max())} outside 0..255")
        m = lut[raw.astype(np.uint8)]
        if reduce:
            m = reduce_zero_label(m)
        values = np.unique(m)
        values = values[values != IGNORE_INDEX]
        if values.size:
            top = max(top, int(values[-1]))
    return top


class FolderDataset(SegDataset):
    """Your own images + masks in any of :data:`~lightseg.data.layouts.LAYOUTS`."""

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
        ignore_index: int | str = IGNORE_INDEX,
        reduce_zero_label: bool = False,
        mask_suffix: str | None = None,
        val_fraction: float = 0.1,
        split_seed: int = 0,
    ) -> None:
        given_root = Path(root).expanduser()
        self.found: Layout = find_layout(given_root, mask_suffix)
        self.detected_layout, self.available_splits = self.found.kind, self.found.splits
        self.reduce_zero_label = reduce_zero_label
        self.val_fraction, self.split_seed = float(val_fraction), int(split_seed)
        self.split_record: dict[str, Any] | None = None
        self.pairing_hint: str | None = None
        table = self._class_table(given_root, classes)
        colours, colour_source = self._explicit_colours(palette, table)
        self.colour_lookup = None if colours is None else ColourLookup(colours, colour_source)
        if table is None and colours is not None:
            table = ClassTable(tuple(str(i) for i in range(len(colours))), source=colour_source)
            log.warning(
                "warning: folder dataset at %s: no class names (classes.txt, class_dict.csv, ...); "
                "%d classes from the colours of %s, named 0..%d",
                self.found.root, len(colours), colour_source, len(colours) - 1,
            )  # fmt: skip
        table = self._build_luts(table, ignore_index)
        if self.colour_lookup is None:
            self._refuse_colour_masks()
        if table is None:
            self.classes = self._infer_classes()
        else:
            self.classes = list(table.names)
        self.palette = self._palette(table, colours)
        super().__init__(self.found.root, split, transform, seed, strict)

    def resolve_root(self, root: Path) -> Path:
        return root  # find_layout has checked it

    def resolve_split(self, split: str) -> str:
        if split not in self.available_splits:
            raise SplitNotFoundError(
                f"folder dataset ({self.found.describe()}): no split {split!r}; splits here: "
                f"{', '.join(self.available_splits)}. Accepted layouts:\n{LAYOUTS}"
            )
        return split

    # --- classes and colours -----------------------------------------------------------------------
    def _class_table(self, given_root: Path, classes: Sequence[str] | str | Path | None) -> ClassTable | None:
        if isinstance(classes, (str, Path)):
            return read_class_file(Path(classes).expanduser())
        if classes is not None:
            return ClassTable(tuple(str(c) for c in classes), source="--data.classes")
        folders = [self.found.root, given_root, *dict.fromkeys(s.images for s in self.found.subsets.values())]
        found = find_class_file(folders)
        return None if found is None else read_class_file(found)

    def _explicit_colours(
        self, palette: Any, table: ClassTable | None
    ) -> tuple[tuple[tuple[int, int, int], ...] | None, str]:
        """The colour table: ``palette``, else ``palette.txt``, else the class file's colours."""
        if palette is None and (self.found.root / "palette.txt").is_file():
            palette = self.found.root / "palette.txt"
        if palette is not None:
            colours = read_palette(palette)
            if table is not None and len(colours) != len(table.names):
                raise DataError(
                    f"folder dataset at {self.found.root}: the palette needs {len(table.names)} RGB triples "
                    f"0..255 (one per class of {table.source}), got {len(colours)}"
                )
            return colours, str(palette) if isinstance(palette, (str, Path)) else "--data.palette"
        if table is not None and table.colours is not None:
            return table.colours, table.source
        return None, ""

    def _build_luts(self, table: ClassTable | None, ignore_index: int | str) -> ClassTable | None:
        """``_value_to_pos`` (mask value -> row of the table, -1 unknown) and ``_pos_to_id`` (row ->
        class id, 255 ignore); returns the table without the ignored class."""
        self._value_to_pos = np.arange(256, dtype=np.int16)
        self._pos_to_id = np.arange(256, dtype=np.uint8)
        self._sparse_values = False
        ignored: int | None = None
        if isinstance(ignore_index, str):
            if table is None or ignore_index not in table.names:
                names = ", ".join(table.names) if table else "none (no class file)"
                raise DataError(f"ignore_index {ignore_index!r} is not a class name; the classes: {names}")
            ignored = table.names.index(ignore_index)
        if table is not None:
            values = table.value_of
            if values != list(range(len(values))):
                self._sparse_values = True
                self._value_to_pos[:] = -1
                self._value_to_pos[values] = np.arange(len(values))
                self._value_to_pos[IGNORE_INDEX] = IGNORE_INDEX
            if ignored is None and int(ignore_index) in values:
                ignored = values.index(int(ignore_index))
        if ignored is None and isinstance(ignore_index, int) and 0 <= ignore_index <= 255:
            self._value_to_pos[ignore_index] = IGNORE_INDEX  # a value that names no class
        if ignored is not None and table is not None:
            n = len(table.names)
            self._pos_to_id[ignored] = IGNORE_INDEX
            self._pos_to_id[ignored + 1 : n] -= 1
            return table.without(ignored)
        return table

    def _infer_classes(self) -> list[str]:
        masks = [m for s in self.found.subsets.values() for m in mask_files(s.masks, self.found)]
        lut = self._pos_to_id[np.clip(self._value_to_pos, 0, 255)].astype(np.uint8)
        top = _max_label(tuple(sorted(set(masks))), lut.tobytes(), self.reduce_zero_label)
        if top < 0:
            raise DataError(
                f"folder dataset at {self.found.root}: no class file and the masks hold no labelled "
                "pixels; write classes.txt (one name per line) or check the masks"
            )
        log.warning(
            "warning: folder dataset at %s: no class file (classes.txt, class_dict.csv, labelmap.txt, ...) "
            "nor --data.classes; %d classes inferred from the masks (largest value %d), named 0..%d. A class "
            "that appears in no mask is missed this way, and if %d marks unlabelled pixels add "
            "--data.ignore_index %d: write classes.txt to be sure.",
            self.found.root, top + 1, top, top, top, top,
        )  # fmt: skip
        return [str(i) for i in range(top + 1)]

    def _palette(self, table: ClassTable | None, colours: Any) -> list[tuple[int, int, int]]:
        """Explicit colours (the ignored class left out), else the masks' own palette, else fixed
        pseudo-random colours."""
        n = len(self.classes)
        if colours is not None:
            keep = [p for p in range(len(colours)) if self._pos_to_id[p] != IGNORE_INDEX]
            return [tuple(int(v) for v in colours[p]) for p in keep]  # type: ignore[misc]
        own = self._mask_palette()
        if own is None:
            return _default_palette(n)
        values = table.value_of if table is not None else list(range(256))
        rows = [p for p in range(len(values)) if self._pos_to_id[p] != IGNORE_INDEX][:n]
        return [own[values[p]] for p in rows]

    def first_mask(self) -> Path | None:
        return next((m for s in self.found.subsets.values() for m in mask_files(s.masks, self.found)), None)

    def _mask_palette(self) -> list[tuple[int, int, int]] | None:
        """The palette of palette-mode masks (read from the first mask), 256 colours."""
        path = self.first_mask()
        if path is None:
            return None
        try:
            with Image.open(path) as im:
                if im.mode != "P":
                    return None
                flat = (im.getpalette() or []) + [0] * 768
        except (OSError, ValueError, SyntaxError):
            return None  # the doctor and the loader name unreadable files
        return [tuple(flat[3 * k : 3 * k + 3]) for k in range(256)]  # type: ignore[misc]

    def _refuse_colour_masks(self) -> None:
        """Colour masks without a colour table fail now, naming the colours they hold."""
        path = self.first_mask()
        if path is None:
            return
        try:
            with Image.open(path) as im:
                if im.mode not in ("RGB", "RGBA"):
                    return
                rgb = np.asarray(im.convert("RGB"))
        except (OSError, ValueError, SyntaxError):
            return
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all():
            return
        held = ColourLookup([], "").unknown(rgb)
        raise DataError(
            f"the masks are colour images ({path} is {im.mode} with {len(held)} colours: "
            f"{describe_colours(held, 8)}) and {self.found.root} has no colour table; {COLOUR_TABLE_HINT}"
        )

    # --- pairs -------------------------------------------------------------------------------------
    def _index(self, subset: Subset) -> tuple[dict[str, Path], dict[str, Path], list[str]]:
        """Images and masks of a subset by stem, restricted to its list when it has one (names the list
        gives that match no file come third)."""
        lay = self.found
        images = _by_stem(image_files(subset.images, lay), [], "image")
        masks = _by_stem(mask_files(subset.masks, lay), [lay.mask_suffix + e for e in lay.mask_exts], "mask")
        if subset.names is None:
            return images, masks, []
        names = {ln.strip() for ln in subset.names.read_text().splitlines() if ln.strip()}
        unknown = sorted(names - set(images) - set(masks))
        return (
            {k: p for k, p in images.items() if k in names},
            {k: p for k, p in masks.items() if k in names},
            unknown,
        )

    def scan(self) -> Scan:
        lay = self.found
        subset = lay.subset_of(self.split)
        if subset is not None:
            images, masks, unknown = self._index(lay.subsets[subset])
            scan = match_pairs(images, masks)
            scan.missing_images += [lay.subsets[subset].images / f"{k}.*" for k in unknown]
            return self._explain_no_pairs(scan, images, masks)
        images, masks = {}, {}
        for name in lay.holdout_from:  # several subsets: their stems are kept apart by the subset name
            im, ma, _ = self._index(lay.subsets[name])
            key = (lambda k, name=name: f"{name}/{k}") if len(lay.holdout_from) > 1 else (lambda k: k)
            images.update({key(k): p for k, p in im.items()})
            masks.update({key(k): p for k, p in ma.items()})
        if self.split == "all":
            return self._explain_no_pairs(match_pairs(images, masks), images, masks)
        stems = sorted(set(images) & set(masks))
        val = holdout_split(stems, self.val_fraction, self.split_seed)
        self.split_record = {
            "layout": lay.kind,
            "held_out_of": list(lay.holdout_from),
            "val_fraction": self.val_fraction,
            "split_seed": self.split_seed,
            "val": val,
            "train": sorted(set(stems) - set(val)),
        }
        keep = set(val) if self.split == "val" else set(stems) - set(val)
        scan = match_pairs({k: images[k] for k in keep}, {k: masks[k] for k in keep})
        scan.missing_masks += [p for k, p in images.items() if k not in masks]
        scan.missing_images += [p for k, p in masks.items() if k not in images]
        return self._explain_no_pairs(scan, images, masks)

    def _explain_no_pairs(self, scan: Scan, images: dict[str, Path], masks: dict[str, Path]) -> Scan:
        """Images and masks whose names never match: say how they differ (a strict split stops here)."""
        if scan.pairs or not images or not masks:
            return scan
        from lightseg.data.layouts import infer_mask_suffix

        tail = infer_mask_suffix(set(images), masks)
        fix = (
            f'; their names differ by {tail!r}: --data.options "{{mask_suffix: {tail}}}"'
            if tail
            else '; name each mask like its image (a.jpg with a.png) or set --data.options "{mask_suffix: _mask}"'
        )
        self.pairing_hint = (
            f"no image name matches a mask name (e.g. image {next(iter(images))!r}, mask {next(iter(masks))!r})"
            + fix
        )
        return scan

    def _check_scan(self, scan: Scan) -> None:
        if self.pairing_hint and not scan.pairs:
            raise DataError(
                f"folder dataset split {self.split!r} ({self.found.describe()}): {self.pairing_hint}"
            )
        super()._check_scan(scan)

    # --- labels ------------------------------------------------------------------------------------
    def read_raw_mask(self, path: Path) -> np.ndarray:
        return read_mask(path, colour=self.colour_lookup is not None)

    def convert_mask(self, raw: np.ndarray, mask_path: Path) -> np.ndarray:
        pos = self._colour_rows(raw, mask_path) if raw.ndim == 3 else self._value_rows(raw, mask_path)
        mask = self._pos_to_id[pos]
        return reduce_zero_label(mask) if self.reduce_zero_label else mask

    def _value_rows(self, raw: np.ndarray, path: Path) -> np.ndarray:
        if raw.dtype != np.uint8:
            if raw.size and (raw.min() < 0 or raw.max() > 255):
                raise DataError(f"{path}: mask values {int(raw.min())}..{int(raw.max())} outside 0..255")
            raw = raw.astype(np.uint8)
        rows = self._value_to_pos[raw]
        if self._sparse_values and (rows < 0).any():
            values = np.unique(raw[rows < 0])
            shown = ", ".join(str(int(v)) for v in values[:10])
            raise DataError(
                f"{path}: mask values {shown} are not in the class table (its values: "
                f"{', '.join(str(int(v)) for v in np.flatnonzero(self._value_to_pos >= 0) if v != 255)})"
            )
        return rows.astype(np.uint8)

    def _colour_rows(self, rgb: np.ndarray, path: Path) -> np.ndarray:
        assert self.colour_lookup is not None
        try:
            return self.colour_lookup(rgb, path)
        except DataError:
            if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all():
                # class ids stored as grey RGB (a table that has colours, masks that do not use them)
                return self._value_rows(np.ascontiguousarray(rgb[..., 0]), path)
            raise
