"""What every dataset shares: file reading with actionable errors, root resolution, pairing, seeding.

A dataset file (``ade20k.py``, ``cityscapes.py`` …) only states its classes, palette, directory layout
(:meth:`SegDataset.scan`) and label rule (:meth:`SegDataset.convert_mask`); this module does the rest.
Masks handed to transforms always hold class ids ``0..num_classes-1`` and ``255`` (ignore).
"""

from __future__ import annotations

import difflib
import errno
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from lightseg.errors import DataError, DatasetNotFoundError, SplitNotFoundError
from lightseg.meta import IGNORE_INDEX

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


# ----------------------------------------------------------------------------------------------------
# Reading files. Every PIL/numpy failure becomes a DataError naming the file.


def set_max_image_pixels(limit: int | None) -> None:
    """PIL's decompression-bomb limit (``data.max_image_pixels``): ``None`` keeps PIL's default,
    0 removes it. PIL refuses images above twice the limit and warns above it."""
    if limit is not None:
        Image.MAX_IMAGE_PIXELS = limit or None


def _bomb_error(path: Path, e: Exception) -> DataError:
    return DataError(
        f"{path}: refused by PIL's decompression-bomb guard ({e}). If the file is trusted, raise the "
        "limit with --data.max_image_pixels N (pixels; 0 for no limit)"
    )


def upright_rgb(im: Image.Image) -> Image.Image:
    """The image as RGB, turned as its EXIF orientation tag says.

    As the papers' loader (mmcv's ``cv2.imdecode`` with ``IMREAD_COLOR``) reads images: OpenCV
    applies the EXIF orientation to colour reads, never to ``IMREAD_UNCHANGED`` reads, which is how
    masks are read, so masks are not turned (a photo whose mask was drawn on the turned image then
    fails the size check, naming both files)."""
    return ImageOps.exif_transpose(im).convert("RGB")


def read_image(path: Path) -> np.ndarray:
    """Decode an image file to an RGB ``uint8`` array of shape (H, W, 3), EXIF orientation applied."""
    try:
        with Image.open(path) as im:
            im.draft("RGB", im.size)  # no-op for PNG; keeps JPEG decoding at full size
            arr = np.asarray(upright_rgb(im))
    except FileNotFoundError as e:
        raise DataError(f"{path}: image file not found") from e
    except Image.DecompressionBombError as e:
        raise _bomb_error(path, e) from e
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: cannot decode image ({e})") from e
    return arr


