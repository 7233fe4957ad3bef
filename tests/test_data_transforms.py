"""Transform invariants: label values, the category-max-ratio crop, padding, resizing rules, seeding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lightseg.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_dataset,
    build_eval_transform,
    build_train_transform,
)
from lightseg.data.transforms import (
    Compose,
    Normalize,
    Pad,
    RandomCrop,
    RandomResizeCrop,
    Resize,
    resize_image,
    resize_mask,
)


def _sample(image: np.ndarray, mask: np.ndarray | None) -> dict:
    return {"image": image, "mask": mask, "meta": {}}


def _column_coded(h: int, w: int) -> np.ndarray:
    """An image whose pixel (y, x) stores x (R = x % 256, G = x // 256): a crop reveals its offset."""
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.arange(w) % 256
    img[..., 1] = np.arange(w) // 256
    return img


def _bilinear_reference(img: np.ndarray, oh: int, ow: int) -> np.ndarray:
    """Half-pixel-centre bilinear interpolation with edge clamping (cv2 INTER_LINEAR), in float."""
    h, w = img.shape[:2]
    ys = np.clip((np.arange(oh) + 0.5) * h / oh - 0.5, 0, h - 1)
    xs = np.clip((np.arange(ow) + 0.5) * w / ow - 0.5, 0, w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    f = img.astype(np.float64)
    top = f[y0][:, x0] * (1 - fx) + f[y0][:, x1] * fx
    bottom = f[y1][:, x0] * (1 - fx) + f[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


@pytest.mark.parametrize("size", [(20, 30), (74, 106), (13, 41), (37, 53)])
def test_resize_image_is_plain_bilinear(size: tuple[int, int]) -> None:
    img = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    out = resize_image(img, size).astype(float)
    assert out.shape == (*size, 3)
    assert np.abs(out - _bilinear_reference(img, *size)).max() < 1.001  # no anti-aliasing blur


def test_resize_mask_nearest_rule() -> None:
    mask = np.arange(12, dtype=np.uint8).reshape(3, 4)
    # cv2 INTER_NEAREST: src = floor(dst * in / out); 3 -> 7 rows: 0,0,0,1,1,2,2 ; 4 -> 6 cols: 0,0,1,2,2,3
    expected = mask[[0, 0, 0, 1, 1, 2, 2]][:, [0, 0, 1, 2, 2, 3]]
    assert (resize_mask(mask, (7, 6)) == expected).all()


def test_rescale_keeps_aspect_like_mmcv() -> None:
    s = Resize((2048, 512))(_sample(np.zeros((360, 480, 3), np.uint8), np.zeros((360, 480), np.uint8)))
    assert s["image"].shape[:2] == (512, 683) and s["mask"].shape == (512, 683)  # 480 * 512/360 = 682.67
    s = Resize((2048, 512))(_sample(np.zeros((100, 1000, 3), np.uint8), None))
    assert s["image"].shape[:2] == (205, 2048)  # long side bound: 100 * 2.048 = 204.8


def test_fused_resize_crop_equals_resize_then_crop() -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    mask = rng.integers(0, 4, (90, 120), dtype=np.uint8)
    for seed in range(6):
        seq = Compose([Resize((256, 64), (0.5, 2.0)), RandomCrop((48, 48), 0.75)])
        a = seq(_sample(img.copy(), mask.copy()), np.random.default_rng(seed))
        b = RandomResizeCrop((48, 48), (256, 64), (0.5, 2.0), 0.75)(
            _sample(img.copy(), mask.copy()), np.random.default_rng(seed)
        )
        assert a["meta"]["crop_box"] == b["meta"]["crop_box"]
        assert (a["mask"] == b["mask"]).all()
        y0, y1, x0, x1 = b["meta"]["crop_box"]
        exact = _bilinear_reference(img, *b["meta"]["img_size"])[y0:y1, x0:x1]
        assert np.abs(b["image"] - exact).max() < 1.001  # both within PIL's rounding of exact bilinear
        assert np.abs(a["image"] - exact).max() < 1.001


def test_crop_respects_cat_max_ratio_with_ignore_excluded() -> None:
    # 1024 wide, crop 512: class 1 in columns [0, 300), class 0 in [300, 812), ignore in [812, 1024).
    # A crop at offset x passes the rule only when x < 172 (class 0 then under 75% of the non-ignore
    # pixels); counting ignore as a class would also pass offsets near 512. Random: 172/513 of offsets.
    mask = np.zeros((512, 1024), np.uint8)
    mask[:, :300] = 1
    mask[:, 812:] = 255
    offsets = {}
    for ratio in (0.75, 1.0):
        crop = RandomCrop((512, 512), cat_max_ratio=ratio)
        xs = []
        for seed in range(60):
            out = crop(_sample(_column_coded(512, 1024), mask), np.random.default_rng(seed))
            x = int(out["image"][0, 0, 0]) + 256 * int(out["image"][0, 0, 1])
            assert (out["mask"] == mask[:, x : x + 512]).all()  # image and mask cropped together
            xs.append(x)
        offsets[ratio] = np.asarray(xs)
    assert (offsets[0.75] < 172).mean() >= 0.9  # fails 11 draws in a row with p = (341/513)^11 ≈ 1%
    assert (offsets[1.0] < 172).mean() < 0.6  # without the rule: about a third


def test_pad_values_image_zero_mask_ignore() -> None:
    img = np.full((100, 80, 3), 200, np.uint8)
    mask = np.full((100, 80), 3, np.uint8)
    t = build_train_transform(
        crop_size=(128, 128), scale=(100, 80), ratio_range=(1.0, 1.0), photometric=False
    )
    out = t(_sample(img, mask), np.random.default_rng(0))
    assert out["image"].shape == (3, 128, 128) and out["mask"].shape == (128, 128)
    assert out["image"].dtype == torch.float32 and out["mask"].dtype == torch.int64
    assert (out["image"][:, 100:, :] == 0).all() and (out["image"][:, :, 80:] == 0).all()
    assert (out["mask"][100:, :] == 255).all() and (out["mask"][:, 80:] == 255).all()
    assert (out["mask"][:100, :80] == 3).all()
    expected = (200 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(out["image"][:, 50, 40], expected)


def test_pad_to_multiple_of_32() -> None:
    out = Compose([Normalize(), Pad(size_divisor=32)])(_sample(np.zeros((100, 70, 3), np.uint8), None))
    assert out["image"].shape == (3, 128, 96)


def test_masks_never_get_new_labels_and_seed_reproducible(shared_data: Path) -> None:
    ds = build_dataset("camvid", shared_data / "camvid", "train", transform=build_train_transform())
    for i in (0, 100, 200):
        _, raw = ds.load(i)
        allowed = set(np.unique(raw).tolist()) | {255}
        for seed in (0, 1):
            out = ds[(i, seed)]
            assert out["image"].shape == (3, 512, 512) and out["mask"].shape == (512, 512)
            assert set(out["mask"].unique().tolist()) <= allowed
    a, b = ds[(5, 123)], ds[(5, 123)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert a["meta"] == b["meta"]
    c = ds[(5, 124)]
    assert not torch.equal(a["image"], c["image"])
    # plain index: seeded from (base seed, epoch, index), so a fresh dataset reproduces it
    ds2 = build_dataset("camvid", shared_data / "camvid", "train", transform=build_train_transform())
    assert torch.equal(ds[7]["image"], ds2[7]["image"])
    ds2.set_epoch(1)
    assert not torch.equal(ds[7]["image"], ds2[7]["image"])


def test_same_samples_from_dataloader_workers(shared_data: Path) -> None:
    ds = build_dataset(
        "camvid", shared_data / "camvid", "val", transform=build_train_transform(crop_size=(64, 64))
    )
    keys = [(i, 1000 + i) for i in range(4)]
    loader = torch.utils.data.DataLoader(ds, batch_size=2, sampler=keys, num_workers=2)
    batches = list(loader)
    direct = torch.stack([ds[k]["image"] for k in keys])
    assert torch.equal(torch.cat([b["image"] for b in batches]), direct)


def test_eval_transform_keeps_original_mask(shared_data: Path) -> None:
    ds = build_dataset("camvid", shared_data / "camvid", "val", transform=build_eval_transform())
    out = ds[0]
    assert out["image"].shape == (3, 512, 683)  # short side 512, aspect kept
    assert out["mask"].shape == (360, 480) and out["meta"]["ori_size"] == (360, 480)
    _, raw = ds.load(0)
    assert (out["mask"].numpy() == raw).all()
