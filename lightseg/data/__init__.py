"""Datasets (one file per dataset), transforms and the dataset doctor.

``build_dataset(name, root, split, transform, **options)`` is the one entry point; ``DATASETS`` maps
each name to its class.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from lightseg.data.ade20k import ADE20K
from lightseg.data.base import IGNORE_INDEX, DataError, DatasetNotFoundError, SegDataset
from lightseg.data.bdd100k import BDD100K
from lightseg.data.camvid import CamVid
from lightseg.data.cityscapes import Cityscapes
from lightseg.data.coco_stuff import COCOStuff10k, COCOStuff164k
from lightseg.data.folder import FolderDataset
from lightseg.data.pascal_context import PascalContext59, PascalContext60
from lightseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_eval_transform, build_train_transform
from lightseg.errors import UnknownDatasetError

DATASETS: dict[str, type[SegDataset]] = {
    cls.name: cls
    for cls in (
        ADE20K,
        Cityscapes,
        COCOStuff164k,
        COCOStuff10k,
        PascalContext59,
        PascalContext60,
        BDD100K,
        CamVid,
        FolderDataset,
    )
}


def build_dataset(
    name: str, root: str | Path, split: str, transform: Any = None, **options: Any
) -> SegDataset:
    """The dataset ``name`` (a key of ``DATASETS``) at ``root``, split ``split``.

    ``options`` go to the dataset class (``seed``, ``strict``; for ``folder`` also ``classes``,
    ``palette``, ``ignore_index``, ``reduce_zero_label``, ``mask_suffix``).
    """
    if name not in DATASETS:
        close = difflib.get_close_matches(name, list(DATASETS), n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UnknownDatasetError(f"unknown dataset {name!r}{hint}; known: {', '.join(DATASETS)}")
    return DATASETS[name](root, split, transform, **options)


__all__ = [
    "DATASETS",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DataError",
    "DatasetNotFoundError",
    "SegDataset",
    "build_dataset",
    "build_eval_transform",
    "build_train_transform",
]
