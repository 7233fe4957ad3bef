"""Own data as the labelling tools export it: each tool's layout detected (tiny files), colour masks
mapped to class ids by exact colour, the class names and colours kept, unknown colours and unusable
folders explained, `lightseg data convert`; and (slow) a few training iterations from each export
made from real CamVid images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tool_exports import (
    encode_ls_rle,
    label_colormap,
    write_cvat_segmentation_mask,
    write_kaggle_camvid,
    write_label_studio_json,
    write_labelme2voc,
    write_masks_beside,
    write_pascal_voc,
    write_roboflow_masks,
    write_supervisely_masks,
)

from lightseg.cli import main as cli_main
from lightseg.data import build_dataset
from lightseg.data.layouts import find_layout
from lightseg.errors import DataError

NAMES = ["background", "road", "car", "person"]
COLOURS = [(0, 0, 0), (128, 64, 128), (64, 0, 128), (220, 20, 60)]


def samples(n: int, prefix: str = "img", h: int = 10, w: int = 14, seed: int = 0):
    """``n`` random images with masks holding every class id 0..3 (a known answer for each pixel)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        ids = rng.integers(0, len(NAMES), (h, w)).astype(np.uint8)
        ids.flat[: len(NAMES)] = np.arange(len(NAMES))
        out.append((f"{prefix}{i:03d}", rng.integers(0, 256, (h, w, 3), dtype=np.uint8), ids))
    return out


def loaded(ds) -> dict[str, np.ndarray]:
    """``{image stem: mask after the label rule}`` of a split."""
    return {img.stem: ds.load(i)[1] for i, (img, _) in enumerate(ds.files)}


def expected(smp, stem=lambda name: name) -> dict[str, np.ndarray]:
    return {stem(name): ids for name, _, ids in smp}


# ---------------------------------------------------------------------------------------------------
# each tool's export, detected and read as the tool meant it


def test_cvat_segmentation_mask_export(tmp_path: Path) -> None:
    smp = samples(10)
    root = write_cvat_segmentation_mask(tmp_path / "task_street", smp, NAMES, COLOURS)
    found = find_layout(root)
    assert (found.kind, found.splits, found.holdout_from) == (
        "Pascal VOC",
        ["train", "val", "all"],
        ("default",),
    )
    train, val = build_dataset("folder", root, "train"), build_dataset("folder", root, "val")
    assert train.classes == NAMES and train.palette == COLOURS  # from labelmap.txt
    assert len(val) == 1 and len(train) == 9 and train.split_record["held_out_of"] == ["default"]
    everything = build_dataset("folder", root, "all")
    got, want = loaded(everything), expected(smp)
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)


def test_kaggle_camvid_export_with_void_ignored_by_name(tmp_path: Path) -> None:
    names, colours = [*NAMES, "Void"], [*COLOURS, (1, 1, 1)]
    splits = {s: samples(3, prefix=f"0001TP_{s}_", seed=k) for k, s in enumerate(("train", "val", "test"))}
    for _, _, ids in splits["train"]:
        ids[0, :5] = 4  # Void pixels
    root = write_kaggle_camvid(tmp_path / "CamVid", splits, names, colours)
    found = find_layout(root)
    assert (found.kind, found.mask_suffix, found.splits) == (
        "<split> + <split>_labels",
        "_L",
        ["test", "train", "val"],
    )
    ds = build_dataset("folder", root, "train", ignore_index="Void")
    assert ds.classes == NAMES and ds.palette == COLOURS  # Void left the class list
    want = expected(splits["train"])
    for stem, mask in loaded(ds).items():
        assert np.array_equal(mask, np.where(want[stem] == 4, 255, want[stem]))
    # without the option Void is a fifth class, with its colour, and the doctor suggests the option
    assert build_dataset("folder", root, "val").palette[-1] == (1, 1, 1)
    report = json.loads(_check(root, "--split", "train", "--format", "json"))["train"]
    assert report["hints"] == [
        "class 'Void' looks like unlabelled pixels; if it is: --data.ignore_index Void (it then leaves the "
        "class list and its pixels are ignored)"
    ]


