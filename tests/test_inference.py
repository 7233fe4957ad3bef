"""Whole / sliding-window inference and multi-scale + flip TTA against hand-rolled versions; the
multi-scale sizes and labels of predict against evaluation's and mmseg's."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import trained_like_norms
from PIL import Image
from torch import nn

from lightseg import Segmenter, create_model
from lightseg.config import EvalConfig
from lightseg.data import build_dataset
from lightseg.data.transforms import MultiScaleResize, build_eval_transform
from lightseg.evaluation import evaluate
from lightseg.inference import forward_whole, predict_probs, scaled_sizes, slide_windows
from lightseg.meta import ModelMeta


class TinySeg(nn.Module):
    """Stride-4 logits, sides must be multiples of 8 (like a Segmentor's size_divisor)."""

    size_divisor = 8
    num_classes = 3

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 5, stride=4, padding=2)

    def forward(self, x):
        assert x.shape[-1] % 8 == 0 and x.shape[-2] % 8 == 0
        return self.conv(x)


@pytest.mark.parametrize("h,w,crop,stride", [(100, 150, (48, 64), (32, 40)), (30, 200, (48, 64), (48, 64))])
def test_slide_windows_cover_every_pixel(h, w, crop, stride):
    count = torch.zeros(h, w, dtype=torch.int64)
    wins = slide_windows(h, w, crop, stride)
    for y1, y2, x1, x2 in wins:
        assert 0 <= y1 < y2 <= h and 0 <= x1 < x2 <= w
        assert y2 - y1 == min(crop[0], h) and x2 - x1 == min(crop[1], w)
        count[y1:y2, x1:x2] += 1
    assert count.min() >= 1
    # mmseg's grid: ceil((H - crop) / stride) + 1 windows per axis
    rows = max(-(-(h - crop[0]) // stride[0]), 0) + 1
    cols = max(-(-(w - crop[1]) // stride[1]), 0) + 1
    assert len(wins) == rows * cols
    # count along the first row by hand for the first case: windows at x 0, 40, 80 (last shifted to 86)
    if (h, w) == (100, 150):
        assert [x1 for _, _, x1, _ in wins[:cols]] == [0, 40, 80, 86]
        assert count[0, 85].item() == 2 and count[0, 86].item() == 3 and count[0, 0].item() == 1


def test_whole_pads_and_crops_back():
    model = TinySeg().eval()
    x = torch.randn(1, 3, 37, 45)
    out = forward_whole(model, x)
    assert out.shape == (1, 3, 37, 45)
    padded = F.pad(x, (0, 3, 0, 3))
    ref = F.interpolate(model(padded), size=(40, 48), mode="bilinear", align_corners=False)[..., :37, :45]
    torch.testing.assert_close(out, ref)


def test_multiscale_flip_equals_hand_rolled_average():
    model = TinySeg().eval()
    x = torch.randn(1, 3, 32, 48)
    out = predict_probs(model, x, (64, 96), scales=(0.5, 1.0, 1.5), flip=True)
    acc = torch.zeros(1, 3, 64, 96)
    for size in ((16, 24), (32, 48), (48, 72)):  # 32 x 48 at 0.5, 1.0, 1.5
        xs = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        for flip in (False, True):
            xi = xs.flip(-1) if flip else xs
            hp, wp = -(-xi.shape[-2] // 8) * 8, -(-xi.shape[-1] // 8) * 8
            lg = model(F.pad(xi, (0, wp - xi.shape[-1], 0, hp - xi.shape[-2])))
            lg = F.interpolate(lg, size=(hp, wp), mode="bilinear", align_corners=False)
            lg = lg[..., : xi.shape[-2], : xi.shape[-1]]
            lg = lg.flip(-1) if flip else lg
            acc += F.interpolate(lg, size=(64, 96), mode="bilinear", align_corners=False).softmax(1)
    torch.testing.assert_close(out, acc / 6)
    assert torch.allclose(out.sum(1), torch.ones(1, 64, 96))


def test_slide_mode_averages_windows():
    model = TinySeg().eval()
    x = torch.randn(1, 3, 40, 56)
    probs = predict_probs(model, x, mode="slide", crop_size=(32, 32), stride=(16, 24))
    logits = torch.zeros(1, 3, 40, 56)
    count = torch.zeros(1, 1, 40, 56)
    for y1, y2, x1, x2 in slide_windows(40, 56, (32, 32), (16, 24)):
        logits[..., y1:y2, x1:x2] += forward_whole(model, x[..., y1:y2, x1:x2])
        count[..., y1:y2, x1:x2] += 1
    torch.testing.assert_close(probs, (logits / count).softmax(1))
    # a window-wise pass differs from a whole-image pass (padding/context), so slide really ran
    assert not torch.allclose(probs, predict_probs(model, x))


# ---- one multi-scale size rule: predict = evaluation = mmseg 0.x -------------------------------
RATIOS = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]


def _mmseg_sizes(h, w, ratios, img_scale=None):
    """(H, W) per ratio as mmseg 0.27 computes them, transcribed in its own (w, h) convention:
    ``MultiScaleFlipAug`` makes the bound (``img_scale=None``: the image's own size) times the
    ratio with ``int()``, ``Resize(keep_ratio=True)`` calls ``mmcv.rescale_size``."""
    if img_scale is None:
        bounds = [(int(w * r), int(h * r)) for r in ratios]
    else:
        bounds = [(int(img_scale[0] * r), int(img_scale[1] * r)) for r in ratios]
    out = []
    for bound in bounds:
        factor = min(max(bound) / max(h, w), min(bound) / min(h, w))
        new_w, new_h = int(w * float(factor) + 0.5), int(h * float(factor) + 0.5)
        out.append((new_h, new_w))
    return out


def test_predict_resizes_each_scale_to_the_size_evaluation_uses():
    rng = np.random.default_rng(0)
    sizes = [(1677, 1822), (360, 480), (512, 683), (101, 150)]
    sizes += [tuple(int(v) for v in s) for s in rng.integers(16, 2049, (300, 2))]
    differs_from_round = 0
    for h, w in sizes:
        want = _mmseg_sizes(h, w, RATIOS)
        assert scaled_sizes(h, w, RATIOS) == want, (h, w)  # predict, Segmenter, serve
        assert MultiScaleResize((max(h, w), min(h, w)), RATIOS).sizes(h, w) == want, (h, w)  # eval
        for bound in ((2048, 512), (480, 360)):
            assert MultiScaleResize(bound, RATIOS).sizes(h, w) == _mmseg_sizes(h, w, RATIOS, bound)
        differs_from_round += sum(s != (round(h * r), round(w * r)) for s, r in zip(want, RATIOS))
    assert scaled_sizes(1677, 1822, [0.5]) == [(838, 910)]  # round(1822 / 2) would be 911
    assert differs_from_round > 500  # the per-side round() rule differs often: the test can tell


class PixelNet(nn.Module):
    """Logits at every pixel from a 3x3 neighbourhood, no padding multiple: labels change with any
    change in the pixels a scale sees, so equal labels mean equal inputs."""

    size_divisor = 1
    num_classes = 5

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.meta = ModelMeta("pixelnet", 5, size_divisor=1, output_stride=1)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize(
    "name,ratios,flip",
    [
        ("pixelnet", RATIOS, False),
        ("cgrseg_t", [0.5, 1.25], True),
        pytest.param("cgrseg_t", RATIOS, True, marks=pytest.mark.slow),
    ],
    ids=["pixelnet", "cgrseg_t", "cgrseg_t-all-ratios"],
)
def test_segmenter_gives_the_labels_evaluation_gives_at_the_same_scales(tmp_path, name, ratios, flip):
    h, w = 101, 150  # round() and the mmcv rule disagree here at every ratio but 1.0
    # colour blocks with texture: labels follow the blocks and change at their edges
    yy, xx = np.mgrid[:h, :w]
    blocks = ((yy // 25 + xx // 30) % 4)[..., None] * np.array([60, 20, -40])
    noise = np.random.default_rng(1).integers(0, 256, (h, w, 3))
    img = np.clip(90 + blocks + 0.3 * noise, 0, 255).astype(np.uint8)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(img).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.zeros((h, w), np.uint8)).save(tmp_path / "masks" / "a.png")
    model = PixelNet().eval() if name == "pixelnet" else trained_like_norms(create_model(name, 5))
    # evaluation at the image's own size (test_scale = its long, short side) and the same scales
    transform = build_eval_transform((w, h), ratios=ratios)
    ds = build_dataset("folder", tmp_path, "all", classes=list("abcde"), transform=transform)
    preds = []
    cfg = EvalConfig(scales=ratios, flip=flip)
    evaluate(model, ds, cfg, progress=False, on_prediction=lambda p, meta: preds.append(p.numpy()))
    seg = Segmenter(model, runtime="torch", optimize="none", scales=ratios, flip=flip)
    labels = seg(img)
    assert len(np.unique(labels)) > 1
    np.testing.assert_array_equal(labels, preds[0])
    np.testing.assert_array_equal(seg.predict_probs(img).argmax(0), preds[0])


def test_segmenter_resizes_non_8bit_pixels_as_floats():
    img = torch.rand(3, 101, 150) * 255  # a float tensor: no 8-bit image to resize as eval does
    model = PixelNet().eval()
    seg = Segmenter(model, runtime="torch", optimize="none", scales=RATIOS)
    x = (img[None] - seg.mean) / seg.std
    expected = predict_probs(model, x, scales=RATIOS)[0].numpy()
    np.testing.assert_allclose(seg.predict_probs(img), expected, atol=1e-5)
