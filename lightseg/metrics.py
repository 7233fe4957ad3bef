"""Segmentation metrics as the papers measure them (SPEC Part 3).

A K x K confusion matrix (rows = ground truth, columns = prediction) is accumulated over the whole
split with ``torch.bincount``; intersection and union per class are read from it at the end, so the
figures are "summed over all images, then averaged over classes", not averaged per image. Under DDP
the matrix is all-reduced (a sum), which makes the distributed result identical to a single process.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from lightseg.errors import DataError


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """K x K int64 counts, ``cm[gt, pred]``, over pixels whose label is not ``ignore_index``.

    pred, target: integer tensors of the same shape (any number of dims). Labels outside
    ``[0, K)`` other than the ignore index are an error (a wrong label rule, e.g. a missing
    ``reduce_zero_label``), not something to drop silently.
    """
    if pred.shape != target.shape:
        raise DataError(f"prediction {tuple(pred.shape)} and label {tuple(target.shape)} differ in shape")
    keep = target != ignore_index
    t = target[keep].long()
    p = pred[keep].long()
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        bad = sorted(set(t[(t < 0) | (t >= num_classes)].unique().tolist()))[:10]
        raise DataError(
            f"label values {bad} are outside 0..{num_classes - 1} and not the ignore index {ignore_index}"
        )
    counts = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


@dataclass
class SegMetrics:
    """Accumulates a confusion matrix; :meth:`compute` gives per-class IoU/Acc, mIoU, mAcc, aAcc.

    Usage: ``m = SegMetrics(K); m.update(pred, label) ...; m.all_reduce(); m.compute()``.
    """

    num_classes: int
    ignore_index: int = 255
    class_names: list[str] | None = None
    matrix: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred: predicted class ids (e.g. ``logits.argmax(1)``), target: labels, same shape."""
        cm = confusion_matrix(pred.detach().cpu(), target.detach().cpu(), self.num_classes, self.ignore_index)
        self.matrix += cm

    def all_reduce(self) -> None:
        """Sum the matrices of every process (a no-op outside ``torch.distributed``)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            device = (
                torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
            )
            m = self.matrix.to(device)
            dist.all_reduce(m, op=dist.ReduceOp.SUM)
            self.matrix = m.cpu()

    def compute(self) -> dict:
        """``{"mIoU", "mAcc", "aAcc", "per_class": {name: {"IoU", "Acc"}}}``, values in percent.

        IoU_k = TP / (TP + FP + FN) and Acc_k = TP / (TP + FN), from counts summed over the split;
        mIoU and mAcc average over classes with a non-zero union (resp. non-zero ground truth) —
        absent classes are NaN in ``per_class`` and do not count. aAcc = sum TP / sum labelled.
        """
        cm = self.matrix.double()
        tp = cm.diag()
        gt = cm.sum(1)
        pr = cm.sum(0)
        union = gt + pr - tp
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        iou = torch.where(union > 0, tp / union.clamp_min(1), nan)
        acc = torch.where(gt > 0, tp / gt.clamp_min(1), nan)
        names = self.class_names or [str(i) for i in range(self.num_classes)]
        total = gt.sum()
        return {
            "mIoU": 100 * _nanmean(iou),
            "mAcc": 100 * _nanmean(acc),
            "aAcc": 100 * float(tp.sum() / total) if total > 0 else float("nan"),
            "per_class": {
                n: {"IoU": 100 * float(i), "Acc": 100 * float(a)} for n, i, a in zip(names, iou, acc)
            },
        }


def _nanmean(x: torch.Tensor) -> float:
    valid = x[~torch.isnan(x)]
    return float(valid.mean()) if valid.numel() else float("nan")


def format_table(result: dict, digits: int = 2) -> str:
    """The per-class IoU/Acc table and the summary line, as plain text."""
    rows = [(name, v["IoU"], v["Acc"]) for name, v in result["per_class"].items()]
    width = max([len("class")] + [len(r[0]) for r in rows])
    lines = [f"{'class':<{width}}  {'IoU':>7}  {'Acc':>7}", "-" * (width + 18)]
    lines += [f"{n:<{width}}  {i:7.{digits}f}  {a:7.{digits}f}" for n, i, a in rows]
    lines.append("-" * (width + 18))
    lines.append(
        f"mIoU {result['mIoU']:.{digits}f}   mAcc {result['mAcc']:.{digits}f}   aAcc {result['aAcc']:.{digits}f}"
    )
    return "\n".join(lines)