def test_roboflow_semantic_masks_export(tmp_path: Path) -> None:
    splits = {s: samples(2, prefix=f"IMG_{s}_", seed=k) for k, s in enumerate(("train", "valid", "test"))}
    root = write_roboflow_masks(tmp_path / "roboflow", splits, NAMES)
    found = find_layout(root)
    assert (found.kind, found.mask_suffix) == ("masks beside images, a folder per split", "_mask")
    assert found.splits == ["test", "train", "val", "valid"]
    ds = build_dataset("folder", root, "val")  # 'val' reads valid/
    assert ds.classes == NAMES and len(ds) == 2  # from valid/_classes.csv
    assert all(p.suffix == ".jpg" and m.name.endswith("_mask.png") for p, m in ds.files)
    got, want = loaded(ds), expected(splits["valid"], lambda n: f"{n}_jpg.rf.")
    assert all(np.array_equal(got[k], next(v for s, v in want.items() if k.startswith(s))) for k in got)


def test_supervisely_export_as_masks(tmp_path: Path) -> None:
    smp = {"ds0": samples(4, prefix="a"), "ds1": samples(4, prefix="b", seed=1)}
    root = write_supervisely_masks(tmp_path, smp, NAMES, COLOURS)
    found = find_layout(root)  # the tar unpacks into one folder: it is looked into
    assert found.kind == "<split>/images" and found.root.name == "4242_street"
    assert found.holdout_from == ("ds0", "ds1") and found.splits == ["train", "val", "all"]
    ds = build_dataset("folder", root, "all")
    assert ds.classes == NAMES and ds.palette == COLOURS  # obj_class_to_machine_color.json + meta.json
    got, want = loaded(ds), {**expected(smp["ds0"]), **expected(smp["ds1"])}
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
    assert "masks_human" not in {m.parent.name for _, m in ds.files}


@pytest.mark.parametrize("png_folder", ["SegmentationClassPNG", "SegmentationClass"])
def test_labelme2voc_export_gives_its_palette_to_the_model(tmp_path: Path, png_folder: str) -> None:
    smp = samples(5)
    smp[0][2][0, 0] = 255  # __ignore__ (-1 in labelme) is stored as 255
    root = write_labelme2voc(tmp_path / "data_dataset_voc", smp, ["_background_", *NAMES[1:]], png_folder)
    found = find_layout(root)
    assert found.kind == "flat" and found.subsets["all"].masks.name == png_folder
    ds = build_dataset("folder", root, "all")
    assert ds.classes == ["_background_", *NAMES[1:]]
    assert ds.palette == [tuple(c) for c in label_colormap(4).tolist()]  # the masks' own palette
    got, want = loaded(ds), expected(smp)
    assert all(np.array_equal(got[k], want[k]) for k in want)


