"""The dataset doctor: ``lightseg data check`` — find what would break or silently spoil training.

Per split it reports (JSON keys): ``pairs`` (image/mask pairs found), ``missing_masks`` (images
without a mask), ``missing_images`` (masks without an image), ``unreadable`` (files that do not
decode), ``size_mismatch`` (mask size ≠ image size), ``bad_labels`` (label values outside
``0..num_classes-1`` that are not the ignore value 255, after the dataset's label rule, colours
missing from the colour table with their pixel counts — and masks holding only 0 and 255, the
classic binary mask saved with 255 for "foreground", which would train the foreground as *ignore*),
``class_pixels`` (pixels per class name), ``ignore_pixels`` and ``hints``: what to do, each said
once per split however many files it concerns.
"""

from __future__ import annotations

import json
import multiprocessing as mp
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lightseg.data.base import IGNORE_INDEX, DataError, DatasetNotFoundError, SegDataset

PROBLEM_KEYS = ("missing_masks", "missing_images", "unreadable", "size_mismatch", "bad_labels")

BINARY_MASK_PROBLEM = "binary 0/255 mask: 255 is the ignore index, so the foreground would be ignored"
BINARY_MASK_HINT = "binary 0/255 masks: store the foreground as 1 (and list two classes)"


def _image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image, decoding it fully so that truncated files are caught."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.size[1], im.size[0]
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot decode image ({e})") from e


def check_pair(ds: SegDataset, i: int) -> dict[str, Any]:
    """Findings for pair ``i``: ``unreadable``/``size_mismatch``/``bad_labels`` entries, ``hints`` and a
    histogram."""
    image_path, mask_path = ds.files[i]
    out: dict[str, Any] = {"unreadable": [], "size_mismatch": [], "bad_labels": [], "hints": [], "hist": None}
    try:
        size = _image_size(image_path)
    except DataError as e:
        out["unreadable"].append({"file": str(image_path), "error": str(e)})
        size = None
    if mask_path is None:
        return out
    try:
        raw = ds.read_raw_mask(mask_path)
    except DataError as e:
        out["unreadable"].append({"file": str(mask_path), "error": str(e)})
        return out
    if size is not None and raw.shape[:2] != size:
        out["size_mismatch"].append(
            {
                "image": str(image_path),
                "mask": str(mask_path),
                "image_hw": list(size),
                "mask_hw": list(raw.shape[:2]),
            }
        )
    if raw.ndim == 2 and np.unique(raw).tolist() == [0, IGNORE_INDEX]:
        out["bad_labels"].append({"file": str(mask_path), "values": [0, 255], "problem": BINARY_MASK_PROBLEM})
        out["hints"].append(BINARY_MASK_HINT)
    try:
        mask = ds.convert_mask(raw, mask_path)
    except DataError as e:
        lookup = getattr(ds, "colour_lookup", None)
        entry: dict[str, Any] = {"file": str(mask_path), "problem": str(e).removeprefix(f"{mask_path}: ")}
        if raw.ndim == 3 and lookup is not None:
            entry["colours"] = [[*c, n] for c, n in lookup.unknown(raw)]  # every one, with its pixel count
            out["hints"].append(
                f"colours missing from the colour table ({lookup.source}): add a row for each"
            )
        else:
            entry["values"] = np.unique(raw).tolist()[-5:]
        out["bad_labels"].append(entry)
        return out
    hist = np.bincount(mask.ravel(), minlength=256)
    bad = [v for v in np.flatnonzero(hist).tolist() if v >= ds.num_classes and v != IGNORE_INDEX]
    if bad:
        out["bad_labels"].append(
            {
                "file": str(mask_path),
                "values": bad,
                "problem": f"values outside 0..{ds.num_classes - 1} and not ignore (255) after the label rule",
            }
        )
        if len(bad) == 1:
            out["hints"].append(f"if {bad[0]} marks unlabelled pixels: --data.ignore_index {bad[0]}")
    out["hist"] = hist
    return out


UNLABELLED_NAMES = ("void", "unlabelled", "unlabeled", "ignore", "__ignore__", "unknown", "undefined")


def _unlabelled_class_hints(ds: SegDataset) -> list[str]:
    """A class whose name says "not labelled" (Kaggle's ``Void``) is trained as a class unless ignored."""
    return [
        f"class {name!r} looks like unlabelled pixels; if it is: --data.ignore_index {name} (it then "
        "leaves the class list and its pixels are ignored)"
        for name in ds.classes
        if name.strip().lower() in UNLABELLED_NAMES and ds.name == "folder"
    ]


_WORKER_DS: SegDataset | None = None


def _init_worker(ds: SegDataset) -> None:
    global _WORKER_DS
    _WORKER_DS = ds


def _check_in_worker(i: int) -> dict[str, Any]:
    assert _WORKER_DS is not None
    return check_pair(_WORKER_DS, i)


