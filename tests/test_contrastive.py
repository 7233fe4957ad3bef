"""Pixel contrastive loss (FRM network, SPEC 2.2): hand-computed values, ignore pixels, determinism."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightseg.losses import (
    CrossEntropyLoss,
    PixelContrastiveLoss,
    SegLoss,
    pixel_contrastive_loss,
    supervised_infonce,
)

# Four unit embeddings: two of class 0 (identical), two of class 1 (at 36.87° from each other).
Z = [(1.0, 0.0), (1.0, 0.0), (0.0, 1.0), (0.6, 0.8)]
LABELS = [0, 0, 1, 1]
TAU = 0.5


def hand_computed() -> float:
    """SupCon by hand with τ = 0.5: dot products 1, 0, 0.6 (anchor 1/2 vs 3, 4), 0.8 (3 vs 4)."""
    e = math.exp
    l1 = -math.log(e(1 / TAU) / (e(1 / TAU) + e(0 / TAU) + e(0.6 / TAU)))  # anchor 1 (and 2)
    l3 = -math.log(e(0.8 / TAU) / (e(0 / TAU) + e(0 / TAU) + e(0.8 / TAU)))  # anchor 3
    l4 = -math.log(e(0.8 / TAU) / (e(0.6 / TAU) + e(0.6 / TAU) + e(0.8 / TAU)))  # anchor 4
    return (2 * l1 + l3 + l4) / 4


def test_supervised_infonce_hand_computed():
    value = supervised_infonce(torch.tensor(Z), torch.tensor(LABELS), TAU)
    assert value.item() == pytest.approx(hand_computed(), rel=1e-6)
    assert hand_computed() == pytest.approx(0.5276, abs=1e-4)  # (2·0.46037 + 0.33918 + 0.85043) / 4


def test_anchor_without_positive_is_left_out():
    # Anchor 3 alone in its class: only anchors 1 and 2 count, each −log(e^2 / (e^2 + e^0)).
    z, labels = torch.tensor(Z[:3]), torch.tensor([0, 0, 1])
    assert supervised_infonce(z, labels, TAU).item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)
    lone = supervised_infonce(torch.tensor(Z[:1], requires_grad=True), torch.tensor([0]), TAU)
    assert lone.item() == 0.0 and lone.requires_grad


def identity_projection(loss: PixelContrastiveLoss) -> PixelContrastiveLoss:
    for conv in loss.proj[0], loss.proj[2]:
        nn.init.eye_(conv.weight[:, :, 0, 0])
        nn.init.zeros_(conv.bias)
    return loss


def test_module_downsamples_labels_by_nearest_and_matches_the_hand_value():
    loss = identity_projection(
        PixelContrastiveLoss(2, embed_dim=2, temperature=TAU, max_samples_per_class=10)
    )
    # Embeddings on a 2×2 grid (non-negative, so the ReLU of the projection keeps them).
    feats = torch.tensor(Z).t().reshape(1, 2, 2, 2) * 3.0  # scaled: the loss L2-normalises
    # Labels at 4×4; nearest downsampling keeps the top-left pixel of each 2×2 cell. The other
    # pixels carry contradicting labels (or ignore) that must not be seen.
    target = torch.full((1, 4, 4), 255)
    target[0, 0::2, 0::2] = torch.tensor(LABELS).reshape(2, 2)
    target[0, 1, 1] = 7
    assert loss(feats, target).item() == pytest.approx(hand_computed(), rel=1e-5)
    # The functional form without a projection head (what a parameter-free caller uses).
    value = pixel_contrastive_loss(feats, target, temperature=TAU)
    assert value.item() == pytest.approx(hand_computed(), rel=1e-5)


def test_ignore_pixels_get_zero_gradient():
    torch.manual_seed(0)
    loss = PixelContrastiveLoss(6, embed_dim=4, max_samples_per_class=5)
    feats = torch.randn(2, 6, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 8, 8))
    target[:, :, :3] = 255
    loss(feats, target).backward()
    grad = feats.grad.abs().sum(dim=1)  # N×8×8
    assert torch.all(grad[:, :, :3] == 0)
    assert grad[:, :, 3:].sum() > 0
    # At most 5 anchors per class over the whole batch received a gradient.
    assert 0 < int((grad > 0).sum()) <= 3 * 5


def test_sampling_is_deterministic_and_resumes_bit_exactly():
    torch.manual_seed(0)
    feats, target = torch.randn(2, 4, 8, 8), torch.randint(0, 3, (2, 8, 8))
    a, b = PixelContrastiveLoss(4, max_samples_per_class=6, seed=3), PixelContrastiveLoss(4, seed=3)
    b.load_state_dict(a.state_dict())
    b.max_samples_per_class = 6
    first = a(feats, target)
    assert torch.equal(first, b(feats, target))
    # Save mid-run, continue, and resume from the saved state: the same anchors are drawn again.
    saved = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in a.state_dict().items()}
    nxt = a(feats, target)
    assert not torch.equal(nxt, first)  # a new draw
    c = PixelContrastiveLoss(4, max_samples_per_class=6, seed=99)
    c.load_state_dict(saved)
    assert torch.equal(c(feats, target), nxt)


def test_seg_loss_combines_ce_and_contrastive():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4)
    embed = torch.randn(2, 5, 4, 4)
    target = torch.randint(0, 3, (2, 16, 16))
    contrastive = PixelContrastiveLoss(5, seed=1)
    total, parts = SegLoss(CrossEntropyLoss(), contrastive, 0.1)(
        {"logits": logits, "embed_features": embed}, target
    )
    ref = PixelContrastiveLoss(5, seed=1)  # the same generator state as before the call
    ref.proj.load_state_dict(contrastive.proj.state_dict())
    assert parts["contrastive"] > 0
    torch.testing.assert_close(total, parts["ce"] + 0.1 * parts["contrastive"])
    torch.testing.assert_close(parts["contrastive"], ref(embed, target))
    # Without embeddings (e.g. a CGRSeg head) only the cross-entropy remains.
    total_ce, parts_ce = SegLoss(CrossEntropyLoss(), contrastive)({"logits": logits}, target)
    assert set(parts_ce) == {"ce"} and torch.equal(total_ce, parts["ce"])
