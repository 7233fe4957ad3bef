"""BatchNorm folding: exact on hand-made pairs, conservative where folding would be wrong, and
equal to eager for every registered segmentor."""

import pytest
import torch
from helpers import trained_like_norms
from torch import nn

from lightseg.fuse import fold_bn, optimize_for_inference
from lightseg.models import create_model, list_models


class _Pairs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 2, 1, groups=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.pre = nn.BatchNorm2d(8)
        self.fc = nn.Conv2d(8, 4, 1)
        self.pad_bn = nn.BatchNorm2d(4)
        self.padded = nn.Conv2d(4, 4, 3, padding=1)  # BN -> padded conv is not exact: must stay

    def forward(self, x):
        x = self.bn(self.conv(x)).relu()
        x = self.fc(self.pre(x))
        return self.padded(self.pad_bn(x))


class _Branch(nn.Module):
    """The conv output feeds the BN *and* a residual: folding would change the residual."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def test_fold_hand_made_pairs():
    m = trained_like_norms(_Pairs())
    x = torch.randn(2, 3, 16, 16)
    f, report = fold_bn(m)
    assert sorted(report.folded) == ["bn", "pre"]
    assert report.remaining == ["pad_bn"]
    torch.testing.assert_close(f(x), m(x), atol=1e-5, rtol=1e-5)
    # The original is untouched (fold_bn copies by default).
    assert isinstance(m.bn, nn.BatchNorm2d)


def test_fold_conv_bn_matches_closed_form():
    conv, bn = nn.Conv2d(1, 1, 1, bias=True), nn.BatchNorm2d(1, eps=0.0)
    conv.weight.data.fill_(2.0)
    conv.bias.data.fill_(1.0)
    bn.running_mean.fill_(3.0)
    bn.running_var.fill_(4.0)
    bn.weight.data.fill_(0.5)
    bn.bias.data.fill_(-1.0)
    f, _ = fold_bn(nn.Sequential(conv, bn))
    # BN(2x + 1) = 0.5 * (2x + 1 - 3) / 2 - 1 = 0.5x - 1.5
    assert f[0].weight.item() == pytest.approx(0.5)
    assert f[0].bias.item() == pytest.approx(-1.5)


def test_no_fold_when_conv_output_is_shared():
    m = trained_like_norms(_Branch())
    f, report = fold_bn(m)
    assert report.folded == []
    x = torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(f(x), m(x))


def test_no_fold_into_module_called_twice():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 1)
            self.bn = nn.BatchNorm2d(4)
            self.size_divisor = 4

        def forward(self, x):
            x = x[:, :4].repeat(1, 1, 1, 1) if x.shape[1] == 4 else torch.cat([x, x[:, :1]], 1)
            return self.conv(self.bn(self.conv(x)))

    m = trained_like_norms(Twice())
    f, report = fold_bn(m)
    assert report.folded == []
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(f(x), m(x))


# The large variants repeat the same blocks at more width/depth: slow-marked to keep CI short.
_LARGE = {"cgrseg_b", "cgrseg_l", "frm_van_b1", "frm_van_b2"}


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in _LARGE else n for n in list_models(kind="segmentor")],
)
def test_folded_equals_eager_for_every_segmentor(name):
    torch.manual_seed(0)
    # Trained-like norms: FRM's polyphase pooling (the default) then has no exact ties to flip.
    model = trained_like_norms(create_model(name, num_classes=7))
    d = int(model.size_divisor)
    x = torch.randn(1, 3, 2 * d, 3 * d)
    with torch.no_grad():
        ref = model(x)
        fast = optimize_for_inference(model, "fold-bn", size=tuple(x.shape[-2:]))
        got = fast(x)
    if name == "cgrseg_t":  # every BN of CGRSeg sits next to a conv
        assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules()), "some BatchNorm was not folded"
    assert (got - ref).abs().max().item() <= 1e-4 * max(1.0, ref.abs().max().item())
    assert (got.argmax(1) == ref.argmax(1)).float().mean().item() >= 0.999
