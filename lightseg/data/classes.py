"""Class tables of your own data: names, colours, and the value each class has in the mask files.

The files that labelling tools and dataset publishers write beside their masks all say the same thing
in different syntax, and :func:`read_class_file` reads each of them into one :class:`ClassTable`:

- ``classes.txt`` / ``class_names.txt`` (labelme2voc): one name per line, line k naming value k;
- ``classes.json`` / ``classes.yaml``: a list of names, a list of ``{name, color[, value]}``, ``{name:
  [r, g, b]}`` or ``{classes: [...], palette: [...]}`` (``class_name``/``title``, ``colour``/``rgb`` and
  ``png_index``/``pixel_value`` are read too; colours as ``[r, g, b]`` or ``"#rrggbb"``);
- ``class_dict.csv`` (Kaggle datasets such as CamVid): ``name,r,g,b`` per row;
- ``labelmap.txt`` (CVAT "Segmentation mask" and Datumaro's Pascal VOC exports):
  ``name:r,g,b:parts:actions`` per line;
- ``_classes.csv`` (Roboflow "Semantic Segmentation Masks"): ``Pixel Value, Class`` per row;
- ``obj_class_to_machine_color.json`` (Supervisely "Export as masks"): ``{name: [v, v, v]}`` with
  value 0 the background; colours from the project's ``meta.json``.

:class:`ColourLookup` maps colour masks (RGB PNGs painted in the table's colours) to class ids by exact
colour; a colour that is not in the table is a :class:`~lightseg.errors.DataError` naming the file, the
colour and its pixel count.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lightseg.errors import DataError

RGB = tuple[int, int, int]

# Class files in the order they are looked for in a dataset folder (the first found wins).
CLASS_FILES = (
    "classes.txt",
    "classes.json",
    "classes.yaml",
    "classes.yml",
    "class_dict.csv",
    "class_dict_seg.csv",
    "labelmap.txt",
    "_classes.csv",
    "class_names.txt",
    "obj_class_to_machine_color.json",
)
TOOL_OF_CLASS_FILE = {
    "class_dict.csv": "Kaggle (name,r,g,b)",
    "class_dict_seg.csv": "Kaggle (name,r,g,b)",
    "labelmap.txt": "CVAT / Datumaro labelmap",
    "_classes.csv": "Roboflow",
    "class_names.txt": "labelme2voc",
    "obj_class_to_machine_color.json": "Supervisely",
}


@dataclass(frozen=True)
class ClassTable:
    """Class names, their colours (or None) and their values in single-channel mask files (None:
    class k is value k). ``source`` names where the table came from, for messages."""

    names: tuple[str, ...]
    colours: tuple[RGB, ...] | None = None
    values: tuple[int, ...] | None = None
    source: str = "the class list"

    def __post_init__(self) -> None:
        if not self.names:
            raise DataError(f"{self.source}: the class list is empty")
        n = len(self.names)
        if self.colours is not None and len(self.colours) != n:
            raise DataError(f"{self.source}: {n} classes but {len(self.colours)} colours")
        if self.values is not None:
            if len(self.values) != n:
                raise DataError(f"{self.source}: {n} classes but {len(self.values)} mask values")
            bad = [v for v in self.values if not 0 <= v <= 254]
            if bad:
                raise DataError(f"{self.source}: mask value {bad[0]} outside 0..254 (255 means ignore)")
            if len(set(self.values)) != n:
                raise DataError(f"{self.source}: two classes share one mask value")

    @property
    def value_of(self) -> list[int]:
        return list(self.values) if self.values is not None else list(range(len(self.names)))

    def without(self, position: int) -> ClassTable:
        """The table without class ``position`` (the one whose pixels are ignored)."""
        keep = [i for i in range(len(self.names)) if i != position]
        return ClassTable(
            tuple(self.names[i] for i in keep),
            None if self.colours is None else tuple(self.colours[i] for i in keep),
            None if self.values is None else tuple(self.values[i] for i in keep),
            self.source,
        )


# ----------------------------------------------------------------------------------------------------
# Colours


def parse_colour(value: Any, where: str) -> RGB:
    """``[r, g, b]`` (extra alpha ignored), ``"r,g,b"``, ``"r g b"`` or ``"#rrggbb[aa]"`` -> (r, g, b)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("#") and len(text) in (7, 9):
            try:
                return int(text[1:3], 16), int(text[3:5], 16), int(text[5:7], 16)
            except ValueError:
                pass
        else:
            value = text.replace(",", " ").split()
    try:
        rgb = tuple(int(v) for v in list(value)[:3])  # type: ignore[arg-type]
    except (TypeError, ValueError):
        rgb = ()
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise DataError(f"{where}: colour {value!r} is not r, g, b in 0..255 (or #rrggbb)")
    return rgb  # type: ignore[return-value]


