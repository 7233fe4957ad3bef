"""COCO-Stuff, 171 classes (80 things + 91 stuff), in the two releases the papers use.

* 164k (``coco_stuff164k``): masks hold train ids 0..170 with 255 ignore, used as given.
* 10k (``coco_stuff10k``): the converted masks hold 1..171 with 0 unlabelled, so the label rule is
  ``reduce_zero_label`` (mmseg: ``reduce_zero_label=True`` for 10k, False for 164k).

Masks are named ``<image stem>_labelTrainIds.png`` (mmseg's converter) or ``<image stem>.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from lightseg.data.base import Scan, SegDataset, list_files, match_pairs, reduce_zero_label, strip_suffix

LAYOUT_164K = """\
  coco_stuff164k/                       (pass this folder as the root)
    images/{train2017,val2017}/*.jpg
    annotations/{train2017,val2017}/*_labelTrainIds.png   (or *.png)"""

LAYOUT_10K = """\
  coco_stuff10k/                        (pass this folder as the root)
    images/{train2014,test2014}/*.jpg
    annotations/{train2014,test2014}/*_labelTrainIds.png  (or *.png)"""

MASK_SUFFIXES = ("_labelTrainIds.png", ".png")

# Official class names and colours (mmseg's COCOStuffDataset table).
# fmt: off
CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush", "banner", "blanket", "branch", "bridge",
    "building-other", "bush", "cabinet", "cage", "cardboard", "carpet", "ceiling-other", "ceiling-tile",
    "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff",
    "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog",
    "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves",
    "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad",
    "river", "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper",
    "snow", "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent", "textile-other",
    "towel", "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone",
    "wall-tile", "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 192, 64), (0, 192, 64), (0, 64, 96), (128, 192, 192), (0, 64, 64), (0, 192, 224), (0, 192, 192),
    (128, 192, 64), (0, 192, 96), (128, 192, 64), (128, 32, 192), (0, 0, 224), (0, 0, 64), (0, 160, 192),
    (128, 0, 96), (128, 0, 192), (0, 32, 192), (128, 128, 224), (0, 0, 192), (128, 160, 192), (128, 128, 0),
    (128, 0, 32), (128, 32, 0), (128, 0, 128), (64, 128, 32), (0, 160, 0), (0, 0, 0), (192, 128, 160),
    (0, 32, 0), (0, 128, 128), (64, 128, 160), (128, 160, 0), (0, 128, 0), (192, 128, 32), (128, 96, 128),
    (0, 0, 128), (64, 0, 32), (0, 224, 128), (128, 0, 0), (192, 0, 160), (0, 96, 128), (128, 128, 128),
    (64, 0, 160), (128, 224, 128), (128, 128, 64), (192, 0, 32), (128, 96, 0), (128, 0, 192), (0, 128, 32),
    (64, 224, 0), (0, 0, 64), (128, 128, 160), (64, 96, 0), (0, 128, 192), (0, 128, 160), (192, 224, 0),
    (0, 128, 64), (128, 128, 32), (192, 32, 128), (0, 64, 192), (0, 0, 32), (64, 160, 128), (128, 64, 64),
    (128, 0, 160), (64, 32, 128), (128, 192, 192), (0, 0, 160), (192, 160, 128), (128, 192, 0),
    (128, 0, 96), (192, 32, 0), (128, 64, 128), (64, 128, 96), (64, 160, 0), (0, 64, 0), (192, 128, 224),
    (64, 32, 0), (0, 192, 128), (64, 128, 224), (192, 160, 0), (0, 192, 0), (192, 128, 96), (192, 96, 128),
    (0, 64, 128), (64, 0, 96), (64, 224, 128), (128, 64, 0), (192, 0, 224), (64, 96, 128), (128, 192, 128),
    (64, 0, 224), (192, 224, 128), (128, 192, 64), (192, 0, 96), (192, 96, 0), (128, 64, 192), (0, 128, 96),
    (0, 224, 0), (64, 64, 64), (128, 128, 224), (0, 96, 0), (64, 192, 192), (0, 128, 224), (128, 224, 0),
    (64, 192, 64), (128, 128, 96), (128, 32, 128), (64, 0, 192), (0, 64, 96), (0, 160, 128), (192, 0, 64),
    (128, 64, 224), (0, 32, 128), (192, 128, 192), (0, 64, 224), (128, 160, 128), (192, 128, 0),
    (128, 64, 32), (128, 32, 64), (192, 0, 128), (64, 192, 32), (0, 160, 64), (64, 0, 0), (192, 192, 160),
    (0, 32, 64), (64, 128, 128), (64, 192, 160), (128, 160, 64), (64, 128, 0), (192, 192, 32),
    (128, 96, 192), (64, 0, 128), (64, 64, 32), (0, 224, 192), (192, 0, 0), (192, 64, 160), (0, 96, 192),
    (192, 128, 128), (64, 64, 160), (128, 224, 192), (192, 128, 64), (192, 64, 32), (128, 96, 64),
    (192, 0, 192), (0, 192, 32), (64, 224, 64), (64, 0, 64), (128, 192, 160), (64, 96, 64), (64, 128, 192),
    (0, 192, 160), (192, 224, 64), (64, 128, 64), (128, 192, 32), (192, 32, 192), (64, 64, 192),
    (0, 64, 32), (64, 160, 192), (192, 64, 64), (128, 64, 160), (64, 32, 192), (192, 192, 192),
    (0, 64, 160), (192, 160, 192), (192, 192, 0), (128, 64, 96), (192, 32, 64), (192, 64, 128),
    (64, 192, 96), (64, 160, 64), (64, 64, 0),
)
# fmt: on


class COCOStuff164k(SegDataset):
    """COCO-Stuff 164k: splits ``train`` (train2017, 118k) and ``val`` (val2017, 5k)."""

    name = "coco_stuff164k"
    CLASSES = CLASSES
    PALETTE = PALETTE
    splits: ClassVar[dict[str, str]] = {"train": "train2017", "val": "val2017"}
    root_markers = ("images", "annotations")
    layout = LAYOUT_164K

    def scan(self) -> Scan:
        img_dir = self.require_dir(self.root / "images" / self.split_dir)
        images = {p.stem: p for p in list_files(img_dir, (".jpg", ".jpeg", ".png"))}
        ann_dir = self.root / "annotations" / self.split_dir
        if not ann_dir.is_dir():
            return match_pairs(images, None)
        return match_pairs(
            images, {strip_suffix(p.name, MASK_SUFFIXES): p for p in list_files(ann_dir, (".png",))}
        )


class COCOStuff10k(COCOStuff164k):
    """COCO-Stuff 10k: splits ``train`` (train2014, 9k) and ``val``/``test`` (test2014, 1k)."""

    name = "coco_stuff10k"
    splits: ClassVar[dict[str, str]] = {"train": "train2014", "val": "test2014", "test": "test2014"}
    layout = LAYOUT_10K

    def convert_mask(self, raw: np.ndarray, mask_path: Path) -> np.ndarray:
        return reduce_zero_label(super().convert_mask(raw, mask_path))
