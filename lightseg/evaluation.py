"""Evaluation over a whole split: the metric loop behind ``lightseg eval`` and training's periodic
evaluation.

Each image is resized as the recipe's test pipeline says (the mask stays at its original size),
run through :func:`lightseg.inference.predict_probs` (whole or slide, optional multi-scale
+ flip), and the argmax at the original size is accumulated into one confusion matrix over the
split. Under DDP every process takes every ``world``-th image and the matrices are
summed, so the figures equal a single-process run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from lightseg.config import Config, EvalConfig
from lightseg.inference import average_probs, predict_probs
from lightseg.meta import IGNORE_INDEX
from lightseg.metrics import SegMetrics

# Cityscapes trainId (0..18) -> labelId, the ids the test server expects (cityscapesScripts labels.py).
CITYSCAPES_TRAINID_TO_LABELID = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)


def build_eval_dataset(cfg: Config, split: str) -> Dataset:
    """``split`` with the recipe's test pipeline (resize to ``data.test_scale`` keeping the aspect;
    with several ``eval.scales`` the original image resized to each ratio of it)."""
    from lightseg.data import build_dataset_from_config

    return build_dataset_from_config(cfg.data, split, eval_transform(cfg))


def eval_transform(cfg: Config) -> Any:
    """The recipe's test pipeline (see :func:`build_eval_dataset`)."""
    from lightseg.data.transforms import build_eval_transform

    return build_eval_transform(scale=tuple(cfg.data.test_scale), ratios=cfg.eval.scales)


def _shard(n: int) -> range:
    if dist.is_available() and dist.is_initialized():
        return range(dist.get_rank(), n, dist.get_world_size())
    return range(n)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    eval_cfg: EvalConfig,
    device: torch.device | str = "cpu",
    *,
    amp_dtype: torch.dtype | None = None,
    progress: bool = True,
    on_prediction: Callable[[torch.Tensor, dict], None] | None = None,
    with_confusion: bool = False,
) -> dict[str, Any]:
    """Metrics of ``model`` on ``dataset`` (``{"mIoU", "mAcc", "aAcc", "per_class"}``, percent).

    ``dataset[i]`` gives ``image`` (3 x h x w, normalised, resized) and ``mask`` (H x W, original
    size); the prediction is made at H x W. ``on_prediction(pred HxW int64, meta)`` sees every
    prediction (e.g. to write files). ``with_confusion`` adds ``"confusion"``, the K x K count
    matrix (rows: ground truth, columns: prediction).
    """
    from tqdm import tqdm

    device = torch.device(device)
    is_module = isinstance(model, nn.Module)  # else a runner of an exported file (no train mode)
    was_training = is_module and model.training
    if is_module:
        model.eval()
    num_classes = int(getattr(dataset, "num_classes", 0) or model.num_classes)
    metrics = SegMetrics(
        num_classes,
        int(getattr(dataset, "ignore_index", IGNORE_INDEX)),
        list(getattr(dataset, "classes", []) or []) or None,
    )
    for i in tqdm(_shard(len(dataset)), desc="eval", disable=not progress, leave=False, unit="img"):
        sample = dataset[i]
        image = torch.as_tensor(sample["image"])[None].to(device)
        mask = torch.as_tensor(sample["mask"])
        opts = {"mode": eval_cfg.mode, "crop_size": eval_cfg.crop_size, "stride": eval_cfg.stride}
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            if "images" in sample:  # multi-scale: each scale already resized from the original image
                inputs = [torch.as_tensor(x)[None].to(device) for x in sample["images"]]
                probs = average_probs(model, inputs, tuple(mask.shape[-2:]), flip=eval_cfg.flip, **opts)
            else:
                probs = predict_probs(
                    model, image, tuple(mask.shape[-2:]), scales=eval_cfg.scales, flip=eval_cfg.flip, **opts
                )
        pred = probs.argmax(1)[0].cpu()
        metrics.update(pred, mask)
        if on_prediction is not None:
            on_prediction(pred, sample.get("meta", {}))
    metrics.all_reduce()
    if is_module:
        model.train(was_training)
    result = metrics.compute()
    if with_confusion:
        result["confusion"] = metrics.matrix.clone()
    return result


def write_cityscapes_label_ids(pred: torch.Tensor, path: str | Path) -> Path:
    """Write an H x W trainId prediction as the test server's labelId PNG."""
    from PIL import Image

    lut = np.zeros(256, dtype=np.uint8)
    lut[: len(CITYSCAPES_TRAINID_TO_LABELID)] = CITYSCAPES_TRAINID_TO_LABELID
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(lut[pred.numpy().astype(np.uint8)]).save(path)
    return path


def cityscapes_writer(out_dir: str | Path) -> Callable[[torch.Tensor, dict], None]:
    """An ``on_prediction`` callback writing ``<out_dir>/<image stem>.png`` in labelIds
    (e.g. ``berlin_000000_000019_leftImg8bit.png``, the names the server accepts)."""

    def write(pred: torch.Tensor, meta: dict) -> None:
        write_cityscapes_label_ids(pred, Path(out_dir) / (Path(meta["image_path"]).stem + ".png"))

    return write


def json_ready(result: dict) -> dict:
    """NaN (classes absent from the split) as ``null`` so that the output is strict JSON."""

    def fix(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        return None if isinstance(v, float) and math.isnan(v) else v

    return fix(result)
