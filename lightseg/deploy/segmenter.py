"""The :class:`Segmenter`: label maps for images, from a model, a checkpoint or an exported file.

An image is seen as evaluation sees it (:mod:`lightseg.deploy.scale`): resized, keeping its aspect
ratio, to the model's test scale, run, and its logits brought back to the image's own size.
Full-resolution labels are ``argmax_k`` of the logits bilinearly upsampled (align_corners=False) to
the padded input size, cropped, and — when the image was resized — upsampled again to its original
size, as ``lightseg eval`` computes them; :func:`~lightseg.inference.upsample_argmax` gets them
without the K x H x W upsampled logits. Multi-scale and flip average softmax probabilities
(:func:`lightseg.inference.average_probs`), which needs them at full size.

Every pass is planned against a memory budget before anything is allocated
(:mod:`lightseg.deploy.memory`): batches are cut to what fits, a whole-image pass that does not fit
runs in sliding windows, and what cannot fit at all is refused with the figures.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from lightseg.data.transforms import normalization, resize_mask
from lightseg.deploy.media import ImageLike, to_rgb_array
from lightseg.deploy.memory import default_budget, describe, parse_size, pass_cost
from lightseg.deploy.options import RunnerOptions
from lightseg.deploy.runners import build_runner
from lightseg.deploy.scale import (
    MODEL,
    Scale,
    describe_scale,
    input_size,
    prepare,
    resolve_scale,
)
from lightseg.errors import InputError, MemoryBudgetError
from lightseg.inference import (
    average_probs,
    check_mode,
    forward_slide,
    pad_to_multiple,
    resize_logits,
    scaled_sizes,
    upsample_argmax,
)
from lightseg.inference.upsample import DIRECT_WORKSPACE, label_dtype
from lightseg.meta import ModelMeta

# Workspace of the labels at the image's size (upsample_argmax): uint8 gathers, masks and the
# indices of boundary pixels, per output pixel (measured peak 11-14 B/px on CamVid at 4032x3024).
LABEL_BYTES_PER_PIXEL = 16


@dataclass(frozen=True)
class Plan:
    """How a batch of ``n`` same-size images runs: at ``size``, whole or in windows of ``crop``."""

    n: int
    size: tuple[int, int]
    mode: str
    crop: tuple[int, int]
    stride: tuple[int, int]
    bytes: int


class Segmenter:
    """Label maps for images.

    ``Segmenter(model_or_path, runtime=..., precision=...)`` where ``model_or_path`` is an
    ``nn.Module``, a checkpoint file, a registered model name (with ``weights=``) or an exported
    ``.onnx`` / ``.xml`` file. Then ``seg(image) -> H x W labels`` (uint8 for up to 256 classes,
    else int16) or ``seg([img1, img2, ...]) -> list`` (same-size images are batched ``batch_size``
    at a time, fewer when the memory budget holds fewer). Images are RGB in 0..255: numpy H x W x 3,
    PIL, or torch 3 x H x W, of any size. ``predict_probs`` returns K x H x W class probabilities.

    ``scale``: how an image is seen — ``"model"`` (default: resized keeping its aspect to the
    model's ``meta.test_scale``, the scale it was evaluated at), ``"native"`` (as it is, padded to
    the model's multiple) or a (long side, short side) bound. ``max_memory`` (bytes or ``"2G"``):
    what one pass may allocate beyond the loaded model; default half the memory available now.

    How it runs: ``options`` (a :class:`~lightseg.deploy.options.RunnerOptions`) or its fields as
    keywords — ``runtime``: ``torch``, ``onnxruntime`` or ``openvino``; default: an exported file's
    own, else ``$LIGHTSEG_RUNTIME``, else the path measured fastest on this machine on the first
    image of each size (:mod:`lightseg.deploy.autoselect`, docs/deploy.md).
    ``precision``: ``fp32``, ``bf16`` (torch, openvino), ``fp16`` (torch on CUDA) or ``int8``
    (onnxruntime, openvino; needs ``calibration=`` real images unless the file is already int8);
    ``optimize``, ``threads``, ``calibration_count``, ``cache_dir``, ``device``, ``streams``.
    ``meta`` supplies the facts of a file exported by another tool; ``classes``/``palette``
    override the model's.

    ``seg.meta`` (:class:`~lightseg.meta.ModelMeta`), ``seg.runtime``, ``seg.precision``,
    ``seg.bound`` (the scale, ``None`` for native) and ``seg.budget`` say what runs and ``seg.why``
    why (a measured path: ``None`` until the first image decides it). Calls from several threads
    at once are safe: the runner and the label computation keep no per-call state on the object.
    """

    def __init__(
        self,
        model: nn.Module | str | os.PathLike,
        options: RunnerOptions | None = None,
        *,
        weights: str | os.PathLike | None = None,
        num_classes: int | None = None,
        meta: ModelMeta | None = None,
        scale: Scale = MODEL,
        max_memory: int | str | None = None,
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
        self.bound = resolve_scale(scale, self.meta)
        self.budget = parse_size(max_memory) if max_memory is not None else default_budget()
        self.cost = pass_cost(self.meta.name, self.runtime)
        self.options = dict(
            mode=mode, crop_size=tuple(crop_size), stride=tuple(stride), scales=tuple(scales), flip=flip
        )
        if self.runner.output != "logits" and not self.single_pass:
            raise InputError(
                f"{self.runner.describe()}: the graph returns {self.runner.output}, not logits; sliding "
                "windows, scales and flips average logits: export with the default logits output"
            )
        self.batch_size = max(1, int(batch_size))
        self.labels_dtype = label_dtype(self.num_classes)
        self.mean, self.inv_std = normalization(self.meta.mean, self.meta.std)

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
    def single_pass(self) -> bool:
        """Whole image, one scale 1.0, no flip: labels via :func:`upsample_argmax`."""
        o = self.options
        return o["mode"] == "whole" and o["scales"] == (1.0,) and not o["flip"]

    def describe(self) -> str:
        """What runs and how an image is seen, for logs and ``lightseg predict``."""
        return f"{self.runner.describe()}, scale {describe_scale(self.bound)}, memory budget {describe(self.budget)}"

    def input_size(self, h: int, w: int) -> tuple[int, int]:
        """The (H, W) an h x w image is run at (:func:`lightseg.deploy.scale.input_size`)."""
        return input_size(h, w, self.bound, self.runner.input_size)

    # ---- memory --------------------------------------------------------------------------------
    def _padded(self, size: tuple[int, int]) -> tuple[int, int]:
        d = self.runner.size_divisor
        return -(-size[0] // d) * d, -(-size[1] // d) * d

    def plan(self, n: int, h: int, w: int) -> Plan:
        """How ``n`` h x w images run within the budget: the whole image when it fits, else sliding
        windows as large as fit (the file's size for an exported graph), else a
        :class:`~lightseg.errors.MemoryBudgetError` with the figures."""
        size = self.input_size(h, w)
        o = self.options
        need = self._bytes(n, h, w, size)
        if not self.single_pass:
            why = "multi-scale/flip inference averages K x H x W probabilities; drop --scales/--flip"
            self._check(need, n, h, w, why)
            return Plan(n, size, o["mode"], o["crop_size"], o["stride"], need)
        if need <= self.budget:
            return Plan(n, size, "whole", o["crop_size"], o["stride"], need)
        # Sliding windows: the logits of the whole input are accumulated, one window runs at a time.
        fixed = self._labels_bytes(n, h, w) + 2 * n * self.num_classes * size[0] * size[1] * 4
        crop = self._window(n, self.budget - fixed)
        need = fixed + self.cost.bytes(crop[0] * crop[1], n)
        self._check(need, n, h, w, "even its sliding windows do not fit")
        stride = (max(1, crop[0] * 2 // 3), max(1, crop[1] * 2 // 3))
        return Plan(n, size, "slide", crop, stride, need)

    def _bytes(self, n: int, h: int, w: int, size: tuple[int, int]) -> int:
        """Memory of ``n`` h x w images run at ``size`` as the options say (whole image, or the
        probabilities of every multi-scale/flip pass averaged at the image's own size)."""
        if not self.single_pass:
            return self._probs_bytes(n, h, w, size)
        hp, wp = self._padded(size)
        resized = n * self.num_classes * hp * wp * 4 if size != (h, w) else 0  # logits at the input size
        return self.cost.bytes(hp * wp, n) + resized + self._labels_bytes(n, h, w)

    def _probs_bytes(self, n: int, h: int, w: int, size: tuple[int, int]) -> int:
        """A pass at ``size`` and the K x h x w probabilities averaged at the image's size."""
        hp, wp = self._padded(size)
        return self.cost.bytes(hp * wp, n) + 3 * n * self.num_classes * h * w * 4

    def _labels_bytes(self, n: int, h: int, w: int) -> int:
        return n * h * w * LABEL_BYTES_PER_PIXEL + 3 * DIRECT_WORKSPACE  # bands of the direct computation

    def _window(self, n: int, room: int) -> tuple[int, int]:
        """The largest square window (a multiple of the size divisor) whose pass fits ``room``; an
        exported graph runs its own input size."""
        if self.runner.input_size is not None:
            return self.runner.input_size
        d = self.runner.size_divisor
        side = int(max(self.cost.largest_pixels(room / n) if room > 0 else 0, 0) ** 0.5) // d * d
        return (max(side, d), max(side, d))

    def _check(self, need: int, n: int, h: int, w: int, why: str) -> None:
        if need > self.budget:
            raise MemoryBudgetError(
                f"a {w}x{h} image at scale {describe_scale(self.bound)} needs about {describe(need)} for "
                f"{'a batch of ' + str(n) if n > 1 else 'one pass'}; the memory budget is {describe(self.budget)} "
                f"({why}; raise --max-memory, or use a smaller --scale)"
            )

    def _batch_size(self, h: int, w: int) -> int:
        """At most ``batch_size`` images of h x w, and no more than the budget holds."""
        one = max(self._bytes(1, h, w, self.input_size(h, w)), 1)
        return max(1, min(self.batch_size, self.budget // one))

    # ---- labels --------------------------------------------------------------------------------
    @torch.no_grad()
    def _labels(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        """N x H x W labels for same-size H x W x 3 uint8 images."""
        h, w = arrays[0].shape[:2]
        plan = self.plan(len(arrays), h, w)
        if not self.single_pass:
            return self._probs(arrays).argmax(1).to(self.labels_dtype)
        x = prepare(arrays, plan.size, self.mean, self.inv_std)
        if plan.mode == "slide":
            logits = forward_slide(self.runner, x, self.num_classes, plan.crop, plan.stride)
            if plan.size == (h, w):
                return logits.argmax(1).to(self.labels_dtype)
            return upsample_argmax(logits, (h, w), dtype=self.labels_dtype)
        xp = pad_to_multiple(x, self.runner.size_divisor)
        y = self.runner(xp)
        if self.runner.output == "argmax":  # labels from the graph
            labels = y[..., : plan.size[0], : plan.size[1]].to(self.labels_dtype)
            return labels if plan.size == (h, w) else _nearest(labels, (h, w))
        if self.runner.output == "logits-full":
            y = y[..., : plan.size[0], : plan.size[1]]
            return upsample_argmax(y, (h, w), dtype=self.labels_dtype)
        if plan.size == (h, w):
            return upsample_argmax(y, xp.shape[-2:], crop=(h, w), dtype=self.labels_dtype)
        logits = resize_logits(y, xp.shape[-2:])[..., : plan.size[0], : plan.size[1]]
        return upsample_argmax(logits, (h, w), dtype=self.labels_dtype)

    @torch.no_grad()
    def _probs(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        """N x K x H x W probabilities averaged over the scales and flips, as evaluation does."""
        h, w = arrays[0].shape[:2]
        o = self.options
        fixed = self.runner.input_size  # an exported graph of fixed size sees each scale within it
        sizes = [input_size(*s, None, fixed) for s in scaled_sizes(h, w, o["scales"], self.bound)]
        inputs = [prepare(arrays, s, self.mean, self.inv_std) for s in sizes]
        return average_probs(
            self.runner,
            inputs,
            (h, w),
            mode=o["mode"],
            crop_size=o["crop_size"],
            stride=o["stride"],
            flip=o["flip"],
        )

    def _groups(self, arrays: list[np.ndarray]) -> Iterator[list[int]]:
        """Indices of same-size images, as many per group as the batch size and budget allow, in
        input order."""
        group: list[int] = []
        limit = 0
        for i, a in enumerate(arrays):
            if group and (len(group) == limit or arrays[group[0]].shape != a.shape):
                yield group
                group = []
            if not group:
                limit = self._batch_size(*a.shape[:2])
            group.append(i)
        if group:
            yield group

    def __call__(self, images: ImageLike | Sequence[ImageLike]) -> np.ndarray | list[np.ndarray]:
        """H x W labels for one image, or a list of them for a list of images."""
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
        array = to_rgb_array(image)
        h, w = array.shape[:2]
        need = self._probs_bytes(1, h, w, self.input_size(h, w))
        self._check(need, 1, h, w, "probabilities are K x H x W floats at the image's size")
        return self._probs([array])[0].cpu().numpy()


def _nearest(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Labels brought to ``size`` by nearest neighbour (cv2's rule, as masks are resized)."""
    return torch.stack([torch.from_numpy(resize_mask(lab.numpy(), size)) for lab in labels.cpu()])
