"""PASCAL-Context on VOC2010, in its 60-class (with background) and 59-class forms.

Masks (``SegmentationClassContext/*.png``, made by the Detail API conversion) hold 0 = background and
1..59 = the 59 object/stuff classes. ``pascal_context60`` uses them as given; ``pascal_context59``
drops background with ``reduce_zero_label`` (0 → 255, k → k−1), the form CGRSeg reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

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
PALETTE: tuple[tuple[int, int, int], ...] = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
    (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7),
    (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4), (255, 51, 7),
    (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255), (255, 7, 71), (255, 9, 224),
    (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255), (8, 255, 214), (7, 255, 224), (255, 184, 6),
    (10, 255, 71), (255, 41, 10), (7, 255, 255), (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7),
    (255, 122, 8), (0, 255, 20), (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20),
    (0, 163, 255), (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0),
    (153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
)
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