def read_palette(source: Any, where: str = "--data.palette") -> tuple[RGB, ...]:
    """A list of colours, or a file of them: ``palette.txt`` (``r g b``, ``r,g,b`` or ``#rrggbb`` per
    line) or any class file with colours."""
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if not path.is_file():
            raise DataError(f"{where}: palette file {path} not found")
        if path.suffix in (".json", ".yaml", ".yml", ".csv") or path.name == "labelmap.txt":
            table = read_class_file(path)
            if table.colours is None:
                raise DataError(f"{path}: names only, no colours; a palette needs one colour per class")
            return table.colours
        return tuple(parse_colour(ln, f"{path}, line {i}") for i, ln in _lines(path))
    return tuple(parse_colour(c, where) for c in source)


class ColourLookup:
    """Exact colour -> class position for colour masks (H x W x 3 uint8)."""

    def __init__(self, colours: Sequence[RGB], source: str):
        keys = np.asarray([_key3(c) for c in colours], dtype=np.int64)
        seen: dict[int, int] = {}
        for i, k in enumerate(keys.tolist()):
            if k in seen:
                raise DataError(
                    f"{source}: classes {seen[k]} and {i} share the colour {tuple(colours[i])}; "
                    "a colour mask cannot tell them apart"
                )
            seen[k] = i
        order = np.argsort(keys)
        self.keys, self.positions, self.source = keys[order], order.astype(np.uint8), source

    def __call__(self, rgb: np.ndarray, path: Path) -> np.ndarray:
        """Class positions (uint8, H x W); unknown colours are a DataError listing each with its count."""
        key = _keys(rgb)
        at = np.minimum(np.searchsorted(self.keys, key), len(self.keys) - 1)
        hit = self.keys[at] == key
        if not hit.all():
            raise DataError(
                f"{path}: colours not in the colour table ({self.source}): "
                + describe_colours(self.unknown(rgb))
                + ". Add them to the table (or repaint those pixels); `lightseg data check` lists "
                "every such file"
            )
        return self.positions[at]

    def unknown(self, rgb: np.ndarray) -> list[tuple[RGB, int]]:
        """``[(colour, pixel count), ...]`` of the colours of ``rgb`` missing from the table, most first."""
        key = _keys(rgb).ravel()
        values, counts = np.unique(key, return_counts=True)
        missing = ~np.isin(values, self.keys)
        pairs = sorted(zip(values[missing].tolist(), counts[missing].tolist()), key=lambda p: -p[1])
        return [(((k >> 16) & 255, (k >> 8) & 255, k & 255), n) for k, n in pairs]


def describe_colours(pairs: list[tuple[RGB, int]], limit: int = 5) -> str:
    shown = ", ".join(f"{c} in {n:,} px" for c, n in pairs[:limit])
    return shown + (f" and {len(pairs) - limit} more" if len(pairs) > limit else "")


def _key3(c: Sequence[int]) -> int:
    return (int(c[0]) << 16) | (int(c[1]) << 8) | int(c[2])


