"""BDD100K semantic segmentation, the 19 Cityscapes classes (train ids, 255 ignore; used as given).

Two layouts users have (both under a ``bdd100k/`` folder; pass it or its parent as the root)::

    current (BDD100K 10k release)              older (bdd100k_seg release)
    images/10k/{train,val,test}/*.jpg          seg/images/{train,val,test}/*.jpg
    labels/sem_seg/masks/{train,val}/*.png     seg/labels/{train,val}/*_train_id.png
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from lightseg.data.base import DatasetNotFoundError, Scan, SegDataset, list_files, match_pairs, strip_suffix
from lightseg.data.cityscapes import CLASSES, PALETTE

LAYOUT = """\
  bdd100k/                              (pass this folder or its parent as the root)
    images/10k/{train,val,test}/*.jpg
    labels/sem_seg/masks/{train,val}/*.png
  or the older release:
    seg/images/{train,val,test}/*.jpg
    seg/labels/{train,val}/*_train_id.png"""


class BDD100K(SegDataset):
    """BDD100K sem_seg: splits ``train`` (7 000), ``val`` (1 000), ``test`` (2 000, unlabelled)."""

    name = "bdd100k"
    CLASSES = CLASSES
    PALETTE = PALETTE
    splits: ClassVar[dict[str, str]] = {"train": "train", "val": "val", "test": "test"}
    root_candidates = ("", "bdd100k")
    layout = LAYOUT

    def resolve_root(self, root: Path) -> Path:
        # either layout marks a root; remember which one was found
        for cand in self.root_candidates:
            base = root / cand if cand else root
            if (base / "images" / "10k").is_dir():
                self._dirs = (Path("images/10k"), Path("labels/sem_seg/masks"), (".png",))
                return base
            if (base / "seg" / "images").is_dir():
                self._dirs = (Path("seg/images"), Path("seg/labels"), ("_train_id.png", ".png"))
                return base
        if not root.is_dir():
            return super().resolve_root(root)  # the "does not exist" error with close matches
        raise DatasetNotFoundError(f"{root} does not look like a bdd100k root; expected layout:\n{LAYOUT}")

    def scan(self) -> Scan:
        img_rel, mask_rel, mask_suffixes = self._dirs
        img_dir = self.require_dir(self.root / img_rel / self.split_dir)
        images = {p.stem: p for p in list_files(img_dir, (".jpg", ".jpeg", ".png"))}
        mask_dir = self.root / mask_rel / self.split_dir
        if not mask_dir.is_dir():
            return match_pairs(images, None)
        masks = {}
        for p in list_files(mask_dir, (".png",)):
            masks[strip_suffix(p.name, mask_suffixes)] = p
        return match_pairs(images, masks)
