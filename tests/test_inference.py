"""Whole / sliding-window inference and multi-scale + flip TTA against hand-rolled versions."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightseg.inference import forward_whole, predict_probs, slide_windows


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
    for s in (0.5, 1.0, 1.5):
        xs = F.interpolate(x, size=(round(32 * s), round(48 * s)), mode="bilinear", align_corners=False)
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
