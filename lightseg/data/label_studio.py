"""Label Studio's JSON export to class-id masks (``lightseg data convert --label-studio EXPORT.json``).

Label Studio keeps semantic labels as regions: brush strokes (``brushlabels``, an RLE of the
RGBA layer, from its ``<BrushLabels>`` tag) and polygons (``polygonlabels``, points in percent of the
image). Its "Brush labels to PNG" export writes one black-and-white PNG per region and no images,
so the one export that holds everything is "JSON": the tasks, each with its image (``data.image``)
and its annotations. Each task becomes one mask: class 0 ``background`` where nothing is drawn,
then the regions in the order they were drawn (later ones on top). Classes are ``background``
and the labels in sorted order, unless ``classes`` names them (``background`` first).

Images are found in ``images_dir`` by file name; Label Studio prefixes uploads with 8 hex digits
and a dash (``3f2a1b4c-street.jpg``), and either name is accepted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from lightseg.data.base import IMAGE_SUFFIXES, DataError

UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")


def decode_rle(rle: Sequence[int], size: int) -> np.ndarray:
    """Label Studio's brush RLE (thi.ng/rle-pack: 32-bit count, 5-bit word size, four 4-bit run
    sizes, then runs and literals) -> ``size`` uint8 values."""
    bits = np.unpackbits(np.asarray(rle, dtype=np.uint8))
    pos = 0

    def read(n: int) -> int:
        nonlocal pos
        chunk = bits[pos : pos + n]
        pos += n
        if len(chunk) < n:
            raise DataError("Label Studio brush RLE ends early")
        return int("".join("1" if b else "0" for b in chunk), 2) if n else 0

    num, word = read(32), read(5) + 1
    run_sizes = [read(4) + 1 for _ in range(4)]
    if num != size:
        raise DataError(f"Label Studio brush RLE holds {num} values, the image needs {size}")
    out = np.zeros(num, dtype=np.uint8)
    i = 0
    while i < num:
        repeat = read(1)
        j = min(i + 1 + read(run_sizes[read(2)]), num)
        if repeat:
            out[i:j] = read(word)
        else:
            for k in range(i, j):
                out[k] = read(word)
        i = j
    return out


def _region(result: dict[str, Any], height: int, width: int) -> tuple[str, np.ndarray] | None:
    """``(label, boolean mask)`` of one result; None for results that are not brush or polygon labels."""
    kind = str(result.get("type", "")).lower()
    value = result.get("value", {})
    if kind == "brushlabels" and value.get("format", "rle") == "rle":
        alpha = decode_rle(value["rle"], height * width * 4).reshape(height, width, 4)[..., 3]
        return value["brushlabels"][0], alpha > 0
    if kind == "polygonlabels":
        points = [(x * width / 100.0, y * height / 100.0) for x, y in value["points"]]
        canvas = Image.new("L", (width, height), 0)
        ImageDraw.Draw(canvas).polygon(points, fill=1)
        return value["polygonlabels"][0], np.asarray(canvas, dtype=bool)
    return None


def _image_for(task: dict[str, Any], images: dict[str, Path], where: str) -> Path:
    ref = str(next(iter(task.get("data", {}).values()), ""))
    name = ref.rsplit("/", 1)[-1].split("?", 1)[0]
    for candidate in (name, UPLOAD_PREFIX.sub("", name)):
        if candidate in images:
            return images[candidate]
    raise DataError(f"{where}: task {task.get('id')}'s image {ref!r} is not in the images folder (by name)")


def convert_label_studio(
    export: str | Path, images_dir: str | Path, out: str | Path, classes: Sequence[str] | None = None
) -> dict[str, int]:
    """Write ``out/images/``, ``out/masks/`` (class ids) and ``out/classes.json`` from a Label Studio
    JSON export and the folder of its images; ``out`` must be new or empty. Returns ``{"all": n}``."""
    from lightseg.data.convert import new_folder
    from lightseg.meta import default_palette
    from lightseg.visualize import colorize

    export, images_dir = Path(export).expanduser(), Path(images_dir).expanduser()
    try:
        tasks = json.loads(export.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{export}: not a Label Studio JSON export ({e})") from None
    if not isinstance(tasks, list):
        raise DataError(f"{export}: a Label Studio JSON export is a list of tasks")
    images = {p.name: p for p in images_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES}
    drawn = []
    for task in tasks:
        done = [a for a in task.get("annotations", []) if not a.get("was_cancelled")]
        if not done:
            continue
        results = done[-1].get("result", [])
        sized = next((r for r in results if "original_height" in r), None)
        image = _image_for(task, images, str(export))
        if sized is None:
            with Image.open(image) as im:
                height, width = im.height, im.width
        else:
            height, width = int(sized["original_height"]), int(sized["original_width"])
        regions = [r for r in (_region(res, height, width) for res in results) if r is not None]
        drawn.append((image, height, width, regions))
    labels = sorted({label for *_, regions in drawn for label, _ in regions})
    names = list(classes) if classes else ["background", *labels]
    unknown = sorted(set(labels) - set(names))
    if unknown:
        raise DataError(f"{export}: labels {unknown} are not among the classes {names}")
    palette = default_palette(len(names))
    with new_folder(out) as work:
        (work / "images").mkdir()
        (work / "masks").mkdir()
        for image, height, width, regions in drawn:
            mask = np.zeros((height, width), dtype=np.uint8)
            for label, region in regions:
                mask[region] = names.index(label)
            (work / "images" / image.name).write_bytes(image.read_bytes())
            colorize(mask, palette).save(work / "masks" / f"{image.stem}.png")
        rows = [{"name": n, "color": list(c)} for n, c in zip(names, palette)]
        (work / "classes.json").write_text("[\n" + ",\n".join(f"  {json.dumps(r)}" for r in rows) + "\n]\n")
    return {"all": len(drawn)}
