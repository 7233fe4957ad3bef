"""PASCAL-Context on VOC2010, in its 60-class (with background) and 59-class forms.

Masks (``SegmentationClassContext/*.png``, made by the Detail API conversion) hold 0 = background and
1..59 = the 59 object/stuff classes. ``pascal_context60`` uses them as given; ``pascal_context59``
drops background with ``reduce_zero_label`` (0 → 255, k → k−1), the form CGRSeg reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from lightseg.data.ade20k import PALETTE as ADE20K_PALETTE
from lightseg.data.base import DataError, Scan, SegDataset, reduce_zero_label

LAYOUT = """\
  VOCdevkit/VOC2010/                    (pass VOCdevkit, VOC2010 or its parent as the root)
    JPEGImages/<name>.jpg
    SegmentationClassContext/<name>.png
    ImageSets/SegmentationContext/{train,val}.txt   (one <name> per line)"""

# Official class names and colours (mmseg's PascalContextDataset table; index 0 is background).
# fmt: off
CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book",
    "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow",
    "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground", "horse",
    "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate", "platform", "pottedplant",
    "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa", "table", "track",
    "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood",
)
# mmseg's PascalContextDataset palette is the first 60 colours of ADE20K's, the same table.
PALETTE: tuple[tuple[int, int, int], ...] = ADE20K_PALETTE[:60]
# fmt: on


class PascalContext60(SegDataset):
    """PASCAL-Context, 60 classes incl. background: splits ``train`` (4 996) and ``val`` (5 104)."""

    name = "pascal_context60"
    CLASSES = CLASSES
    PALETTE = PALETTE
    splits: ClassVar[dict[str, str]] = {"train": "train", "val": "val"}
    root_candidates = ("", "VOC2010", "VOCdevkit/VOC2010")
    root_markers = ("JPEGImages", "SegmentationClassContext", "ImageSets/SegmentationContext")
    layout = LAYOUT

    def scan(self) -> Scan:
        list_file = self.root / "ImageSets" / "SegmentationContext" / f"{self.split_dir}.txt"
        if not list_file.is_file():
            raise DataError(f"{self.name}: split list {list_file} not found; expected layout:\n{LAYOUT}")
        scan = Scan()
        for name in list_file.read_text().split():
            img = self.root / "JPEGImages" / f"{name}.jpg"
            mask = self.root / "SegmentationClassContext" / f"{name}.png"
            scan.add_listed(img, mask)
        return scan


class PascalContext59(PascalContext60):
    """PASCAL-Context, 59 classes (background ignored via ``reduce_zero_label``)."""

    name = "pascal_context59"
    CLASSES = CLASSES[1:]
    PALETTE = PALETTE[1:]

    def convert_mask(self, raw: np.ndarray, mask_path: Path) -> np.ndarray:
        return reduce_zero_label(super().convert_mask(raw, mask_path))
