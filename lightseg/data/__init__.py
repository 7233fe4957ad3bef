"""Datasets (one file per dataset), transforms and the dataset doctor.

``build_dataset(name, root, split, transform, **options)`` is the one entry point; ``DATASETS`` maps
each name to its class.
"""

from __future__ import annotations

import difflib
import inspect
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
from lightseg.errors import ConfigError, UnknownDatasetError

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


# DataConfig fields that are dataset options (passed on only when set).
OPTION_FIELDS = ("classes", "palette", "ignore_index", "reduce_zero_label", "val_fraction", "split_seed")


def dataset_options(data_cfg: Any) -> dict[str, Any]:
    """Keyword options for :func:`build_dataset` from a ``DataConfig``: its ``options`` plus the
    option fields that are set; a field the dataset does not take is an error naming it."""
    opts = dict(data_cfg.options)
    for key in OPTION_FIELDS:
        value = getattr(data_cfg, key)
        if value is not None:
            opts[key] = value
    cls = DATASETS.get(data_cfg.dataset)
    if cls is not None:
        accepted = [
            p
            for p in inspect.signature(cls.__init__).parameters
            if p not in ("self", "root", "split", "transform")
        ]
        for key in opts:
            if key not in accepted:
                raise ConfigError(
                    f"--data.{key}: not an option of dataset {data_cfg.dataset!r} (its options: "
                    f"{', '.join(accepted)}); use --data.dataset folder for your own data"
                )
    return opts


def build_dataset_from_config(data_cfg: Any, split: str, transform: Any = None) -> SegDataset:
    """The split ``split`` of the dataset a ``DataConfig`` describes."""
    return build_dataset(data_cfg.dataset, data_cfg.root, split, transform, **dataset_options(data_cfg))


def build_dataset(
    name: str, root: str | Path, split: str, transform: Any = None, **options: Any
) -> SegDataset:
    """The dataset ``name`` (a key of ``DATASETS``) at ``root``, split ``split``.

    ``options`` go to the dataset class (``seed``, ``strict``; for ``folder`` also ``classes``,
    ``palette``, ``ignore_index``, ``reduce_zero_label``, ``mask_suffix``, ``val_fraction``,
    ``split_seed``).
    """
    return dataset_class(name)(root, split, transform, **options)


def dataset_class(name: str, where: str = "") -> type[SegDataset]:
    """The class registered as ``name``; an unknown name fails with close matches (the message
    starts with ``where``, e.g. the option that gave the name)."""
    if name not in DATASETS:
        close = difflib.get_close_matches(name, list(DATASETS), n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        prefix = f"{where}: " if where else ""
        raise UnknownDatasetError(f"{prefix}unknown dataset {name!r}{hint}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


__all__ = [
    "DATASETS",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DataError",
    "DatasetNotFoundError",
    "SegDataset",
    "build_dataset",
    "build_dataset_from_config",
    "build_eval_transform",
    "build_train_transform",
    "dataset_class",
    "dataset_options",
]
