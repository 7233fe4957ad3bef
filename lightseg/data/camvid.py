"""CamVid, 11 classes, the SegNet copy (480×360); see ``../shared/data/README.md``.

Label rule: stored 0..10 are the classes, 11 ("unlabelled") → 255. Results on this copy must be
labelled "CamVid 480x360" (papers usually use 960×720).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from lightseg.data.base import IGNORE_INDEX, DataError, Scan, SegDataset, SplitNotFoundError, lut_mask

LAYOUT = """\
  camvid/                               (pass this folder or its parent as the root)
    {train,val,test}.txt                lines "/SegNet/CamVid/<split>/<name>.png /SegNet/CamVid/<split>annot/<name>.png"
    {train,val,test}/<name>.png         RGB images
    {train,val,test}annot/<name>.png    8-bit labels 0..10, 11 = unlabelled"""

# SegNet's CamVid class order and colours (shared/data/README.md).
CLASSES = (
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
)  # fmt: skip
PALETTE = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
)  # fmt: skip

_LUT = np.arange(256, dtype=np.uint8)
_LUT[11] = IGNORE_INDEX  # "unlabelled"

_LIST_PREFIX = "/SegNet/CamVid/"


class CamVid(SegDataset):
    """CamVid (SegNet copy): splits ``train`` (367), ``val`` (101), ``test`` (233), from the split lists."""

    name = "camvid"
    CLASSES = CLASSES
    PALETTE = PALETTE
    splits: ClassVar[dict[str, str]] = {"train": "train", "val": "val", "test": "test"}
    root_candidates = ("", "camvid", "CamVid")
    root_markers = ("train.txt",)
    layout = LAYOUT

    def scan(self) -> Scan:
        list_file = self.root / f"{self.split_dir}.txt"
        if not list_file.is_file():
            raise SplitNotFoundError(f"camvid: split list {list_file} not found; expected layout:\n{LAYOUT}")
        scan = Scan()
        for n, line in enumerate(list_file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2:
                raise DataError(f"{list_file}:{n}: expected '<image> <mask>', got {line!r}")
            img, mask = (self.root / p.removeprefix(_LIST_PREFIX).lstrip("/") for p in parts)
            scan.add_listed(img, mask)
        return scan

    def convert_mask(self, raw: np.ndarray, mask_path: Path) -> np.ndarray:
        return lut_mask(raw, _LUT, mask_path)
