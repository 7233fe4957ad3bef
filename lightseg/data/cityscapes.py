"""Cityscapes, 19 evaluation classes (train ids); layout in ``LAYOUT`` (mmseg convention).

Label rule: read ``*_gtFine_labelTrainIds.png`` when present (already train ids, 255 ignore);
otherwise read ``*_gtFine_labelIds.png`` and map the 34 official label ids to train ids on the fly
with ``LABEL_ID_TO_TRAIN_ID`` (cityscapesScripts ``labels.py``; ids not listed there → 255).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from lightseg.data.base import IGNORE_INDEX, Scan, SegDataset, list_files, lut_mask, match_pairs, strip_suffix

LAYOUT = """\
  cityscapes/                           (pass this folder as the root)
    leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png
                                        (or ..._gtFine_labelIds.png, converted on the fly)"""

IMAGE_SUFFIX = "_leftImg8bit.png"
TRAIN_ID_SUFFIX = "_gtFine_labelTrainIds.png"
LABEL_ID_SUFFIX = "_gtFine_labelIds.png"

# cityscapesScripts labels.py: the label ids whose trainId is not 255, in train-id order
# (road 7, sidewalk 8, building 11, wall 12, fence 13, pole 17, traffic light 19, traffic sign 20,
# vegetation 21, terrain 22, sky 23, person 24, rider 25, car 26, truck 27, bus 28, train 31,
# motorcycle 32, bicycle 33). Every other id (0..6, 9, 10, 14..16, 18, 29, 30, -1) is ignored.
_EVAL_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
LABEL_ID_TO_TRAIN_ID = np.full(256, IGNORE_INDEX, dtype=np.uint8)
LABEL_ID_TO_TRAIN_ID[list(_EVAL_LABEL_IDS)] = np.arange(len(_EVAL_LABEL_IDS), dtype=np.uint8)

# Official class names and colours (cityscapesScripts, mmseg's CityscapesDataset table).
# fmt: off
CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)
# fmt: on


class Cityscapes(SegDataset):
    """Cityscapes fine annotations: splits ``train`` (2 975), ``val`` (500), ``test`` (1 525)."""

    name = "cityscapes"
    CLASSES = CLASSES
    PALETTE = PALETTE
    splits: ClassVar[dict[str, str]] = {"train": "train", "val": "val", "test": "test"}
    root_candidates = ("", "cityscapes")
    root_markers = ("leftImg8bit", "gtFine")
    layout = LAYOUT

    def scan(self) -> Scan:
        img_dir = self.require_dir(self.root / "leftImg8bit" / self.split_dir)
        images = {}
        for p in list_files(img_dir, (IMAGE_SUFFIX,), recursive=True):
            images[str(p.relative_to(img_dir))[: -len(IMAGE_SUFFIX)]] = p
        gt_dir = self.root / "gtFine" / self.split_dir
        if not gt_dir.is_dir():
            return match_pairs(images, None)
        masks: dict[str, Path] = {}
        # labelIds first, so that a labelTrainIds file of the same frame replaces it
        for suffix in (LABEL_ID_SUFFIX, TRAIN_ID_SUFFIX):
            for p in list_files(gt_dir, (suffix,), recursive=True):
                masks[str(p.relative_to(gt_dir))[: -len(suffix)]] = p
        return match_pairs(images, masks)

    def convert_mask(self, raw: np.ndarray, mask_path: Path) -> np.ndarray:
        if strip_suffix(mask_path.name, (LABEL_ID_SUFFIX,)) is not None:
            return lut_mask(raw, LABEL_ID_TO_TRAIN_ID, mask_path)
        return super().convert_mask(raw, mask_path)
