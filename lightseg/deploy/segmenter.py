"""The :class:`Segmenter`: label maps for images, from a model, a checkpoint or an exported file.

Full-resolution labels are ``argmax_k`` of the logits bilinearly upsampled (align_corners=False) from
the model's output stride to the padded input size, cropped to the image. On the fast path (whole
image, one scale, no flip) :func:`~lightseg.inference.upsample_argmax` computes them without the
K x H x W upsampled logits; multi-scale, flip and sliding-window inference average softmax
probabilities over passes (:func:`lightseg.inference.average_probs`), each scale resized from the
8-bit image as evaluation resizes it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from lightseg.data.transforms import resize_image
from lightseg.deploy.media import ImageLike, to_rgb_array
from lightseg.deploy.options import RunnerOptions
from lightseg.deploy.runners import build_runner
from lightseg.errors import InputError
from lightseg.inference import (
    average_probs,
    check_mode,
    pad_to_multiple,
    predict_probs,
    scaled_sizes,
    upsample_argmax,
)
from lightseg.meta import ModelMeta


class Segmenter:
    """Label maps for images.

    ``Segmenter(model_or_path, runtime=..., precision=...)`` where ``model_or_path`` is an
    ``nn.Module``, a checkpoint file, a registered model name (with ``weights=``) or an exported
    ``.onnx`` / ``.xml`` file. Then ``seg(image) -> H x W int64 labels`` or
    ``seg([img1, img2, ...]) -> list`` (same-size images are batched ``batch_size`` at a time).
    Images are RGB in 0..255: numpy H x W x 3, PIL, or torch 3 x H x W; any size (padded to the
    model's multiple, cropped back). ``predict_probs`` returns K x H x W class probabilities.

    How it runs: ``options`` (a :class:`~lightseg.deploy.options.RunnerOptions`) or its fields as
    keywords — ``runtime``: ``torch``, ``onnxruntime`` or ``openvino``; default: an exported file's
    own, else ``$LIGHTSEG_RUNTIME``, else the path measured fastest on this machine on the first
    image of each size (:mod:`lightseg.deploy.autoselect`, docs/deploy.md).
    ``precision``: ``fp32``, ``bf16`` (torch, openvino), ``fp16`` (torch on CUDA) or ``int8``
    (onnxruntime, openvino; needs ``calibration=`` real images unless the file is already int8);
    ``optimize``, ``threads``, ``calibration_count``, ``cache_dir``, ``device``, ``streams``.
    ``meta`` supplies the facts of a file exported by another tool; ``classes``/``palette``
    override the model's.

    ``seg.meta`` (:class:`~lightseg.meta.ModelMeta`), ``seg.runtime``, ``seg.precision`` say what
    runs and ``seg.why`` why (a measured path: ``None`` until the first image decides it). Calls
    from several threads at once are safe: the runner and the label computation keep no per-call
    state on the object.
    """

    def __init__(
        self,
        model: nn.Module | str | os.PathLike,
        options: RunnerOptions | None = None,
        *,
        weights: str | os.PathLike | None = None,
        num_classes: int | None = None,
        meta: ModelMeta | None = None,
        mode: str = "whole",
        crop_size: Sequence[int] = (512, 512),
        stride: Sequence[int] = (341, 341),
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
        batch_size: int = 1,
        classes: Sequence[str] | None = None,
        palette: Sequence[Sequence[int]] | None = None,
        **option_fields: Any,
    ):
        check_mode(mode)
        self.runner = build_runner(
            model,
            RunnerOptions.of(options, **option_fields),
            weights=weights,
            num_classes=num_classes,
            meta=meta,
        )
        changes = {k: v for k, v in (("classes", classes), ("palette", palette)) if v is not None}
        self.meta: ModelMeta = self.runner.meta.replace(**changes) if changes else self.runner.meta
        self.num_classes = int(self.meta.num_classes or 0)
        self.classes = self.meta.class_names
        self.palette = self.meta.colours()
        self.options = dict(
            mode=mode, crop_size=tuple(crop_size), stride=tuple(stride), scales=tuple(scales), flip=flip
        )
        if self.runner.output != "logits" and not self.fast_path:
            raise InputError(
                f"{self.runner.describe()}: the graph returns {self.runner.output}, not logits; sliding "
                "windows, scales and flips average logits: export with the default logits output"
            )
        self.batch_size = max(1, int(batch_size))
        self.mean = torch.tensor(self.meta.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(self.meta.std, dtype=torch.float32).view(1, 3, 1, 1)
        self.inv_std = 1.0 / self.std  # times, as evaluation's Normalize: the same floats as eval

    @property
    def runtime(self) -> str | None:
        return self.runner.runtime

    @property
    def precision(self) -> str | None:
        return self.runner.precision

    @property
    def why(self) -> str:
        """Why this path runs: asked for, an exported file's own, or measured fastest (and how)."""
        return self.runner.why

    @property
    def fast_path(self) -> bool:
        """Whole image, one scale 1.0, no flip: labels via :func:`upsample_argmax`."""
        o = self.options
        return o["mode"] == "whole" and o["scales"] == (1.0,) and not o["flip"]

    def _batch(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        return (x - self.mean) * self.inv_std

    @torch.no_grad()
    def _probs(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        """N x K x H x W probabilities of same-size images, averaged over scales and flips.

        8-bit pixels are resized per scale as evaluation resizes them (``MultiScaleResize``: the
        image at :func:`scaled_sizes`, then normalised), so both give the same labels at the same
        scales; other values (float tensors) are normalised first and resized as floats.
        """
        h, w = arrays[0].shape[:2]
        opts = {k: v for k, v in self.options.items() if k != "scales"}
        if not all(_is_8bit(a) for a in arrays):
            return predict_probs(self.runner, self._batch(arrays), (h, w), **self.options)
        pixels = [a.astype(np.uint8) for a in arrays]
        sizes = scaled_sizes(h, w, self.options["scales"])
        inputs = [self._batch([resize_image(p, size) for p in pixels]) for size in sizes]
        return average_probs(self.runner, inputs, (h, w), **opts)

    @torch.no_grad()
    def _labels(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        if not self.fast_path:
            return self._probs(arrays).argmax(1)
        x = self._batch(arrays)
        h, w = x.shape[-2:]
        xp = pad_to_multiple(x, self.runner.size_divisor)
        y = self.runner(xp)
        if self.runner.output == "logits":
            return upsample_argmax(y, xp.shape[-2:], crop=(h, w))
        if self.runner.output == "logits-full":
            return y[..., :h, :w].argmax(1)
        return y[..., :h, :w].long()  # an in-graph argmax

    def _groups(self, arrays: list[np.ndarray]) -> Iterator[list[int]]:
        """Indices of same-size images, at most ``batch_size`` per group, in input order."""
        group: list[int] = []
        for i, a in enumerate(arrays):
            if group and (len(group) == self.batch_size or arrays[group[0]].shape != a.shape):
                yield group
                group = []
            group.append(i)
        if group:
            yield group

    def __call__(self, images: ImageLike | Sequence[ImageLike]) -> np.ndarray | list[np.ndarray]:
        """H x W int64 labels for one image, or a list of them for a list of images."""
        single = not isinstance(images, (list, tuple))
        arrays = [to_rgb_array(im) for im in ([images] if single else images)]
        out: list[np.ndarray] = [None] * len(arrays)  # type: ignore[list-item]
        for group in self._groups(arrays):
            labels = self._labels([arrays[i] for i in group]).cpu().numpy()
            for i, lab in zip(group, labels):
                out[i] = lab
        return out[0] if single else out

    @torch.no_grad()
    def predict_probs(self, image: ImageLike) -> np.ndarray:
        """K x H x W float32 class probabilities (softmax, averaged over TTA passes)."""
        if self.runner.output != "logits":
            raise InputError(
                f"{self.runner.describe()}: class probabilities need a graph that returns logits"
            )
        return self._probs([to_rgb_array(image)])[0].cpu().numpy()


def _is_8bit(a: np.ndarray) -> bool:
    """Whether an RGB array holds 8-bit values (integers in 0..255), as decoded images do."""
    return bool(a.min() >= 0 and a.max() <= 255 and np.array_equal(a, np.rint(a)))