def read_mask(path: Path, colour: bool = False) -> np.ndarray:
    """Decode a label PNG to an integer array (H, W) of the raw stored values (before the label rule).

    Accepts 8-bit grey (``L``), palette (``P``: the stored indices are the labels) and 16/32-bit grey.
    An RGB(A) mask is returned as (H, W, 3) colours when ``colour`` (the dataset has a colour
    table), else accepted only when its three channels are equal; a colour-coded mask is an error.
    """
    try:
        with Image.open(path) as im:
            mode = im.mode
            arr = np.asarray(im)
    except FileNotFoundError as e:
        raise DataError(f"{path}: mask file not found") from e
    except Image.DecompressionBombError as e:
        raise _bomb_error(path, e) from e
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: cannot decode mask ({e})") from e
    if arr.ndim == 3:
        if colour and arr.shape[2] >= 3:
            return np.ascontiguousarray(arr[..., :3])
        if arr.shape[2] >= 3 and (arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all():
            return np.ascontiguousarray(arr[..., 0])
        raise DataError(
            f"{path}: mask is a colour image (mode {mode}) and this dataset has no colour table; masks hold "
            "class ids, or, for your own data (--data.dataset folder), colours listed in class_dict.csv, "
            "labelmap.txt, classes.json or --data.palette"
        )
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    return arr


def reduce_zero_label(mask: np.ndarray) -> np.ndarray:
    """mmseg's ``reduce_zero_label``: 0 (``other``) -> 255, k -> k-1, 255 stays 255."""
    out = mask.astype(np.int32) - 1
    out[mask == 0] = IGNORE_INDEX
    out[mask == IGNORE_INDEX] = IGNORE_INDEX
    return out.astype(np.uint8)


def lut_mask(mask: np.ndarray, lut: np.ndarray, path: Path) -> np.ndarray:
    """Map raw values through a 256-entry look-up table (values beyond it are an error)."""
    if mask.dtype != np.uint8:
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise DataError(f"{path}: mask values {int(mask.min())}..{int(mask.max())} outside 0..255")
        mask = mask.astype(np.uint8)
    return lut[mask]


# ----------------------------------------------------------------------------------------------------
# Layout helpers.


@dataclass
class Scan:
    """Result of looking at a split on disk, before any file is decoded."""

    pairs: list[tuple[Path, Path | None]] = field(default_factory=list)
    missing_masks: list[Path] = field(default_factory=list)  # images without a mask
    missing_images: list[Path] = field(default_factory=list)  # masks without an image

    def add_listed(self, img: Path, mask: Path) -> None:
        """File a pair named by a split list: a pair, or whichever side is missing."""
        check_link(img)
        check_link(mask)
        if not img.is_file():
            self.missing_images.append(mask if mask.is_file() else img)
        elif not mask.is_file():
            self.missing_masks.append(img)
        else:
            self.pairs.append((img, mask))


def check_link(path: Path) -> None:
    """A symlink loop is an error naming the link (``is_file`` would just call it missing)."""
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except RuntimeError as e:  # Python < 3.13 reports a loop so
            raise DataError(f"{path}: symlink loop ({e}); point the link at a file or remove it") from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise DataError(f"{path}: symlink loop; point the link at a file or remove it") from None


def list_files(folder: Path, suffixes: Iterable[str], recursive: bool = False) -> list[Path]:
    """Files of ``folder`` (optionally recursive) whose name ends with one of ``suffixes``, sorted."""
    suffixes = tuple(s.lower() for s in suffixes)
    it = folder.rglob("*") if recursive else folder.iterdir()
    named = [p for p in it if p.name.lower().endswith(suffixes)]
    for p in named:
        check_link(p)
    return sorted(p for p in named if p.is_file())


def strip_suffix(name: str, suffixes: Iterable[str]) -> str | None:
    """``name`` without the first of ``suffixes`` it ends with (case-insensitive), else None."""
    low = name.lower()
    for s in suffixes:
        if low.endswith(s.lower()):
            return name[: len(name) - len(s)]
    return None


def match_pairs(images: dict[str, Path], masks: dict[str, Path] | None) -> Scan:
    """Pair images and masks by key. ``masks=None`` means an unlabelled split (every mask None)."""
    if masks is None:
        return Scan(pairs=[(images[k], None) for k in sorted(images)])
    scan = Scan()
    for k in sorted(images):
        if k in masks:
            scan.pairs.append((images[k], masks[k]))
        else:
            scan.missing_masks.append(images[k])
    scan.missing_images = [masks[k] for k in sorted(masks) if k not in images]
    return scan


def close_matches(path: Path) -> str:
    """`` (did you mean: ...?)`` naming the entries beside ``path`` whose names are close to its name
    (case-insensitive), or ``""``."""
    parent = path.parent
    if not parent.is_dir():
        return ""
    names = {p.name.lower(): p.name for p in parent.iterdir() if not p.name.startswith(".")}
    close = difflib.get_close_matches(path.name.lower(), list(names), n=3, cutoff=0.6)
    return f" (did you mean: {', '.join(str(parent / names[c]) for c in close)}?)" if close else ""


# ----------------------------------------------------------------------------------------------------


class SegDataset(Dataset):
    """A semantic-segmentation split on disk: ``files`` (image, mask) pairs plus class metadata.

    ``ds.load(i)`` gives the decoded ``(image uint8 (H, W, 3) RGB, mask uint8 (H, W))`` with the label
    rule applied (class ids ``0..num_classes-1``, ``255`` ignore). ``ds[i]`` / ``ds[(i, seed)]`` run the
    transform and return its dict (``image`` float32 (3, H, W), ``mask`` int64 (H, W), ``meta``).
    With ``(i, seed)`` every random choice comes from ``numpy.random.default_rng(seed)``, so a sample
    depends only on (index, seed), not on the worker that made it. With a plain ``i`` the seed is
    derived from ``(seed, epoch, i)``; call :meth:`set_epoch` between epochs.

    Subclasses set ``name``, ``classes``, ``palette``, ``layout`` (shown in errors), ``splits``
    (user split name -> folder/list name) and implement :meth:`scan`; ``root_candidates`` are the
    sub-folders of the given root that may hold the dataset (so both ``data/`` and
    ``data/ADEChallengeData2016`` work) and ``root_markers`` what must exist inside it.
    """

    name: ClassVar[str] = ""
    layout: ClassVar[str] = ""
    splits: ClassVar[dict[str, str]] = {}
    root_candidates: ClassVar[tuple[str, ...]] = ("",)
    root_markers: ClassVar[tuple[str, ...]] = ()
    ignore_index: int = IGNORE_INDEX

    classes: list[str]
    palette: list[tuple[int, int, int]]

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable[..., dict[str, Any]] | None = None,
        seed: int = 0,
        strict: bool = True,
    ) -> None:
        if not hasattr(self, "classes"):
            self.classes = list(type(self).CLASSES)  # type: ignore[attr-defined]
            self.palette = [tuple(c) for c in type(self).PALETTE]  # type: ignore[attr-defined]
        self.root = self.resolve_root(Path(root).expanduser())
        self.split = split
        self.split_dir = self.resolve_split(split)
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.scan_result = self.scan()
        if strict:
            self._check_scan(self.scan_result)
        self.files: list[tuple[Path, Path | None]] = self.scan_result.pairs

    # --- layout ------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def resolve_root(self, root: Path) -> Path:
        """The folder holding the dataset: ``root`` itself or one of ``root_candidates`` inside it."""
        if not root.is_dir():
            raise DatasetNotFoundError(
                f"{self.name} root {root} does not exist{close_matches(root)}; expected layout:\n{self.layout}"
            )
        for cand in self.root_candidates:
            base = root / cand if cand else root
            if all((base / m).exists() for m in self.root_markers):
                return base
        wanted = ", ".join(self.root_markers)
        raise DatasetNotFoundError(
            f"{root} does not look like a {self.name} root (need {wanted} inside it or inside one of "
            f"{[c for c in self.root_candidates if c]}); expected layout:\n{self.layout}"
        )

    def resolve_split(self, split: str) -> str:
        """Map a user split name (``train``/``val``/``test`` or the dataset's own name) to its folder."""
        if split in self.splits:
            return self.splits[split]
        if split in self.splits.values():
            return split
        close = difflib.get_close_matches(split, list(self.splits), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise SplitNotFoundError(f"{self.name}: unknown split {split!r}{hint}; known: {sorted(self.splits)}")

    def require_dir(self, folder: Path) -> Path:
        if not folder.is_dir():
            raise DatasetNotFoundError(
                f"{self.name} split {self.split!r}: folder {folder} does not exist{close_matches(folder)}; "
                f"expected layout:\n{self.layout}"
            )
        return folder

    def scan(self) -> Scan:
        """Find this split's (image, mask) pairs on disk without decoding anything."""
        raise NotImplementedError

    def _check_scan(self, scan: Scan) -> None:
        where = f"{self.name} split {self.split!r} at {self.root}"
        if scan.missing_masks or scan.missing_images:
            bad = [f"image without mask: {p}" for p in scan.missing_masks[:5]]
            bad += [f"mask without image: {p}" for p in scan.missing_images[:5]]
            raise DataError(
                f"{where}: {len(scan.missing_masks)} image(s) without a mask and {len(scan.missing_images)} "
                "mask(s) without an image, e.g.\n  "
                + "\n  ".join(bad)
                + "\n(run `lightseg data check` for a full report)"
            )
        if not scan.pairs:
            raise DataError(f"{where}: no images found; expected layout:\n{self.layout}")

    # --- decoding ----------------------------------------------------------------------------------
    def convert_mask(self, raw: np.ndarray, mask_path: Path) -> np.ndarray:
        """The dataset's label rule: raw stored values -> class ids with 255 ignore (uint8)."""
        if raw.dtype != np.uint8:
            raw = lut_mask(raw, np.arange(256, dtype=np.uint8), mask_path)
        return raw

    def read_raw_mask(self, path: Path) -> np.ndarray:
        """The stored values of a mask file (see :func:`read_mask`), before the label rule."""
        return read_mask(path)

    def load_mask(self, i: int) -> np.ndarray | None:
        """Mask ``i`` with the label rule applied, or None for an unlabelled split."""
        mask_path = self.files[i][1]
        if mask_path is None:
            return None
        return self.convert_mask(self.read_raw_mask(mask_path), mask_path)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Decoded pair ``i``: image uint8 (H, W, 3) RGB and mask uint8 (H, W) (label rule applied)."""
        image_path, mask_path = self.files[i]
        image = read_image(image_path)
        mask = self.load_mask(i)
        if mask is not None and mask.shape != image.shape[:2]:
            raise DataError(
                f"{mask_path}: mask size {mask.shape[1]}x{mask.shape[0]} (WxH) differs from its image "
                f"{image_path} ({image.shape[1]}x{image.shape[0]})"
            )
        if mask is not None:
            self._check_labels(mask, mask_path)
        return image, mask

    def _check_labels(self, mask: np.ndarray, mask_path: Path) -> None:
        """Labels a loss can take: class ids ``0..num_classes-1`` or the ignore index."""
        n = self.num_classes
        bad = (mask >= n) & (mask != self.ignore_index)
        if bad.any():
            values = np.unique(mask[bad])
            shown = ", ".join(str(int(v)) for v in values[:10]) + (" ..." if len(values) > 10 else "")
            raise DataError(
                f"{mask_path}: label values {shown} are not class ids of {self.name} (0..{n - 1}) nor the "
                f"ignore index {self.ignore_index}. Check data.dataset and its label options (e.g. "
                "reduce_zero_label), or run `lightseg data check` for every such file"
            )

    # --- torch Dataset -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.files)

    def set_epoch(self, epoch: int) -> None:
        """Change the seeds derived for plain-index access (``ds[i]``)."""
        self.epoch = epoch

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Any]:
        if isinstance(index, tuple):
            i, seed = index
            rng = np.random.default_rng(seed)
        else:
            i = int(index)
            rng = np.random.default_rng([self.seed, self.epoch, i])
        image, mask = self.load(i)
        image_path, mask_path = self.files[i]
        sample = {
            "image": image,
            "mask": mask,
            "meta": {
                "image_path": str(image_path),
                "mask_path": None if mask_path is None else str(mask_path),
                "ori_size": tuple(image.shape[:2]),
                "index": i,
            },
        }
        if self.transform is None:
            from lightseg.data.transforms import default_transform

            return default_transform()(sample, rng)
        return self.transform(sample, rng)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, "
            f"{len(self)} pairs, {self.num_classes} classes)"
        )
