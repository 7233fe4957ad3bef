"""Datasets and the dataset doctor: real files from shared/data and fixture trees in every layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lightseg.cli import main as cli_main
from lightseg.data import DATASETS, DataError, build_dataset
from lightseg.data.doctor import BINARY_MASK_HINT, BINARY_MASK_PROBLEM, check
from lightseg.errors import ConfigError

# ---------------------------------------------------------------------------------------------------
# helpers: real PNG/JPEG files in the exact naming conventions


def _png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _jpg(path: Path, h: int = 8, w: int = 12, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, quality=95)
    return path


def _mask(values: list[int], h: int = 8, w: int = 12) -> np.ndarray:
    """An (h, w) uint8 mask cycling through ``values`` (every value present)."""
    return np.resize(np.asarray(values, dtype=np.uint8), h * w).reshape(h, w)


# ---------------------------------------------------------------------------------------------------
# CamVid (real files)

CAMVID_TRAIN_MILLIONS = [10.68, 14.75, 0.62, 20.08, 2.85, 6.17, 0.74, 0.71, 3.72, 0.41, 0.18, 2.50]  # README


def test_camvid_splits_doctor_clean_and_histogram(shared_data: Path) -> None:
    root = shared_data / "camvid"
    sizes = {s: len(build_dataset("camvid", root, s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 367, "val": 101, "test": 233}
    reports = check("camvid", root, workers=2)
    assert set(reports) == {"train", "val", "test"}
    for split, r in reports.items():
        assert r["ok"], (split, {k: r[k] for k in ("unreadable", "size_mismatch", "bad_labels")})
        assert r["pairs"] == sizes[split]
        # labels in 0..10 ∪ {255} (anything else would be in bad_labels) and every class present
        assert all(n > 0 for n in r["class_pixels"].values())
    train = reports["train"]
    counts = [*train["class_pixels"].values(), train["ignore_pixels"]]
    assert np.allclose(np.asarray(counts) / 1e6, CAMVID_TRAIN_MILLIONS, atol=0.0051)


def test_camvid_load_maps_unlabelled_to_ignore(shared_data: Path) -> None:
    ds = build_dataset("camvid", shared_data / "camvid", "val")
    image, mask = ds.load(0)
    raw = np.asarray(Image.open(ds.files[0][1]))
    assert image.shape == (360, 480, 3) and image.dtype == np.uint8
    assert (mask[raw == 11] == 255).all() and (mask[raw < 11] == raw[raw < 11]).all()
    assert ds.num_classes == 11 and ds.classes[0] == "Sky" and ds.palette[4] == (60, 40, 222)


# ---------------------------------------------------------------------------------------------------
# ADE20K (the three real sample pairs, placed in the official layout with links)


def _ade_tree(shared_data: Path, tmp_path: Path) -> Path:
    base = tmp_path / "data" / "ADEChallengeData2016"
    for sub, src in (("images", "images"), ("annotations", "annotations")):
        (base / sub / "validation").mkdir(parents=True)
        for f in sorted((shared_data / "ade20k_sample" / src).iterdir()):
            (base / sub / "validation" / f.name).symlink_to(f)
    return tmp_path / "data"


def test_ade20k_samples_reduce_zero_label(shared_data: Path, tmp_path: Path) -> None:
    ds = build_dataset("ade20k", _ade_tree(shared_data, tmp_path), "val")
    assert len(ds) == 3 and ds.num_classes == 150 and ds.classes[:3] == ["wall", "building", "sky"]
    for i in range(3):
        image, mask = ds.load(i)
        raw = np.asarray(Image.open(ds.files[i][1])).astype(int)
        assert image.shape[:2] == raw.shape
        assert (raw == 0).any()  # the rule is really exercised
        assert (mask[raw == 0] == 255).all()
        assert (mask[raw > 0] == raw[raw > 0] - 1).all()
        sample = ds[i]
        assert sample["mask"].dtype.is_floating_point is False and sample["image"].shape[1:] == raw.shape
        assert sample["meta"]["ori_size"] == raw.shape


# ---------------------------------------------------------------------------------------------------
# Cityscapes: labelIds -> trainIds against the official table (cityscapesScripts labels.py)

# (name, id, trainId) for all 34 ids
CITYSCAPES_OFFICIAL = [
    ("unlabeled", 0, 255), ("ego vehicle", 1, 255), ("rectification border", 2, 255), ("out of roi", 3, 255),
    ("static", 4, 255), ("dynamic", 5, 255), ("ground", 6, 255), ("road", 7, 0), ("sidewalk", 8, 1),
    ("parking", 9, 255), ("rail track", 10, 255), ("building", 11, 2), ("wall", 12, 3), ("fence", 13, 4),
    ("guard rail", 14, 255), ("bridge", 15, 255), ("tunnel", 16, 255), ("pole", 17, 5), ("polegroup", 18, 255),
    ("traffic light", 19, 6), ("traffic sign", 20, 7), ("vegetation", 21, 8), ("terrain", 22, 9), ("sky", 23, 10),
    ("person", 24, 11), ("rider", 25, 12), ("car", 26, 13), ("truck", 27, 14), ("bus", 28, 15),
    ("caravan", 29, 255), ("trailer", 30, 255), ("train", 31, 16), ("motorcycle", 32, 17), ("bicycle", 33, 18),
]  # fmt: skip


def test_cityscapes_label_ids_to_train_ids_all_34(tmp_path: Path) -> None:
    ids = np.arange(34, dtype=np.uint8).reshape(2, 17)
    for split, city, frame in (
        ("train", "aachen", "aachen_000000_000019"),
        ("val", "lindau", "lindau_000001_000019"),
    ):
        _png(
            tmp_path / "leftImg8bit" / split / city / f"{frame}_leftImg8bit.png",
            np.zeros((2, 17, 3), np.uint8),
        )
        _png(tmp_path / "gtFine" / split / city / f"{frame}_gtFine_labelIds.png", ids)
    # a pre-converted frame: labelTrainIds is preferred over labelIds
    _png(
        tmp_path / "leftImg8bit/train/bremen/bremen_000000_000019_leftImg8bit.png",
        np.zeros((2, 17, 3), np.uint8),
    )
    _png(tmp_path / "gtFine/train/bremen/bremen_000000_000019_gtFine_labelIds.png", ids)
    _png(
        tmp_path / "gtFine/train/bremen/bremen_000000_000019_gtFine_labelTrainIds.png",
        np.full((2, 17), 7, np.uint8),
    )

    ds = build_dataset("cityscapes", tmp_path, "train")
    assert len(ds) == 2 and ds.classes == [n for n, _, t in CITYSCAPES_OFFICIAL if t != 255]
    by_name = {p[0].name.split("_")[0]: i for i, p in enumerate(ds.files)}
    _, converted = ds.load(by_name["aachen"])
    expected = {label_id: train_id for _, label_id, train_id in CITYSCAPES_OFFICIAL}
    for label_id in range(34):
        assert converted.ravel()[label_id] == expected[label_id], CITYSCAPES_OFFICIAL[label_id]
    _, pre = ds.load(by_name["bremen"])
    assert (pre == 7).all()
    assert len(build_dataset("cityscapes", tmp_path, "val")) == 1


# ---------------------------------------------------------------------------------------------------
# the other layouts


def test_coco_stuff_164k_as_given_and_10k_reduced(tmp_path: Path) -> None:
    r164 = tmp_path / "coco_stuff164k"
    _jpg(r164 / "images/val2017/000000000139.jpg")
    _png(r164 / "annotations/val2017/000000000139_labelTrainIds.png", _mask([0, 170, 255]))
    ds = build_dataset("coco_stuff164k", r164, "val")
    assert ds.num_classes == 171 and ds.classes[0] == "person"
    assert set(np.unique(ds.load(0)[1])) == {0, 170, 255}

    r10 = tmp_path / "coco_stuff10k"
    _jpg(r10 / "images/test2014/COCO_train2014_000000000077.jpg")
    _png(r10 / "annotations/test2014/COCO_train2014_000000000077.png", _mask([0, 1, 171]))
    _, mask = build_dataset("coco_stuff10k", r10, "val").load(0)
    assert set(np.unique(mask)) == {255, 0, 170}


def test_pascal_context_59_and_60(tmp_path: Path) -> None:
    voc = tmp_path / "VOCdevkit" / "VOC2010"
    for name in ("2008_000002", "2008_000003"):
        _jpg(voc / "JPEGImages" / f"{name}.jpg")
        _png(voc / "SegmentationClassContext" / f"{name}.png", _mask([0, 1, 59]))
    (voc / "ImageSets/SegmentationContext").mkdir(parents=True)
    (voc / "ImageSets/SegmentationContext/train.txt").write_text("2008_000002\n")
    (voc / "ImageSets/SegmentationContext/val.txt").write_text("2008_000003\n")
    ds60 = build_dataset("pascal_context60", tmp_path, "train")  # found via VOCdevkit/VOC2010
    ds59 = build_dataset("pascal_context59", voc, "val")
    assert (ds60.num_classes, ds59.num_classes) == (60, 59)
    assert ds60.classes[0] == "background" and ds59.classes[0] == ds60.classes[1] == "aeroplane"
    assert set(np.unique(ds60.load(0)[1])) == {0, 1, 59}
    assert set(np.unique(ds59.load(0)[1])) == {255, 0, 58}


@pytest.mark.parametrize("layout", ["current", "older"])
def test_bdd100k_both_layouts(tmp_path: Path, layout: str) -> None:
    base = tmp_path / "bdd100k"
    if layout == "current":
        _jpg(base / "images/10k/val/7d2f7975-e0c1c5a7.jpg")
        _png(base / "labels/sem_seg/masks/val/7d2f7975-e0c1c5a7.png", _mask([0, 18, 255]))
    else:
        _jpg(base / "seg/images/val/7d2f7975-e0c1c5a7.jpg")
        _png(base / "seg/labels/val/7d2f7975-e0c1c5a7_train_id.png", _mask([0, 18, 255]))
    ds = build_dataset("bdd100k", tmp_path, "val")
    assert len(ds) == 1 and ds.num_classes == 19 and ds.classes[-1] == "bicycle"
    assert set(np.unique(ds.load(0)[1])) == {0, 18, 255}


def test_folder_dataset_rules_and_layouts(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    (root).mkdir()
    (root / "classes.txt").write_text("background\ncrack\n")
    (root / "palette.txt").write_text("0 0 0\n255 0 0\n")
    _jpg(root / "images/train/a.jpg")
    _png(root / "masks/train/a.png", _mask([0, 1, 2]))  # 2 marks "ignore" in these files
    ds = build_dataset("folder", root, "train", ignore_index=2)
    assert ds.classes == ["background", "crack"] and ds.palette == [(0, 0, 0), (255, 0, 0)]
    assert set(np.unique(ds.load(0)[1])) == {0, 1, 255} and ds.ignore_index == 255
    ds_r = build_dataset("folder", root, "train", reduce_zero_label=True)
    assert set(np.unique(ds_r.load(0)[1])) == {255, 0, 1}
    # flat folder with a split list
    flat = tmp_path / "flat"
    (flat).mkdir()
    (flat / "classes.txt").write_text("a\nb\n")
    for n in ("x", "y"):
        _jpg(flat / "images" / f"{n}.png")
        _png(flat / "masks" / f"{n}.png", _mask([0, 1]))
    (flat / "val.txt").write_text("y\n")
    assert [p[0].stem for p in build_dataset("folder", flat, "val").files] == ["y"]
    assert len(build_dataset("folder", flat, "all")) == 2


# ---------------------------------------------------------------------------------------------------
# errors a user can act on


def test_errors_name_layout_file_and_problem(tmp_path: Path) -> None:
    (tmp_path / "ADEChallengeData2016").mkdir()
    with pytest.raises(FileNotFoundError, match=r"ADEChallengeData2017.*did you mean.*ADEChallengeData2016"):
        build_dataset("ade20k", tmp_path / "ADEChallengeData2017", "train")
    with pytest.raises(DataError, match=r"images/\{training,validation\}"):
        build_dataset("ade20k", tmp_path / "ADEChallengeData2016", "train")
    with pytest.raises(ConfigError, match="did you mean cityscapes"):
        build_dataset("citiscapes", tmp_path, "train")
    assert set(DATASETS) == {
        "ade20k", "cityscapes", "coco_stuff164k", "coco_stuff10k", "pascal_context59", "pascal_context60",
        "bdd100k", "camvid", "folder",
    }  # fmt: skip

    root = tmp_path / "bad"
    root.mkdir()
    (root / "classes.txt").write_text("a\nb\n")
    _jpg(root / "images/train/ok.jpg")
    _png(root / "masks/train/ok.png", _mask([0, 1], h=5))  # wrong size
    (root / "images/train/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    _png(root / "masks/train/broken.png", _mask([0, 1]))
    ds = build_dataset("folder", root, "all")  # images/train alone: 'train' and 'val' are drawn from it
    idx = {p[0].stem: i for i, p in enumerate(ds.files)}
    with pytest.raises(DataError, match=r"broken\.jpg: cannot decode image"):
        ds.load(idx["broken"])
    with pytest.raises(
        DataError, match=r"ok\.png: mask size 12x5 .* differs from its image .*ok\.jpg \(12x8\)"
    ):
        ds[idx["ok"]]
    _jpg(root / "images/train/lonely.jpg")
    with pytest.raises(DataError, match=r"image without mask: .*lonely\.jpg"):
        build_dataset("folder", root, "all")


# ---------------------------------------------------------------------------------------------------
# the doctor finds each planted fault


def test_doctor_finds_planted_faults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "faulty"
    root.mkdir()
    (root / "classes.txt").write_text("background\nforeground\n")
    _jpg(root / "images/train/good.jpg")
    _png(root / "masks/train/good.png", _mask([0, 1]))
    _jpg(root / "images/train/no_mask.jpg")  # missing pair (image side)
    _png(root / "masks/train/no_image.png", _mask([0, 1]))  # missing pair (mask side)
    _jpg(root / "images/train/corrupt.jpg")
    (root / "masks/train/corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # corrupt file
    _jpg(root / "images/train/small.jpg")
    _png(root / "masks/train/small.png", _mask([0, 1], h=4, w=6))  # size mismatch
    _jpg(root / "images/train/binary.jpg")
    _png(root / "masks/train/binary.png", _mask([0, 255]))  # the 0/255 binary mask
    _jpg(root / "images/train/out_of_range.jpg")
    _png(root / "masks/train/out_of_range.png", _mask([0, 1, 7]))  # label 7 with 2 classes

    rc = cli_main(["data", "check", "--data.name", "folder", "--data.root", str(root), "--format", "json"])
    assert rc == 1
    report = json.loads(capsys.readouterr().out)["all"]  # images/train alone: every pair, val not drawn
    assert {
        "pairs",
        "missing_masks",
        "missing_images",
        "unreadable",
        "size_mismatch",
        "bad_labels",
        "class_pixels",
    } <= set(report)
    assert report["pairs"] == 5
    assert [Path(p).name for p in report["missing_masks"]] == ["no_mask.jpg"]
    assert [Path(p).name for p in report["missing_images"]] == ["no_image.png"]
    assert [Path(u["file"]).name for u in report["unreadable"]] == ["corrupt.png"]
    assert [(Path(s["mask"]).name, s["mask_hw"]) for s in report["size_mismatch"]] == [("small.png", [4, 6])]
    bad = {Path(b["file"]).name: b for b in report["bad_labels"]}
    assert set(bad) == {"binary.png", "out_of_range.png"}
    assert bad["binary.png"]["problem"] == BINARY_MASK_PROBLEM and "0/255" in BINARY_MASK_PROBLEM
    assert bad["out_of_range.png"]["values"] == [7]
    assert report["hints"] == [BINARY_MASK_HINT, "if 7 marks unlabelled pixels: --data.ignore_index 7"]
    # good + small + out_of_range contribute class pixels: 48 + 12 + 32 zeros
    assert report["class_pixels"]["background"] == 48 + 12 + 32 + 48

    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "classes.txt").write_text("background\nforeground\n")
    _jpg(clean / "images/train/good.jpg")
    _png(clean / "masks/train/good.png", _mask([0, 1]))
    assert cli_main(["data", "check", "--data.name", "folder", "--data.root", str(clean)]) == 0
    assert "[all] 1 pairs — OK" in capsys.readouterr().out


def test_images_are_turned_by_their_exif_orientation_masks_are_not(tmp_path):
    """As cv2 reads them for mmseg: IMREAD_COLOR applies the EXIF orientation (6 = turn 90 degrees
    clockwise to display), IMREAD_UNCHANGED (masks) does not."""
    from PIL import Image

    from lightseg.data.base import read_image, read_mask
    from lightseg.deploy.media import read_image as read_input

    pixels = np.zeros((2, 3, 3), np.uint8)
    pixels[0, 0] = (255, 0, 0)  # top-left red
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "photo.png", exif=exif)
    Image.fromarray(np.arange(6, dtype=np.uint8).reshape(2, 3)).save(tmp_path / "mask.png", exif=exif)
    turned = read_image(tmp_path / "photo.png")
    assert turned.shape == (3, 2, 3) and tuple(turned[0, 1]) == (255, 0, 0)  # red now top-right
    np.testing.assert_array_equal(np.asarray(read_input(tmp_path / "photo.png")), turned)
    assert read_mask(tmp_path / "mask.png").shape == (2, 3)