def check_dataset(ds: SegDataset, workers: int = 0) -> dict[str, Any]:
    """The doctor's report for one split (see the module docstring for the keys)."""
    scan = ds.scan_result
    report: dict[str, Any] = {
        "pairs": len(scan.pairs),
        "missing_masks": [str(p) for p in scan.missing_masks],
        "missing_images": [str(p) for p in scan.missing_images],
        "unreadable": [],
        "size_mismatch": [],
        "bad_labels": [],
    }
    hints: dict[str, None] = dict.fromkeys([ds.pairing_hint] if getattr(ds, "pairing_hint", None) else [])
    hist = np.zeros(256, dtype=np.int64)
    indices = range(len(ds.files))
    if workers > 1 and len(ds.files) > 32:
        with mp.get_context().Pool(workers, initializer=_init_worker, initargs=(ds,)) as pool:
            results: Iterable[dict[str, Any]] = list(pool.imap(_check_in_worker, indices, chunksize=16))
    else:
        results = (check_pair(ds, i) for i in indices)
    for r in results:
        for key in ("unreadable", "size_mismatch", "bad_labels"):
            report[key] += r[key]
        hints.update(dict.fromkeys(r["hints"]))
        if r["hist"] is not None:
            hist += r["hist"]
    report["class_pixels"] = {name: int(hist[k]) for k, name in enumerate(ds.classes)}
    hints.update(dict.fromkeys(_unlabelled_class_hints(ds)))
    report["ignore_pixels"] = int(hist[IGNORE_INDEX])
    report["hints"] = list(hints)
    report["ok"] = not any(report[k] for k in PROBLEM_KEYS) and report["pairs"] > 0
    return report


def default_splits(ds_cls: type[SegDataset], root: Path, mask_suffix: str | None = None) -> list[str]:
    """The splits to check when none is named: the dataset's own, or for ``folder`` what is on disk
    (``all`` where ``val`` is held out: every pair once)."""
    if ds_cls.name != "folder":
        return list(ds_cls.splits)
    from lightseg.data.layouts import find_layout

    layout = find_layout(Path(root), mask_suffix)
    if layout.holdout_from:
        return [s for s in layout.splits if s not in ("train", "val")]  # ... and 'all' holds each pair once
    return [s for s in layout.splits if s != "all"]


def check(
    name: str, root: str | Path, splits: list[str] | None = None, workers: int = 0, **options: Any
) -> dict[str, dict[str, Any]]:
    """Check the named splits (default: every split the dataset has on disk) -> {split: report}."""
    from lightseg.data import DATASETS, build_dataset

    if name not in DATASETS:
        build_dataset(name, root, "train")  # raises the close-match error
    explicit = splits is not None
    reports: dict[str, dict[str, Any]] = {}
    for split in splits or default_splits(DATASETS[name], Path(root), options.get("mask_suffix")):
        try:
            ds = build_dataset(name, root, split, strict=False, **options)
        except DatasetNotFoundError:
            if explicit or split == "train":
                raise
            continue  # an optional split (e.g. test) that this copy does not have
        reports[split] = check_dataset(ds, workers)
    if not reports:
        raise DataError(f"{name} at {root}: none of the splits {DATASETS[name].splits or ''} found")
    return reports


def format_text(reports: dict[str, dict[str, Any]], limit: int = 10) -> str:
    """Human-readable version of :func:`check`'s result."""
    lines = []
    for split, r in reports.items():
        lines.append(f"[{split}] {r['pairs']} pairs — {'OK' if r['ok'] else 'PROBLEMS FOUND'}")
        for key in PROBLEM_KEYS:
            items = r[key]
            if not items:
                continue
            lines.append(f"  {key}: {len(items)}")
            for it in items[:limit]:
                lines.append(f"    {it if isinstance(it, str) else json.dumps(it)}")
            if len(items) > limit:
                lines.append(f"    … {len(items) - limit} more (use --format json)")
        for hint in r.get("hints", []):
            lines.append(f"  hint: {hint}")
        total = sum(r["class_pixels"].values()) or 1
        lines.append(f"  class pixels (ignore: {r['ignore_pixels']}):")
        for cls, n in r["class_pixels"].items():
            lines.append(f"    {cls:<24} {n:>14,d}  {100 * n / total:6.2f}%{'  (absent)' if n == 0 else ''}")
    return "\n".join(lines)


def run_check(data_cfg: Any, splits: list[str] | None, fmt: str = "text", workers: int = 0) -> int:
    """``lightseg data check``: print the report; exit status 1 when anything is wrong, else 0."""
    from lightseg.data import dataset_options

    reports = check(data_cfg.dataset, data_cfg.root, splits, workers, **dataset_options(data_cfg))
    print(json.dumps(reports, indent=2) if fmt == "json" else format_text(reports))
    return 0 if all(r["ok"] for r in reports.values()) else 1