def _keys(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


# ----------------------------------------------------------------------------------------------------
# Class files


def find_class_file(folders: Sequence[Path]) -> Path | None:
    """The first of :data:`CLASS_FILES` in the first of ``folders`` that holds one."""
    for folder in folders:
        for name in CLASS_FILES:
            if (folder / name).is_file():
                return folder / name
    return None


def read_class_file(path: Path) -> ClassTable:
    """The class table in ``path`` (any format of the module docstring)."""
    if not path.is_file():
        raise DataError(f"class file {path} not found")
    name = path.name.lower()
    if name == "obj_class_to_machine_color.json":
        return _supervisely(path)
    if name == "labelmap.txt" or (path.suffix == ".txt" and _looks_like_labelmap(path)):
        return _labelmap(path)
    if path.suffix == ".txt":
        names = [ln for i, ln in _lines(path) if not (i == 1 and ln == "__ignore__")]  # labelme's labels.txt
        return ClassTable(tuple(names), source=str(path))
    if path.suffix == ".csv":
        return _csv_table(path)
    if path.suffix in (".json", ".yaml", ".yml"):
        try:
            data = (
                json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
            )
        except (ValueError, yaml.YAMLError) as e:
            raise DataError(f"{path}: cannot parse the class file ({e})") from e
        return table_from_data(data, str(path))
    raise DataError(f"{path}: unknown class file type; use .txt, .csv, .json or .yaml")


def _lines(path: Path) -> list[tuple[int, str]]:
    return [(i, ln.strip()) for i, ln in enumerate(path.read_text().splitlines(), 1) if ln.strip()]


def _looks_like_labelmap(path: Path) -> bool:
    lines = [ln for _, ln in _lines(path) if not ln.startswith("#")]
    return bool(lines) and all(ln.count(":") >= 1 and "," in ln.split(":")[1] for ln in lines)


def _labelmap(path: Path) -> ClassTable:
    names, colours = [], []
    for i, ln in _lines(path):
        if ln.startswith("#"):
            continue
        parts = ln.split(":")
        if len(parts) < 2:
            raise DataError(f"{path}, line {i}: expected name:r,g,b:parts:actions, got {ln!r}")
        names.append(parts[0].strip())
        colours.append(parse_colour(parts[1], f"{path}, line {i}"))
    return ClassTable(tuple(names), tuple(colours), source=str(path))


def _csv_table(path: Path) -> ClassTable:
    with path.open(newline="") as f:
        rows = [[c.strip() for c in row] for row in csv.reader(f) if any(c.strip() for c in row)]
    if not rows:
        raise DataError(f"{path}: the class list is empty")
    header = [h.lower() for h in rows[0]]
    col = {h: k for k, h in enumerate(header)}
    name_col = next((col[h] for h in ("name", "class", "class_name", "label", "classname") if h in col), None)
    value_col = next(
        (col[h] for h in ("pixel value", "pixel_value", "value", "id", "index") if h in col), None
    )
    rgb_cols = [col.get(h) for h in ("r", "g", "b")]
    if name_col is None or (value_col is None and None in rgb_cols):
        raise DataError(
            f"{path}: header {rows[0]} not understood; expected name,r,g,b (Kaggle's class_dict.csv) or "
            "'Pixel Value, Class' (Roboflow's _classes.csv)"
        )
    names, colours, values = [], [], []
    for i, row in enumerate(rows[1:], 2):
        try:
            names.append(row[name_col])
            if value_col is not None:
                values.append(int(row[value_col]))
            else:
                colours.append(parse_colour([row[c] for c in rgb_cols], f"{path}, line {i}"))  # type: ignore[index]
        except (IndexError, ValueError) as e:
            raise DataError(f"{path}, line {i}: cannot read {row} ({e})") from None
    if value_col is not None:
        order = sorted(range(len(names)), key=lambda k: values[k])
        return ClassTable(tuple(names[k] for k in order), None, tuple(values[k] for k in order), str(path))
    return ClassTable(tuple(names), tuple(colours), source=str(path))


def _supervisely(path: Path) -> ClassTable:
    """``obj_class_to_machine_color.json`` ({name: [v, v, v]}, 0 = background) and ``meta.json``'s colours."""
    try:
        mapping = json.loads(path.read_text())
        values = {str(k): int(v[0]) for k, v in mapping.items()}
    except (ValueError, TypeError, IndexError, AttributeError) as e:
        raise DataError(f"{path}: expected {{class name: [v, v, v]}} ({e})") from None
    colour_of: dict[str, RGB] = {}
    meta = path.parent / "meta.json"
    if meta.is_file():
        try:
            for c in json.loads(meta.read_text()).get("classes", []):
                colour_of[str(c["title"])] = parse_colour(c["color"], str(meta))
        except (ValueError, TypeError, KeyError) as e:
            raise DataError(f"{meta}: cannot read the class colours ({e})") from None
    entries = sorted(values.items(), key=lambda kv: kv[1])
    if 0 not in values.values():
        entries.insert(0, ("background", 0))
        colour_of.setdefault("background", (0, 0, 0))
    names = tuple(k for k, _ in entries)
    colours = tuple(colour_of[n] for n in names) if all(n in colour_of for n in names) else None
    return ClassTable(names, colours, tuple(v for _, v in entries), str(path))


_NAME_KEYS = ("name", "class_name", "title", "label", "class")
_COLOUR_KEYS = ("color", "colour", "rgb")
_VALUE_KEYS = ("value", "png_index", "pixel_value", "id", "index")


def table_from_data(data: Any, source: str) -> ClassTable:
    """A table from parsed JSON/YAML (the forms of the module docstring)."""
    palette = None
    if isinstance(data, dict) and "classes" in data:
        palette = data.get("palette")
        data = data["classes"]
    elif isinstance(data, dict):  # {name: [r, g, b]}
        data = [{"name": k, "color": v} for k, v in data.items()]
    if not isinstance(data, list):
        raise DataError(
            f"{source}: expected a list of names, of {{name, color}}, or {{classes: [...], palette: [...]}}"
        )
    names: list[str] = []
    colours: list[Any] = []
    values: list[Any] = []
    for item in data:
        if isinstance(item, dict):
            names.append(str(next((item[k] for k in _NAME_KEYS if k in item), "")))
            colours.append(next((item[k] for k in _COLOUR_KEYS if k in item), None))
            values.append(next((item[k] for k in _VALUE_KEYS if k in item), None))
        else:
            names.append(str(item))
    if palette is None and colours and all(c is not None for c in colours):
        palette = colours
    rgb = None if palette is None else tuple(parse_colour(c, source) for c in palette)
    vals = tuple(int(v) for v in values) if values and all(v is not None for v in values) else None
    if vals is not None and vals != tuple(range(len(names))):
        order = sorted(range(len(names)), key=lambda k: vals[k])
        names = [names[k] for k in order]
        rgb = None if rgb is None else tuple(rgb[k] for k in order)
        vals = tuple(vals[k] for k in order)
    return ClassTable(tuple(names), rgb, vals, source)
