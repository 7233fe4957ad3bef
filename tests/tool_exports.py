"""Folders written the way labelling tools and dataset publishers write semantic masks, for the tests.

Each writer takes samples ``(name, image H x W x 3 uint8, class ids H x W uint8)`` and lays them out
as the tool does, from its documentation or its source:

- CVAT "Segmentation mask 1.1" with "Save images" (docs.cvat.ai, format-smask; Datumaro's VOC
  exporter): ``labelmap.txt`` (``# label:color_rgb:parts:actions`` then ``name:r,g,b::``),
  ``ImageSets/Segmentation/default.txt``, ``SegmentationClass/`` colour PNGs, ``SegmentationObject/``
  instance PNGs, ``JPEGImages/``;
- Kaggle CamVid: ``train/``, ``train_labels/<name>_L.png`` colour PNGs, ``val/``, ``val_labels/``,
  ``test/``, ``test_labels/``, ``class_dict.csv`` (``name,r,g,b``);
- Roboflow "Semantic Segmentation Masks" (luxonis-ml's parser of it, Roboflow's notebooks):
  ``train/``, ``valid/``, ``test/``, each with ``<name>_jpg.rf.<hash>.jpg``, ``..._mask.png`` (grey
  class ids) and ``_classes.csv`` (``Pixel Value, Class``), README.roboflow.txt at the top;
- Supervisely "Export as masks" (supervisely-ecosystem/export-as-masks, src/main.py): a tar holding
  ``<id>_<project>/`` with ``meta.json``, ``obj_class_to_machine_color.json`` (``{name: [i, i, i]}``,
  from 1; 0 is unlabelled), ``<dataset>/img/``, ``ann/<image>.json``, ``masks_machine/<stem>.png``
  (grey ids) and ``masks_human/<stem>.png`` (image and overlay side by side);
- labelme2voc.py (wkentaro/labelme examples/semantic_segmentation): ``JPEGImages/``,
  ``SegmentationClass/<stem>.npy`` and ``SegmentationClassPNG/<stem>.png`` (palette PNGs in
  imgviz's label colormap, -1 = ``__ignore__`` stored as 255), ``SegmentationClassVisualization/``
  and ``class_names.txt`` (``_background_`` first);
- Pascal VOC 2012: ``VOCdevkit/VOC2012/JPEGImages``, ``SegmentationClass`` (palette PNGs, 255 the
  object borders), ``ImageSets/Segmentation/{train,val}.txt``, no class file;
- masks beside their images with a suffix (``_mask``, ``_label``, ``_L``, ``_gt``, ``_seg``) and a
  ``classes.txt``.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

Sample = tuple[str, np.ndarray, np.ndarray]


def label_colormap(n: int = 256) -> np.ndarray:
    """imgviz.label_colormap / the Pascal VOC colour algorithm (bits of the index spread over r, g, b)."""
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        k, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((k >> 0) & 1) << (7 - j)
            g |= ((k >> 1) & 1) << (7 - j)
            b |= ((k >> 2) & 1) << (7 - j)
            k >>= 3
        cmap[i] = (r, g, b)
    return cmap


def _save(path: Path, array: np.ndarray, palette: np.ndarray | None = None, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(array)
    if palette is not None:
        im = im.convert("P")  # grey L -> P keeps the values as palette indices
        im.putpalette(palette.reshape(-1).tolist())
    im.save(path, **kw)


def _colours(ids: np.ndarray, colours: Sequence[Sequence[int]]) -> np.ndarray:
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(colours)] = np.asarray(colours, dtype=np.uint8)
    return table[ids]


def write_cvat_segmentation_mask(dest: Path, samples: list[Sample], names, colours) -> Path:
    lines = ["# label:color_rgb:parts:actions"] + [
        f"{n}:{c[0]},{c[1]},{c[2]}::" for n, c in zip(names, colours)
    ]
    dest.mkdir(parents=True)
    (dest / "labelmap.txt").write_text("\n".join(lines) + "\n")
    (dest / "ImageSets/Segmentation").mkdir(parents=True)
    (dest / "ImageSets/Segmentation/default.txt").write_text("".join(f"{n}\n" for n, _, _ in samples))
    objects = label_colormap()
    for name, image, ids in samples:
        _save(dest / "JPEGImages" / f"{name}.jpg", image, quality=95)
        _save(dest / "SegmentationClass" / f"{name}.png", _colours(ids, colours))
        _save(dest / "SegmentationObject" / f"{name}.png", objects[(ids > 0) * (1 + ids % 7)])
    return dest


def write_kaggle_camvid(dest: Path, splits: dict[str, list[Sample]], names, colours) -> Path:
    dest.mkdir(parents=True)
    rows = ["name,r,g,b"] + [f"{n},{c[0]},{c[1]},{c[2]}" for n, c in zip(names, colours)]
    (dest / "class_dict.csv").write_text("\n".join(rows) + "\n")
    for split, samples in splits.items():
        for name, image, ids in samples:
            _save(dest / split / f"{name}.png", image)
            _save(dest / f"{split}_labels" / f"{name}_L.png", _colours(ids, colours))
    return dest


def write_roboflow_masks(dest: Path, splits: dict[str, list[Sample]], names) -> Path:
    dest.mkdir(parents=True)
    (dest / "README.roboflow.txt").write_text("This dataset was exported via roboflow.com\n")
    for split, samples in splits.items():
        folder = dest / split
        folder.mkdir()
        (folder / "_classes.csv").write_text(
            "Pixel Value, Class\n" + "".join(f"{i}, {n}\n" for i, n in enumerate(names))
        )
        for name, image, ids in samples:
            stem = f"{name}_jpg.rf.{hashlib.md5(name.encode()).hexdigest()}"
            _save(folder / f"{stem}.jpg", image, quality=95)
            _save(folder / f"{stem}_mask.png", ids)
    return dest


def write_supervisely_masks(dest: Path, datasets: dict[str, list[Sample]], names, colours) -> Path:
    """The exported tar, unpacked into ``dest``. ``names[0]``/``colours[0]`` are the unlabelled
    background, which Supervisely does not list as a class."""
    project = dest / "build" / "4242_street"
    meta = {
        "classes": [
            {"title": n, "shape": "bitmap", "color": "#{:02X}{:02X}{:02X}".format(*c), "geometry_config": {}}
            for n, c in zip(names[1:], colours[1:])
        ],
        "tags": [],
    }
    project.mkdir(parents=True)
    (project / "meta.json").write_text(json.dumps(meta))
    (project / "obj_class_to_machine_color.json").write_text(
        json.dumps({n: [i, i, i] for i, n in enumerate(names[1:], start=1)}, indent=2)
    )
    for ds_name, samples in datasets.items():
        for name, image, ids in samples:
            _save(project / ds_name / "img" / f"{name}.jpg", image, quality=95)
            ann = {"size": {"height": ids.shape[0], "width": ids.shape[1]}, "tags": [], "objects": []}
            (project / ds_name / "ann").mkdir(exist_ok=True)
            (project / ds_name / "ann" / f"{name}.jpg.json").write_text(json.dumps(ann))
            _save(project / ds_name / "masks_machine" / f"{name}.png", ids)
            human = np.concatenate([image, _colours(ids, colours)], axis=1)
            _save(project / ds_name / "masks_human" / f"{name}.png", human)
    archive = dest / "4242_street.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(project, arcname=project.name)
    unpacked = dest / "export"
    with tarfile.open(archive) as tar:
        tar.extractall(unpacked, filter="data")
    return unpacked


def write_labelme2voc(
    dest: Path, samples: list[Sample], names, png_folder: str = "SegmentationClassPNG"
) -> Path:
    """``png_folder``: SegmentationClassPNG (with .npy in SegmentationClass) in older labelme
    releases, SegmentationClass (with SegmentationClassNpy) in newer ones."""
    dest.mkdir(parents=True)
    (dest / "class_names.txt").write_text("\n".join(names))  # labelme writes no final newline
    npy = "SegmentationClass" if png_folder == "SegmentationClassPNG" else "SegmentationClassNpy"
    for name, image, ids in samples:
        _save(dest / "JPEGImages" / f"{name}.jpg", image, quality=95)
        (dest / npy).mkdir(exist_ok=True)
        np.save(dest / npy / f"{name}.npy", ids.astype(np.int32))
        _save(dest / png_folder / f"{name}.png", ids, palette=label_colormap())
        _save(dest / "SegmentationClassVisualization" / f"{name}.jpg", _colours(ids, label_colormap()))
    return dest


def write_pascal_voc(dest: Path, splits: dict[str, list[Sample]]) -> Path:
    voc = dest / "VOCdevkit" / "VOC2012"
    (voc / "ImageSets/Segmentation").mkdir(parents=True)
    for split, samples in splits.items():
        (voc / f"ImageSets/Segmentation/{split}.txt").write_text("".join(f"{n}\n" for n, _, _ in samples))
        for name, image, ids in samples:
            _save(voc / "JPEGImages" / f"{name}.jpg", image, quality=95)
            _save(voc / "SegmentationClass" / f"{name}.png", ids, palette=label_colormap())
    return dest


def write_masks_beside(dest: Path, splits: dict[str, list[Sample]], names, suffix: str) -> Path:
    dest.mkdir(parents=True)
    (dest / "classes.txt").write_text("".join(f"{n}\n" for n in names))
    for split, samples in splits.items():
        folder = dest / split if split else dest
        for name, image, ids in samples:
            _save(folder / f"{name}.png", image)
            _save(folder / f"{name}{suffix}.png", ids)
    return dest


# ---------------------------------------------------------------------------------------------------
# Label Studio (label-studio-converter's brush.py; labelstud.io/tags/brushlabels, polygonlabels)


def encode_ls_rle(values: np.ndarray) -> list[int]:
    """label-studio-converter's ``encode_rle`` (word size 8, run sizes 3/4/8/16 bits): literals of one
    value, runs of up to 2**16 values."""
    flat = np.asarray(values, dtype=np.uint8).ravel()
    bits = [f"{len(flat):032b}", f"{8 - 1:05b}", "".join(f"{s - 1:04b}" for s in (3, 4, 8, 16))]
    change = np.flatnonzero(np.diff(flat)) + 1
    starts, ends = np.r_[0, change], np.r_[change, len(flat)]
    for start, end in zip(starts, ends):
        value, length = int(flat[start]), int(end - start)
        while length > 0:
            n = min(length, 2**16)
            if n == 1:
                bits.append(f"0{0:02b}{0:03b}{value:08b}")
            elif n <= 8:
                bits.append(f"1{0:02b}{n - 1:03b}{value:08b}")
            elif n <= 16:
                bits.append(f"1{1:02b}{n - 1:04b}{value:08b}")
            elif n <= 256:
                bits.append(f"1{2:02b}{n - 1:08b}{value:08b}")
            else:
                bits.append(f"1{3:02b}{n - 1:016b}{value:08b}")
            length -= n
    text = "".join(bits)
    text += "0" * (-len(text) % 8)
    return [int(text[i : i + 8], 2) for i in range(0, len(text), 8)]


def write_label_studio_json(
    dest: Path, samples: list[Sample], names, polygon: tuple[str, list[tuple[float, float]]] | None = None
) -> tuple[Path, Path]:
    """A Label Studio JSON export of a ``<BrushLabels>`` project (one brush region per class present,
    as the RGBA layer with alpha 255 where painted) and the folder of its uploaded images (named
    ``<8 hex>-<name>``). ``polygon``: a ``polygonlabels`` region (label, points in percent) drawn last
    on the first task. Returns (export file, images folder)."""
    images = dest / "media" / "upload" / "1"
    tasks = []
    for k, (name, image, ids) in enumerate(samples, start=1):
        upload = f"{hashlib.md5(name.encode()).hexdigest()[:8]}-{name}.jpg"
        _save(images / upload, image, quality=95)
        h, w = ids.shape
        results = []
        for c in np.unique(ids):
            if c == 0:
                continue
            rgba = np.zeros((h, w, 4), dtype=np.uint8)
            rgba[ids == c] = (255, 0, 0, 255)
            results.append({
                "id": f"r{k}_{c}", "type": "brushlabels", "from_name": "tag", "to_name": "image",
                "original_width": w, "original_height": h, "image_rotation": 0,
                "value": {"format": "rle", "rle": encode_ls_rle(rgba), "brushlabels": [names[c]]},
            })  # fmt: skip
        if polygon is not None and k == 1:
            results.append({
                "id": "poly", "type": "polygonlabels", "from_name": "poly", "to_name": "image",
                "original_width": w, "original_height": h, "image_rotation": 0,
                "value": {"points": [list(p) for p in polygon[1]], "polygonlabels": [polygon[0]]},
            })  # fmt: skip
        annotation = {"id": 100 + k, "completed_by": 1, "result": results, "was_cancelled": False}
        tasks.append({"id": k, "data": {"image": f"/data/upload/1/{upload}"}, "annotations": [annotation]})
    export = dest / "project-1-at-2025-01-01-00-00-1a2b3c4d.json"
    export.write_text(json.dumps(tasks))
    return export, images
