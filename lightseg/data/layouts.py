"""Where the images and masks of your own data are: the folder layouts people and labelling tools write.

:func:`find_layout` looks at a root and returns the first :class:`Layout` that fits (the order of
:data:`LAYOUTS`). Image folders may be called ``images``, ``imgs``, ``img``, ``JPEGImages`` …, mask
folders ``masks``, ``labels``, ``annotations``, ``SegmentationClass``, ``SegmentationClassPNG``,
``masks_machine``, ``gt`` … (any case). A root holding a single folder (an unzipped export) is
looked into. When nothing fits, the error says what was found and what would make it work
(:func:`explain`).

Masks pair with images by name. A suffix on the mask names (``0001_L.png`` for ``0001.png``,
``0001_mask.png``) is inferred from the files: the tail that turns most image names into mask names.
A layout without a validation split (``val``, ``valid`` or ``validation``) holds one out of its
training subset (or of everything, when there is no ``train`` either): a seeded random
``val_fraction`` of the pairs becomes ``val``, the rest ``train``, and ``all`` is every pair.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lightseg.data.base import IMAGE_SUFFIXES, DatasetNotFoundError, close_matches

MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")
IMAGE_DIRS = ("images", "imgs", "img", "image", "jpegimages", "original_images", "rgb", "photos")
MASK_DIRS = (
    "masks", "mask", "labels", "label", "annotations", "annotation", "segmentationclass",
    "segmentationclasspng", "masks_machine", "gt", "groundtruth", "ground_truth",
    "label_images_semantic", "semantic", "segmentations",
)  # fmt: skip
# Sibling folder of a split's images that holds its masks: train/ + train_labels/ (Kaggle CamVid),
# train/ + trainannot/ (SegNet's CamVid) ...
SIBLING_MASK_DIRS = ("_labels", "_label", "_masks", "_mask", "annot", "_annot", "_annotations", "_gt", "_seg")
VAL_NAMES = ("val", "valid", "validation")
NOT_SPLITS = {"__macosx", "ann", "masks_human", "segmentationobject", "segmentationclassvisualization"}

LAYOUTS = """\
  images/<split>/<name>.jpg + masks/<split>/<name>.png            a sub-folder per split
  <split>/images/ + <split>/masks/                                a folder per split (Supervisely: <dataset>/img + masks_machine)
  JPEGImages/ + SegmentationClass/ + ImageSets/Segmentation/<split>.txt   Pascal VOC (CVAT "Segmentation mask", labelme2voc)
  images/ + masks/ + <split>.txt lists of names                   split lists
  images/ + masks/                                                flat: a seeded 10% becomes 'val'
  <split>/ + <split>_labels/ (or <split>annot/)                   Kaggle CamVid, SegNet
  <split>/<name>.jpg + <split>/<name>_mask.png                    masks beside images (Roboflow: train/ valid/ test/)
  <name>.jpg + <name>_mask.png                                    masks beside images, no split folders
  (folders may also be called imgs, img, JPEGImages / labels, annotations, SegmentationClassPNG, gt ...;
  mask suffixes such as _mask, _L, _label, _gt, _seg are found from the names)
  plus a class table: classes.txt, classes.json/yaml, class_dict.csv, labelmap.txt, _classes.csv,
  class_names.txt or obj_class_to_machine_color.json, or --data.classes; masks are class-id PNGs
  (grey or palette), or colour PNGs with a colour table (class_dict.csv, labelmap.txt, --data.palette)"""


@dataclass(frozen=True)
class Subset:
    """One split on disk: its image folder, its mask folder (may be the same) and, for split lists,
    the file naming its members."""

    images: Path
    masks: Path
    names: Path | None = None


@dataclass
class Layout:
    """A dataset root as found on disk. ``holdout_from``: the subsets ``train``/``val`` are drawn
    from when there is no validation split on disk."""

    kind: str
    root: Path
    subsets: dict[str, Subset]
    mask_suffix: str = ""
    mask_exts: tuple[str, ...] = MASK_SUFFIXES
    holdout_from: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.holdout_from and not any(s in self.subsets for s in VAL_NAMES):
            train = [s for s in self.subsets if s == "train"]
            self.holdout_from = tuple(train or [s for s in self.subsets if s != "all"] or ["all"])

    @property
    def splits(self) -> list[str]:
        """The split names a run may use, in order."""
        if not self.holdout_from:
            names = {s for s in self.subsets if s != "all"} | ({"val"} if self.subset_of("val") else set())
            return sorted(names) + (["all"] if "all" in self.subsets else [])
        kept = sorted(s for s in self.subsets if s not in self.holdout_from and s not in ("all", "train"))
        return [*kept, "train", "val", "all"]

    def subset_of(self, split: str) -> str | None:
        """The on-disk subset a split name reads directly (``val`` also reads ``valid``/``validation``)."""
        if split in self.subsets and not (self.holdout_from and split == "train"):
            return split
        if split == "val":
            return next((s for s in VAL_NAMES if s in self.subsets), None)
        return None

    def describe(self) -> str:
        suffix = f", mask names end with {self.mask_suffix!r}" if self.mask_suffix else ""
        held = f"; 'val' held out of {', '.join(self.holdout_from)}" if self.holdout_from else ""
        return f"{self.kind} layout at {self.root}{suffix}{held}"


# ----------------------------------------------------------------------------------------------------
# Files


def listdir(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError:
        return []


def _ends(name: str, suffixes: Iterable[str]) -> bool:
    return name.lower().endswith(tuple(s.lower() for s in suffixes))


def image_files(folder: Path, layout: Layout) -> list[Path]:
    """Image files of ``folder``; where masks sit beside the images, the masks are left out."""
    beside = layout.mask_suffix and any(s.images == s.masks == folder for s in layout.subsets.values())
    tails = [layout.mask_suffix + e for e in layout.mask_exts] if beside else []
    return [
        p for p in listdir(folder) if _ends(p.name, IMAGE_SUFFIXES) and not (tails and _ends(p.name, tails))
    ]


def mask_files(folder: Path, layout: Layout) -> list[Path]:
    return [p for p in listdir(folder) if _ends(p.name, [layout.mask_suffix + e for e in layout.mask_exts])]


def stem_of(path: Path, suffixes: Iterable[str]) -> str:
    """The name without the first of ``suffixes`` it ends with (case-insensitive), else its stem."""
    low = path.name.lower()
    for s in suffixes:
        if low.endswith(s.lower()):
            return path.name[: len(path.name) - len(s)]
    return path.stem


def infer_mask_suffix(image_stems: set[str], mask_stems: Iterable[str], beside: bool = False) -> str:
    """The tail that turns most image names into mask names (``_L`` for ``0001_L`` and ``0001``), or
    ``""`` when masks are named like their images. ``beside``: images and masks share one folder,
    so every mask is also among the image names and only tails count (a quarter of the images at
    least must have a mask)."""
    direct, tails = 0, Counter[str]()
    for m in mask_stems:
        if m in image_stems and not beside:
            direct += 1
            continue
        for i in range(1, len(m)):
            if m[i] in "_-." and m[:i] in image_stems and any(c.isalpha() for c in m[i:]):
                tails[m[i:]] += 1
    best = tails.most_common(1)
    if beside:
        return best[0][0] if best and 4 * best[0][1] >= len(image_stems) - best[0][1] else ""
    return best[0][0] if best and best[0][1] > direct else ""


def split_suffix(option: str | None) -> tuple[str, tuple[str, ...]] | None:
    """``mask_suffix`` as given (``_mask`` or ``_mask.png``) -> (name tail, file extensions)."""
    if not option:
        return None
    for ext in MASK_SUFFIXES:
        if option.lower().endswith(ext):
            return option[: -len(ext)], (ext,)
    return option, MASK_SUFFIXES


# ----------------------------------------------------------------------------------------------------
# Detection


def _dirs(folder: Path) -> dict[str, Path]:
    return {p.name.lower(): p for p in listdir(folder) if p.is_dir()}


def _has(folder: Path, suffixes: Iterable[str]) -> bool:
    return any(_ends(p.name, suffixes) for p in listdir(folder))


def _pick(dirs: dict[str, Path], names: Iterable[str], suffixes: Iterable[str] | None = None) -> Path | None:
    """The first folder of ``names`` present in ``dirs`` (and holding a file with ``suffixes``)."""
    for n in names:
        if n in dirs and (suffixes is None or _has(dirs[n], suffixes)):
            return dirs[n]
    return None


def _image_and_mask_dirs(folder: Path, exts: tuple[str, ...]) -> tuple[Path, Path] | None:
    dirs = _dirs(folder)
    images, masks = _pick(dirs, IMAGE_DIRS, IMAGE_SUFFIXES), _pick(dirs, MASK_DIRS, exts)
    return (images, masks) if images and masks else None


def _suffix_for(subsets: dict[str, Subset], exts: tuple[str, ...]) -> str:
    sub = next(iter(subsets.values()))
    images = {p.stem for p in listdir(sub.images) if _ends(p.name, IMAGE_SUFFIXES)}
    return infer_mask_suffix(images, (stem_of(p, exts) for p in listdir(sub.masks) if _ends(p.name, exts)))


def _detect_split_subfolders(root: Path, exts: tuple[str, ...]) -> Layout | None:
    dirs = _dirs(root)
    images, masks = _pick(dirs, IMAGE_DIRS), _pick(dirs, MASK_DIRS)
    if not (images and masks):
        return None
    inner = _dirs(masks)
    subsets = {
        p.name: Subset(p, inner[p.name.lower()])
        for p in listdir(images)
        if p.is_dir() and p.name.lower() in inner
    }
    return Layout("images/<split>", root, subsets) if subsets else None


def _detect_split_folders(root: Path, exts: tuple[str, ...]) -> Layout | None:
    subsets = {}
    for d in listdir(root):
        found = _image_and_mask_dirs(d, exts) if d.is_dir() and d.name.lower() not in NOT_SPLITS else None
        if found:
            subsets[d.name] = Subset(*found)
    return Layout("<split>/images", root, subsets) if subsets else None


def _detect_flat(root: Path, exts: tuple[str, ...]) -> Layout | None:
    found = _image_and_mask_dirs(root, exts)
    if found is None:
        return None
    images, masks = found
    voc_lists = root / "ImageSets" / "Segmentation"
    if voc_lists.is_dir() and _has(voc_lists, [".txt"]):
        subsets = {p.stem: Subset(images, masks, p) for p in listdir(voc_lists) if p.suffix == ".txt"}
        return Layout("Pascal VOC", root, subsets)
    from lightseg.data.classes import CLASS_FILES

    lists = [p for p in listdir(root) if p.suffix == ".txt" and p.name not in (*CLASS_FILES, "palette.txt")]
    stems = {p.stem for p in listdir(images)}
    lists = [p for p in lists if _names_images(p, stems)]
    if lists:
        subsets = {p.stem: Subset(images, masks, p) for p in lists}
        return Layout(
            "split lists", root, {**subsets, "all": Subset(images, masks)}, holdout_from=_no_val(subsets)
        )
    return Layout("flat", root, {"all": Subset(images, masks)}, holdout_from=("all",))


def _names_images(path: Path, stems: set[str]) -> bool:
    """Whether a .txt file is a list of image names (its first line names an image), not a README."""
    try:
        first = next((ln.strip() for ln in path.read_text().splitlines() if ln.strip()), "")
    except (OSError, UnicodeDecodeError):
        return False
    return first in stems


def _no_val(subsets: dict[str, Subset]) -> tuple[str, ...]:
    return () if any(s in subsets for s in VAL_NAMES) or "train" not in subsets else ("train",)


def _detect_sibling_label_dirs(root: Path, exts: tuple[str, ...]) -> Layout | None:
    dirs = _dirs(root)
    subsets = {}
    for name, d in dirs.items():
        if name in NOT_SPLITS or not _has(d, IMAGE_SUFFIXES):
            continue
        masks = next(
            (dirs[name + s] for s in SIBLING_MASK_DIRS if name + s in dirs and _has(dirs[name + s], exts)),
            None,
        )
        if masks is not None:
            subsets[d.name] = Subset(d, masks)
    return Layout("<split> + <split>_labels", root, subsets) if subsets else None


def _beside_suffix(folder: Path, exts: tuple[str, ...], given: str | None) -> str:
    """The mask suffix of a folder holding images and their masks side by side (``""``: not such a
    folder). A ``given`` suffix counts when at least one mask and one image carry it and lack it."""
    files = [p for p in listdir(folder) if p.is_file()]
    if given:
        tails = [given + e for e in exts]
        masks = [p for p in files if _ends(p.name, tails)]
        images = [p for p in files if _ends(p.name, IMAGE_SUFFIXES) and not _ends(p.name, tails)]
        return given if masks and images else ""
    stems = {p.stem for p in files if _ends(p.name, IMAGE_SUFFIXES)}
    return infer_mask_suffix(stems, (stem_of(p, exts) for p in files if _ends(p.name, exts)), beside=True)


def _detect_beside(root: Path, exts: tuple[str, ...], suffix: str | None) -> Layout | None:
    per_split = {}
    for d in listdir(root):
        if d.is_dir() and d.name.lower() not in NOT_SPLITS:
            s = _beside_suffix(d, exts, suffix)
            if s:
                per_split[d.name] = (Subset(d, d), s)
    if per_split:
        tails = Counter(s for _, s in per_split.values())
        tail = tails.most_common(1)[0][0]
        subsets = {k: v for k, (v, s) in per_split.items() if s == tail}
        return Layout("masks beside images, a folder per split", root, subsets, tail)
    s = _beside_suffix(root, exts, suffix)
    if s:
        return Layout("masks beside images", root, {"all": Subset(root, root)}, s, holdout_from=("all",))
    return None


def _candidate_roots(root: Path) -> list[Path]:
    """The folder inside the root when the root holds only that one (an unzipped export; twice at
    most), innermost first, then the root."""
    out = [root]
    for _ in range(2):
        entries = [p for p in listdir(out[-1]) if p.name.lower() != "__macosx"]
        if len(entries) == 1 and entries[0].is_dir():
            out.append(entries[0])
    return out[::-1]


def find_layout(root: Path, mask_suffix: str | None = None) -> Layout:
    """The layout of a folder dataset root (see the module docstring); a DatasetNotFoundError that
    says what was found and what would work when none fits."""
    if not root.is_dir():
        raise DatasetNotFoundError(f"folder dataset root {root} does not exist{close_matches(root)}")
    given = split_suffix(mask_suffix)
    exts = given[1] if given else MASK_SUFFIXES
    for base in _candidate_roots(root):
        for detect in (
            _detect_split_subfolders,
            _detect_split_folders,
            _detect_flat,
            _detect_sibling_label_dirs,
        ):
            layout = detect(base, exts)
            if layout is not None:
                layout.mask_exts = exts
                layout.mask_suffix = given[0] if given else _suffix_for(layout.subsets, exts)
                return layout
        layout = _detect_beside(base, exts, given[0] if given else None)
        if layout is not None:
            layout.mask_exts = exts
            return layout
    raise DatasetNotFoundError(explain(root, exts))


# ----------------------------------------------------------------------------------------------------
# When nothing fits: what was found, and what would work


def _count(folder: Path, suffixes: Iterable[str]) -> int:
    return sum(1 for p in listdir(folder) if _ends(p.name, suffixes))


def explain(root: Path, exts: tuple[str, ...] = MASK_SUFFIXES) -> str:
    """Why ``root`` fits no layout: what it holds, and the change that would make it fit."""
    entries = listdir(root)
    if not entries:
        return f"{root} is empty: put your images and masks there; accepted layouts:\n{LAYOUTS}"
    notes = []
    for base in _candidate_roots(root):
        for d in [base, *(p for p in listdir(base) if p.is_dir())]:
            notes += _folder_notes(d, exts)
    found = ", ".join(p.name + ("/" if p.is_dir() else "") for p in entries[:12])
    more = f" and {len(entries) - 12} more" if len(entries) > 12 else ""
    advice = "".join(f"\n  - {n}" for n in dict.fromkeys(notes))
    return f"{root} holds no folder dataset (found: {found}{more}){advice}\naccepted layouts:\n{LAYOUTS}"


LABEL_STUDIO_BRUSH_PNG = re.compile(r"^task-\d+-annotation-\d+-by-.*-\d+\.png$")


def _folder_notes(d: Path, exts: tuple[str, ...]) -> list[str]:
    name = d.name.lower()
    if any(LABEL_STUDIO_BRUSH_PNG.match(p.name) for p in listdir(d)):
        return [
            f"{d} holds Label Studio 'Brush labels to PNG' files (one black-and-white PNG per region, no "
            "images): export the project as JSON instead and run `lightseg data convert --label-studio "
            "EXPORT.json --data.root YOUR_IMAGES --out NEW_DIR`"
        ]
    n_images = _count(d, IMAGE_SUFFIXES)
    if name in MASK_DIRS:
        n_masks = _count(d, exts)
        others = Counter(
            p.suffix.lower() or p.name for p in listdir(d) if p.is_file() and not _ends(p.name, exts)
        )
        if n_masks == 0 and not others and not any(p.is_dir() for p in listdir(d)):
            return [f"{d} is empty: put one mask per image there (same name, .png)"]
        if n_masks == 0 and others:
            kinds = ", ".join(f"{k} ({v})" for k, v in others.most_common(3))
            return [
                f"{d} holds no mask images, only {kinds}: masks are PNG/BMP/TIFF files of class ids or colours"
            ]
        if not _pick(_dirs(d.parent), IMAGE_DIRS, IMAGE_SUFFIXES):
            return [
                f"{d} holds {n_masks} masks but there is no image folder beside it (images/, JPEGImages/, ...)"
            ]
    elif name in IMAGE_DIRS:
        if n_images == 0 and not any(p.is_dir() for p in listdir(d)):
            return [f"{d} is empty: put your images there"]
        if n_images and not _pick(_dirs(d.parent), MASK_DIRS):
            return [
                f"{d} holds {n_images} images but there is no mask folder beside it (masks/, labels/, ...)"
            ]
    elif n_images and d.is_dir():
        pngs = [p for p in listdir(d) if _ends(p.name, exts)]
        if pngs and len(pngs) < n_images:
            return [
                f"{d} holds {n_images} images with no mask suffix found among their names; name each mask like "
                f"its image plus a suffix ({pngs[0].stem}_mask.png) and set --data.options "
                '"{mask_suffix: _mask}" if it is not found'
            ]
        return [f"{d} holds {n_images} images and no masks"]
    return []
