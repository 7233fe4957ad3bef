"""Metrics against confusion matrices computed by hand."""

import math

import numpy as np
import pytest
import torch

from lightseg.metrics import SegMetrics, confusion_matrix


def test_confusion_matrix_by_hand():
    gt = torch.tensor([[0, 0, 1], [1, 2, 255]])
    pred = torch.tensor([[0, 1, 1], [1, 0, 2]])
    # pixels (gt, pred): (0,0) (0,1) (1,1) (1,1) (2,0); the last one is ignored.
    expected = torch.tensor([[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    assert torch.equal(confusion_matrix(pred, gt, 3), expected)


def test_metrics_by_hand_accumulated_over_images():
    m = SegMetrics(3, class_names=["a", "b", "c"])
    m.update(torch.tensor([[0, 1, 1]]), torch.tensor([[0, 0, 1]]))
    m.update(torch.tensor([[1, 0, 2]]), torch.tensor([[1, 2, 255]]))
    r = m.compute()
    # cm = [[1,1,0],[0,2,0],[1,0,0]]: IoU a = 1/(2+2-1) = 1/3, b = 2/(2+3-2) = 2/3, c = 0/(1+0-0) = 0
    assert r["per_class"]["a"]["IoU"] == pytest.approx(100 / 3)
    assert r["per_class"]["b"]["IoU"] == pytest.approx(200 / 3)
    assert r["per_class"]["c"]["IoU"] == pytest.approx(0.0)
    assert r["mIoU"] == pytest.approx(100 / 3)  # (1/3 + 2/3 + 0) / 3
    assert r["per_class"]["a"]["Acc"] == pytest.approx(50.0)
    assert r["mAcc"] == pytest.approx((50 + 100 + 0) / 3)
    assert r["aAcc"] == pytest.approx(60.0)  # 3 of 5 labelled pixels


def test_absent_class_is_excluded_from_the_mean():
    m = SegMetrics(4)
    m.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
    r = m.compute()
    assert math.isnan(r["per_class"]["3"]["IoU"]) and math.isnan(r["per_class"]["2"]["IoU"])
    assert r["mIoU"] == pytest.approx(100 * (0.5 + 0.5) / 2)  # class 0: 1/2, class 1: 1/2


def test_reduce_zero_label_and_out_of_range_labels():
    from lightseg.data.base import reduce_zero_label

    raw = np.array([[0, 1, 2], [3, 1, 0]], dtype=np.uint8)  # ADE20K style: 0 = ignore
    gt = torch.from_numpy(reduce_zero_label(raw).astype(np.int64))
    assert gt.tolist() == [[255, 0, 1], [2, 0, 255]]
    pred = torch.tensor([[2, 0, 1], [1, 1, 0]])
    cm = confusion_matrix(pred, gt, 3)
    assert torch.equal(cm, torch.tensor([[1, 1, 0], [0, 1, 0], [0, 1, 0]]))
    with pytest.raises(ValueError, match=r"outside 0\.\.2"):
        confusion_matrix(pred, torch.from_numpy(raw.astype(np.int64)) + 1, 3)
