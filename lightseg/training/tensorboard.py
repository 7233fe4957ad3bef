"""What TensorBoard shows at each evaluation: per-class IoU, the confusion matrix, sample predictions.

Tags: ``val_IoU/<class>`` (one scalar per class present in the split), ``val/confusion`` (the
row-normalised confusion matrix: row = ground truth, column = prediction, bright = high) and
``val/samples`` (a grid, one row per validation image: image | ground truth | prediction, in the
dataset's palette; ignored pixels black). The pictures are plain uint8 arrays
(:func:`confusion_image`, :func:`sample_grid`), so they can be saved as PNG too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from lightseg.meta import default_palette
from lightseg.visualize import label_to_rgb

ROW_HEIGHT = 160  # pixels of one sample row in the grid
# A perceptually ordered dark-to-bright ramp (viridis anchors) for the confusion matrix.
_RAMP = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64
)


def _ramp(values: np.ndarray) -> np.ndarray:
    x = np.clip(values, 0.0, 1.0) * (len(_RAMP) - 1)
    lo = np.floor(x).astype(int).clip(0, len(_RAMP) - 2)
    t = (x - lo)[..., None]
    return ((1 - t) * _RAMP[lo] + t * _RAMP[lo + 1]).round().astype(np.uint8)


def confusion_image(confusion: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """The row-normalised confusion matrix as an RGB picture; rows named "k name", columns k (up to
    40 classes; more get the bare matrix)."""
    cm = np.asarray(confusion, dtype=np.float64)
    k = len(cm)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    cell = int(min(32, max(4, 480 // max(k, 1))))
    heat = np.kron(_ramp(norm), np.ones((cell, cell, 1), dtype=np.uint8))
    if k > 40:
        return heat
    labels = [f"{i} {name}" for i, name in enumerate(class_names)]
    caption = "truth \\ predicted"
    label_w, top_h = 6 * max(len(caption), *(len(t) for t in labels)) + 8, 14
    canvas = Image.new("RGB", (label_w + heat.shape[1], top_h + heat.shape[0]), (255, 255, 255))
    canvas.paste(Image.fromarray(heat), (label_w, top_h))
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 1), caption, fill=(0, 0, 0))
    for i, text in enumerate(labels):  # rows: "k name"; columns: k (the same class order)
        draw.text((2, top_h + i * cell + (cell - 10) // 2), text, fill=(0, 0, 0))
        if cell >= 12:
            draw.text((label_w + i * cell + 1, 1), str(i), fill=(0, 0, 0))
    return np.asarray(canvas)


def _fit_height(img: np.ndarray, height: int, nearest: bool) -> np.ndarray:
    h, w = img.shape[:2]
    size = (max(1, round(w * height / h)), height)
    return np.asarray(Image.fromarray(img).resize(size, Image.NEAREST if nearest else Image.BILINEAR))


def sample_grid(
    rows: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], palette: Sequence[Sequence[int]]
) -> np.ndarray:
    """``(image H x W x 3, ground truth H x W, prediction H x W)`` per row -> one RGB picture."""
    gap = 4
    lines = []
    for image, gt, pred in rows:
        panels = [
            _fit_height(image, ROW_HEIGHT, nearest=False),
            _fit_height(label_to_rgb(gt, palette), ROW_HEIGHT, nearest=True),
            _fit_height(label_to_rgb(pred, palette), ROW_HEIGHT, nearest=True),
        ]
        sep = np.full((ROW_HEIGHT, gap, 3), 255, dtype=np.uint8)
        lines.append(np.concatenate([panels[0], sep, panels[1], sep, panels[2]], axis=1))
    width = max(line.shape[1] for line in lines)
    padded = [
        np.pad(line, ((0, gap), (0, width - line.shape[1]), (0, 0)), constant_values=255) for line in lines
    ]
    return np.concatenate(padded, axis=0)


class EvalSummaries:
    """Collects the first ``num_samples`` predictions of an evaluation and writes the summaries.

    Pass :meth:`collect` as ``evaluate(..., on_prediction=...)`` and call :meth:`write` with the
    result of ``evaluate(..., with_confusion=True)``.
    """

    def __init__(self, writer: Any, dataset: Any, num_samples: int = 4) -> None:
        self.writer, self.dataset, self.num_samples = writer, dataset, num_samples
        self.predictions: list[tuple[int, np.ndarray]] = []

    def collect(self) -> Callable[[torch.Tensor, dict], None]:
        self.predictions = []

        def keep(pred: torch.Tensor, meta: dict) -> None:
            if len(self.predictions) < self.num_samples and "index" in meta:
                self.predictions.append((int(meta["index"]), pred.numpy().astype(np.uint8)))

        return keep

    def write(self, iteration: int, metrics: dict[str, Any]) -> None:
        for name, values in metrics["per_class"].items():
            if not math.isnan(values["IoU"]):
                self.writer.add_scalar(f"val_IoU/{name}", values["IoU"], iteration)
        names = list(metrics["per_class"])
        if "confusion" in metrics:
            picture = confusion_image(np.asarray(metrics["confusion"]), names)
            self.writer.add_image("val/confusion", picture, iteration, dataformats="HWC")
        if self.predictions and hasattr(self.dataset, "load"):  # a SegDataset: originals to show
            rows = []
            for index, pred in self.predictions:
                image, gt = self.dataset.load(index)
                rows.append((image, gt, pred))
            palette = getattr(self.dataset, "palette", None) or default_palette(len(names))
            self.writer.add_image("val/samples", sample_grid(rows, palette), iteration, dataformats="HWC")
        self.writer.flush()
