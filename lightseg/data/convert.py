"""``lightseg data convert``: your own data, once, as class-id masks in the plainest layout.

Any folder dataset (any layout, colour or id masks, any class file) is written as
``<out>/images/<split>/`` (the image files, hard-linked where the file system allows, else copied),
``<out>/masks/<split>/<name>.png`` (palette PNGs whose stored values are the class ids, 255 ignore,
the palette the class colours) and ``<out>/classes.json`` (names and colours). Loading the result
skips the colour look-up and the label options: train with ``--data.root <out>`` and nothing else.
A held-out validation split is written as it was drawn, so it stays the same.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lightseg.data.base import DataError


def _place(src: Path, dst: Path) -> None:
    try:
        os.link(src.resolve(), dst)
    except OSError:
        shutil.copy2(src, dst)


def splits_to_write(root: Path, options: dict[str, Any]) -> list[str]:
    """Every split on disk, or ``train`` and ``val`` as drawn where ``val`` is held out."""
    from lightseg.data.layouts import find_layout

    layout = find_layout(root, options.get("mask_suffix"))
    named = [s for s in layout.splits if s != "all"]
    return named or ["all"]


@contextlib.contextmanager
def new_folder(out: str | Path) -> Iterator[Path]:
    """A folder to write ``out`` in: made beside it and moved there when the block ends without an
    error (else removed), so a bad file stops a conversion without leaving half a dataset. ``out``
    must not exist or be empty."""
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} is not an empty folder; convert writes a new one and changes nothing else")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield work
        if out.exists():
            out.rmdir()
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def convert(root: str | Path, out: str | Path, **options: Any) -> dict[str, int]:
    """Write the folder dataset at ``root`` to ``out`` (which must be new or empty); returns the pairs
    written per split."""
    with new_folder(out) as work:
        return _write(Path(root).expanduser(), work, options)


def _write(root: Path, out: Path, options: dict[str, Any]) -> dict[str, int]:
    from lightseg.data import build_dataset
    from lightseg.visualize import colorize

    counts: dict[str, int] = {}
    classes: list[str] = []
    palette: list[Any] = []
    for split in splits_to_write(root, options):
        ds = build_dataset("folder", root, split, **options)
        classes, palette = ds.classes, ds.palette
        images, masks = out / "images" / split, out / "masks" / split
        images.mkdir(parents=True)
        masks.mkdir(parents=True)
        used: set[str] = set()
        for i, (image_path, mask_path) in enumerate(ds.files):
            stem, k = image_path.stem, 1
            while stem in used:  # one name in two subsets that were merged (Supervisely datasets)
                stem, k = f"{image_path.stem}_{k}", k + 1
            used.add(stem)
            mask = ds.load_mask(i)
            assert mask is not None and mask_path is not None
            ds._check_labels(mask, mask_path)
            _place(image_path, images / f"{stem}{image_path.suffix}")
            colorize(mask, palette).save(masks / f"{stem}.png")
        counts[split] = len(ds)
    table = [{"name": n, "color": list(c)} for n, c in zip(classes, palette)]
    (out / "classes.json").write_text("[\n" + ",\n".join(f"  {json.dumps(row)}" for row in table) + "\n]\n")
    return counts