def test_pascal_voc_devkit(tmp_path: Path) -> None:
    train, val = samples(3, prefix="2007_"), samples(2, prefix="2008_", seed=1)
    train[0][2][1, :] = 255  # object borders
    root = write_pascal_voc(tmp_path, {"train": train, "val": val})
    found = find_layout(tmp_path)  # VOCdevkit/VOC2012 inside
    assert (found.kind, found.root.name, found.splits) == ("Pascal VOC", "VOC2012", ["train", "val"])
    ds = build_dataset("folder", root, "train", classes=NAMES)
    assert ds.palette == [tuple(c) for c in label_colormap(4).tolist()]
    got, want = loaded(ds), expected(train)
    assert all(np.array_equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("suffix", ["_mask", "_label", "_L", "_gt", "_seg", "-mask"])
def test_masks_beside_images_with_a_suffix(tmp_path: Path, suffix: str) -> None:
    smp = samples(6)
    root = write_masks_beside(tmp_path / "mine", {"train": smp, "val": samples(2, prefix="v")}, NAMES, suffix)
    found = find_layout(root)
    assert (found.kind, found.mask_suffix, found.splits) == (
        "masks beside images, a folder per split",
        suffix,
        ["train", "val"],
    )
    ds = build_dataset("folder", root, "train")
    assert [p.name for p, _ in ds.files] == [f"{n}.png" for n, _, _ in smp]
    assert all(np.array_equal(m, want) for m, want in zip(loaded(ds).values(), (ids for _, _, ids in smp)))
    flat = write_masks_beside(tmp_path / "flat", {"": smp}, NAMES, suffix)  # no split folders: val held out
    found = find_layout(flat)
    assert (found.kind, found.splits) == ("masks beside images", ["train", "val", "all"])
    assert len(build_dataset("folder", flat, "val")) == 1 and len(build_dataset("folder", flat, "train")) == 5


def test_a_given_mask_suffix_is_used_as_given(tmp_path: Path) -> None:
    root = write_masks_beside(tmp_path / "mine", {"train": samples(3)}, NAMES, "_mask")
    for option in ("_mask.png", "_mask"):
        ds = build_dataset("folder", root, "all", mask_suffix=option)
        assert len(ds) == 3 and all(m.name.endswith("_mask.png") for _, m in ds.files)


# ---------------------------------------------------------------------------------------------------
# colour tables and colour masks


def _colour_folder(tmp_path: Path, rows: str | None, name: str = "class_dict.csv") -> tuple[Path, list]:
    root = tmp_path / "colours"
    smp = samples(2)
    write_kaggle_camvid(root, {"train": smp}, NAMES, COLOURS)
    (root / "class_dict.csv").unlink()
    if rows is not None:
        (root / name).write_text(rows)
    return root, smp


@pytest.mark.parametrize(
    ("name", "rows"),
    [
        ("class_dict.csv", "name,r,g,b\nbackground,0,0,0\nroad,128,64,128\ncar,64,0,128\nperson,220,20,60\n"),
        ("class_dict.csv", "name, r, g, b\nbackground, 0, 0, 0\nroad, 128, 64, 128\ncar, 64, 0, 128\nperson, 220, 20, 60\n"),
        ("labelmap.txt", "# label:color_rgb:parts:actions\nbackground:0,0,0::\nroad:128,64,128::\ncar:64,0,128::\nperson:220,20,60::\n"),
        ("classes.json", json.dumps([{"name": n, "color": "#{:02x}{:02x}{:02x}".format(*c)} for n, c in zip(NAMES, COLOURS)])),
        ("classes.yaml", "classes: [background, road, car, person]\npalette: [[0,0,0],[128,64,128],[64,0,128],[220,20,60]]\n"),
    ],
)  # fmt: skip
def test_every_colour_table_maps_colour_masks_to_ids(tmp_path: Path, name: str, rows: str) -> None:
    root, smp = _colour_folder(tmp_path, rows, name)
    ds = build_dataset("folder", root, "all")
    assert ds.classes == NAMES and ds.palette == COLOURS
    got, want = loaded(ds), expected(smp)
    assert all(np.array_equal(got[k], want[k]) for k in want)


def test_data_palette_is_a_colour_table_and_the_models_palette(tmp_path: Path) -> None:
    root, smp = _colour_folder(tmp_path, "\n".join(NAMES) + "\n", "classes.txt")
    ds = build_dataset("folder", root, "all", palette=[list(c) for c in COLOURS])
    assert ds.classes == NAMES and ds.palette == COLOURS
    assert all(np.array_equal(loaded(ds)[k], v) for k, v in expected(smp).items())
    (root / "palette.txt").write_text("".join(f"{r} {g} {b}\n" for r, g, b in COLOURS))
    assert build_dataset("folder", root, "all").palette == COLOURS
    with pytest.raises(DataError, match=r"the palette needs 4 RGB triples .* got 2"):
        build_dataset("folder", root, "all", palette=[[0, 0, 0], [1, 2, 3]])


def test_unknown_colours_are_named_with_their_pixel_counts(tmp_path: Path) -> None:
    root, _ = _colour_folder(
        tmp_path, "\n".join(f"{n}:{r},{g},{b}::" for n, (r, g, b) in zip(NAMES, COLOURS)), "labelmap.txt"
    )
    bad = root / "train_labels" / "img001_L.png"
    rgb = np.array(Image.open(bad))
    rgb[0, :3], rgb[1, 0] = (7, 8, 9), (250, 250, 250)
    Image.fromarray(rgb).save(bad)
    ds = build_dataset("folder", root, "all")
    with pytest.raises(
        DataError,
        match=r"img001_L\.png: colours not in the colour table .*labelmap\.txt\): \(7, 8, 9\) in 3 px, \(250, 250, 250\) in 1 px",
    ):
        ds.load([m.name for _, m in ds.files].index("img001_L.png"))
    report = json.loads(_check(root, "--format", "json"))["all"]
    entry = next(b for b in report["bad_labels"] if b["file"].endswith("img001_L.png"))
    assert entry["colours"] == [[7, 8, 9, 3], [250, 250, 250, 1]] and report["ok"] is False
    assert len(report["hints"]) == 1


def test_colour_masks_without_a_table_say_what_would_work(tmp_path: Path) -> None:
    root, _ = _colour_folder(tmp_path, None)
    with pytest.raises(
        DataError,
        match=r"colour images .*RGB with 4 colours: .*\(128, 64, 128\).* has no colour table; .*class_dict\.csv.*--data\.palette",
    ):
        build_dataset("folder", root, "train")


def test_class_tables_with_sparse_values_and_two_classes_on_one_colour(tmp_path: Path) -> None:
    root = write_roboflow_masks(tmp_path / "rf", {"train": samples(2)}, NAMES)
    (root / "train/_classes.csv").write_text(
        "Pixel Value, Class\n0, background\n1, road\n2, car\n3, person\n"
    )
    assert build_dataset("folder", root, "all").classes == NAMES
    (root / "train/_classes.csv").write_text("Pixel Value, Class\n0, background\n1, road\n3, person\n")
    ds = build_dataset("folder", root, "all")
    with pytest.raises(DataError, match=r"mask values 2 are not in the class table \(its values: 0, 1, 3\)"):
        ds.load(0)
    root, _ = _colour_folder(tmp_path / "x", "name,r,g,b\na,0,0,0\nb,0,0,0\n")
    with pytest.raises(DataError, match=r"classes 0 and 1 share the colour \(0, 0, 0\)"):
        build_dataset("folder", root, "all")


def test_an_ignored_value_that_is_a_class_leaves_the_class_list(tmp_path: Path) -> None:
    root = write_masks_beside(tmp_path / "m", {"train": samples(3)}, NAMES, "_mask")
    ds = build_dataset("folder", root, "all", ignore_index=0)  # "background" ignored: road is now 0
    assert ds.classes == NAMES[1:]
    mask, want = loaded(ds), expected(samples(3))
    assert all(np.array_equal(mask[k], np.where(v == 0, 255, v - 1)) for k, v in want.items())
    with pytest.raises(
        DataError, match=r"ignore_index 'sky' is not a class name; the classes: background, road"
    ):
        build_dataset("folder", root, "all", ignore_index="sky")


# ---------------------------------------------------------------------------------------------------
# when nothing fits: what was found and what would work


def _check(root: Path, *extra: str) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cli_main(["data", "check", "--data.root", str(root), *extra])
    return out.getvalue()


def test_the_detector_says_what_it_found_and_what_would_work(tmp_path: Path, capsys) -> None:
    empty_masks = tmp_path / "a"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(_parent(empty_masks / "images/x.jpg"))
    (empty_masks / "masks").mkdir()
    with pytest.raises(DataError, match=r"a/masks is empty: put one mask per image there"):
        build_dataset("folder", empty_masks, "train")
    (tmp_path / "b").mkdir()
    with pytest.raises(DataError, match=r"b is empty"):
        build_dataset("folder", tmp_path / "b", "train")
    with pytest.raises(DataError, match=r"root .*/mine_dta does not exist \(did you mean: .*/mine_data\?\)"):
        (tmp_path / "mine_data").mkdir()
        build_dataset("folder", tmp_path / "mine_dta", "train")
    npy = tmp_path / "c"
    (npy / "labels").mkdir(parents=True)
    (npy / "labels/x.npy").write_bytes(b"")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(_parent(npy / "images/x.jpg"))
    with pytest.raises(DataError, match=r"c/labels holds no mask images, only \.npy \(1\)"):
        build_dataset("folder", npy, "train")
    # names that differ by a tail pair up by it; names that never pair say how to name them
    odd = tmp_path / "d"
    for i in range(3):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(_parent(odd / f"images/p{i}.jpg"))
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(_parent(odd / f"masks/p{i}-anno.png"))
    assert (
        find_layout(odd).mask_suffix == "-anno"
        and len(build_dataset("folder", odd, "all", classes=["a"])) == 3
    )
    for i in range(3):
        (odd / f"images/p{i}.jpg").rename(odd / f"images/p{i}_rgb.jpg")
    with pytest.raises(
        DataError,
        match=r"no image name matches a mask name \(e\.g\. image 'p0_rgb', mask 'p0-anno'\); name each mask like its image",
    ):
        build_dataset("folder", odd, "all", classes=["a"])
    report = json.loads(_check(odd, "--data.classes", "[a]", "--format", "json"))["all"]
    assert report["pairs"] == 0 and report["hints"][0].startswith("no image name matches a mask name")


def _parent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------------------------------------------
# lightseg data convert


def test_data_convert_writes_class_id_masks_once(tmp_path: Path, capsys) -> None:
    names, colours = [*NAMES, "Void"], [*COLOURS, (1, 1, 1)]
    smp = samples(6)
    for _, _, ids in smp:
        ids[0, 0] = 4
    root = write_cvat_segmentation_mask(tmp_path / "cvat", smp, names, colours)
    out = tmp_path / "ids"
    args = ["data", "convert", "--data.root", str(root), "--data.ignore_index", "Void", "--out", str(out)]
    assert cli_main(args) == 0
    assert "wrote 6 pairs (train 5, val 1)" in capsys.readouterr().out
    assert json.loads((out / "classes.json").read_text()) == [
        {"name": n, "color": list(c)} for n, c in zip(NAMES, COLOURS)
    ]
    assert find_layout(out).kind == "images/<split>"
    before = {}
    for split in ("train", "val"):
        before.update(loaded(build_dataset("folder", root, split, ignore_index="Void")))
    for split in ("train", "val"):
        converted = build_dataset("folder", out, split)  # no options needed any more
        assert converted.classes == NAMES and converted.palette == COLOURS
        for stem, mask in loaded(converted).items():
            assert np.array_equal(mask, before[stem])
            assert Image.open(out / "masks" / split / f"{stem}.png").mode == "P"
    assert cli_main(args) == 2  # never into a folder that holds something
    assert "is not an empty folder" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# Label Studio: its JSON export (brush RLE and polygons) converted to class-id masks


def test_label_studio_rle_decodes_as_the_converter_encodes() -> None:
    from lightseg.data.label_studio import decode_rle

    rng = np.random.default_rng(0)
    values = np.repeat(rng.integers(0, 256, 400, dtype=np.uint8), rng.integers(1, 300, 400))
    assert np.array_equal(decode_rle(encode_ls_rle(values), len(values)), values)
    with pytest.raises(DataError, match=r"holds 4 values, the image needs 8"):
        decode_rle(encode_ls_rle(np.zeros(4, np.uint8)), 8)


def test_label_studio_json_export_converts_and_its_png_export_is_explained(tmp_path: Path, capsys) -> None:
    smp = samples(4, h=12, w=16)
    square = [(0.0, 0.0), (50.0, 0.0), (50.0, 50.0), (0.0, 50.0)]  # the top-left quarter, drawn last
    export, images = write_label_studio_json(tmp_path / "ls", smp, NAMES, polygon=("car", square))
    out = tmp_path / "ids"
    argv = ["data", "convert", "--label-studio", str(export), "--data.root", str(images), "--out", str(out)]
    assert cli_main(argv) == 0
    assert "wrote 4 pairs" in capsys.readouterr().out
    ds = build_dataset("folder", out, "all")
    assert ds.classes == ["background", "car", "person", "road"]  # background, then the labels sorted
    by_name = {n: ids for n, _, ids in smp}
    remap = np.array([ds.classes.index(n) for n in NAMES], dtype=np.uint8)
    for stem, mask in loaded(ds).items():
        name = stem.split("-", 1)[1]
        want = remap[by_name[name]]
        if name == "img000":
            want = want.copy()
            want[:6, :8] = ds.classes.index("car")  # PIL fills the polygon's edge too: rows/cols 0..6/0..8
            want[6, :9] = want[:7, 8] = ds.classes.index("car")
        assert np.array_equal(mask, want), name
    # the "Brush labels to PNG" export alone has no images: the error says to export JSON instead
    pngs = tmp_path / "brush_png"
    pngs.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(pngs / "task-1-annotation-101-by-1-tag-road-0.png")
    with pytest.raises(
        DataError, match=r"Label Studio 'Brush labels to PNG' files .* --label-studio EXPORT\.json"
    ):
        build_dataset("folder", pngs, "train")


# ---------------------------------------------------------------------------------------------------
# slow: a few training iterations from each export made from real CamVid images

CAMVID_NAMES = [
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
]  # fmt: skip
CAMVID_COLOURS = [
    (128, 128, 128),
    (128, 0, 0),
    (192, 192, 128),
    (128, 64, 128),
    (60, 40, 222),
    (128, 128, 0),
    (192, 128, 128),
    (64, 64, 128),
    (64, 0, 128),
    (64, 64, 0),
    (0, 128, 192),
]  # fmt: skip  (shared/data/README.md)
UNLABELLED = 11
FAST = [
    "--model", "cgrseg_t", "--model.pretrained", "false", "--train.iters", "2", "--train.batch_size", "2",
    "--data.crop_size", "[64,64]", "--data.scale", "[160,120]", "--data.test_scale", "[160,120]",
    "--data.num_workers", "0", "--eval.interval", "0", "--run.tensorboard", "false",
]  # fmt: skip


def camvid(shared_data: Path, split: str, n: int, start: int = 0) -> list:
    src = shared_data / "camvid"
    names = sorted(p.name for p in (src / split).glob("*.png"))[start : start + n]
    return [
        (Path(name).stem, np.asarray(Image.open(src / split / name).convert("RGB")),
         np.asarray(Image.open(src / f"{split}annot" / name)))
        for name in names
    ]  # fmt: skip


def _relabel(smp, fn):
    return [(name, image, fn(ids).astype(np.uint8)) for name, image, ids in smp]


def _export(tool: str, shared_data: Path, dest: Path) -> tuple[Path, list[str], list | None]:
    """The export, the options a user adds, and the colours the model must end with (None: the fixed
    pseudo-random ones, for exports that carry no colours)."""
    names, colours = [*CAMVID_NAMES, "Void"], [*CAMVID_COLOURS, (0, 0, 0)]
    train, val = camvid(shared_data, "train", 6), camvid(shared_data, "val", 2)
    if tool == "cvat":
        return (
            write_cvat_segmentation_mask(dest, train + val, names, colours),
            ["--data.ignore_index", "Void"],
            CAMVID_COLOURS,
        )
    if tool == "kaggle_camvid":
        root = write_kaggle_camvid(
            dest, {"train": train, "val": val, "test": camvid(shared_data, "test", 2)}, names, colours
        )
        return root, ["--data.ignore_index", "Void"], CAMVID_COLOURS
    if tool == "roboflow":
        root = write_roboflow_masks(dest, {"train": train, "valid": val}, [*CAMVID_NAMES, "unlabelled"])
        return root, ["--data.ignore_index", "unlabelled"], None
    if tool == "supervisely":
        shifted = {"ds0": _relabel(train + val, lambda ids: np.where(ids == UNLABELLED, 0, ids + 1))}
        root = write_supervisely_masks(
            dest, shifted, ["background", *CAMVID_NAMES], [(0, 0, 0), *CAMVID_COLOURS]
        )
        return root, ["--data.ignore_index", "background"], CAMVID_COLOURS
    if tool == "labelme2voc":
        shifted = _relabel(train + val, lambda ids: np.where(ids == UNLABELLED, 255, ids + 1))
        root = write_labelme2voc(dest, shifted, ["_background_", *CAMVID_NAMES])
        return root, [], [tuple(c) for c in label_colormap(12).tolist()]
    if tool == "pascal_voc":
        voc = {
            s: _relabel(smp, lambda ids: np.where(ids == UNLABELLED, 255, ids))
            for s, smp in (("train", train), ("val", val))
        }
        return (
            write_pascal_voc(dest, voc),
            ["--data.classes", json.dumps(CAMVID_NAMES)],
            [tuple(c) for c in label_colormap(11).tolist()],
        )
    root = write_masks_beside(dest, {"train": train, "val": val}, CAMVID_NAMES, "_label")
    return root, ["--data.ignore_index", str(UNLABELLED)], None


TOOLS = ["cvat", "kaggle_camvid", "roboflow", "supervisely", "labelme2voc", "pascal_voc", "masks_beside"]


@pytest.mark.slow  # 10-20 s each on a free core: a model, two training steps and an evaluation
@pytest.mark.parametrize("tool", TOOLS)
def test_a_tool_export_trains_keeping_names_and_colours(shared_data: Path, tmp_path: Path, tool: str) -> None:
    from lightseg.checkpoint import read_checkpoint

    root, options, colours = _export(tool, shared_data, tmp_path / tool)
    run = tmp_path / "run"
    assert cli_main(["train", "--data.root", str(root), *options, *FAST, "--run.work_dir", str(run)]) == 0
    meta, _ = read_checkpoint(run / "last.pt")
    names = ["_background_", *CAMVID_NAMES] if tool == "labelme2voc" else CAMVID_NAMES
    assert list(meta["classes"]) == names
    if colours is not None:
        assert [tuple(c) for c in meta["palette"]] == colours
    assert list(json.loads((run / "final_metrics.json").read_text())["per_class"]) == names
