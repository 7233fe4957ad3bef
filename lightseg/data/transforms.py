"""Transforms on (image, mask) samples, with the semantics of mmseg 0.27's pipeline (SPEC 1.6).

A sample is a dict ``{"image": uint8 (H, W, 3) RGB, "mask": uint8 (H, W) or None, "meta": dict}``.
Every transform is ``t(sample, rng) -> sample``; all randomness comes from the ``numpy.random.Generator``
passed in (the dataset makes one per sample), so a sample is reproducible from (index, seed) alone.

Behaviour kept from mmseg/mmcv (the CGRSeg recipe): the resize target is ``scale × U(ratio_range)``
with the aspect kept (mmcv ``imrescale``, sizes rounded with ``int(x + 0.5)``); images are resized
bilinearly *without* anti-aliasing, as cv2's ``INTER_LINEAR`` does; masks always with nearest
neighbour using cv2's ``INTER_NEAREST`` index rule (``floor(dst * src / dst_size)``); the random crop
retries up to 10 times while one class fills ≥ ``cat_max_ratio`` of the crop (ignore excluded); the
photometric distortion draws its coins in mmseg's order. Hue/saturation go through PIL's HSV (hue
on 0..254 instead of cv2's 0..179; the ±18 shift is rescaled accordingly).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from lightseg.meta import (
    IGNORE_INDEX,
    IMAGENET_MEAN,
    IMAGENET_STD,
)  # ImageNet statistics, RGB, 0..255; re-exported

Sample = dict[str, Any]
Box = tuple[int, int, int, int]  # (y0, y1, x0, x1)


def _rng(rng: np.random.Generator | None) -> np.random.Generator:
    return np.random.default_rng() if rng is None else rng


def rescale_size(h: int, w: int, scale: Sequence[float]) -> tuple[int, int]:
    """mmcv ``imrescale`` target (H, W): fit the long side in max(scale) and the short in min(scale)."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def ratio_bound(scale: Sequence[float], ratio: float) -> tuple[int, int]:
    """The resize bound ``scale`` x ``ratio``, each side truncated, as mmseg's ``Resize(ratio_range)``
    and ``MultiScaleFlipAug(img_ratios)`` compute it."""
    return int(scale[0] * ratio), int(scale[1] * ratio)


def multiscale_sizes(
    h: int, w: int, ratios: Sequence[float], scale: Sequence[float] | None = None
) -> list[tuple[int, int]]:
    """(H, W) of an h x w image at each test-time ``ratio``: the keep-ratio rescale into
    :func:`ratio_bound` ``(scale, ratio)``, as mmseg 0.x's ``MultiScaleFlipAug`` + ``Resize(keep_ratio)``.

    ``scale=None`` takes the image's own size as the bound (mmseg's ``img_scale=None`` mode), so
    ratio 1.0 keeps it; this is the rule of every multi-scale path (evaluation and predict).
    """
    bound = (max(h, w), min(h, w)) if scale is None else scale
    return [rescale_size(h, w, ratio_bound(bound, r)) for r in ratios]


def resize_image(
    img: np.ndarray, size: tuple[int, int], box: tuple[int, int, int, int] | None = None
) -> np.ndarray:
    """Bilinear resize of an (H, W, 3) uint8 image to ``size`` (H, W) with half-pixel centres.

    Matches cv2 ``INTER_LINEAR`` (no anti-aliasing) to ±1 grey level. PIL's ``resize`` anti-aliases
    when shrinking, so shrinking uses an affine transform, which samples bilinearly at the mapped
    pixel centres. ``box = (y0, y1, x0, x1)`` renders only that window of the resized image (same
    values as resizing everything and cropping, without paying for the pixels thrown away).
    """
    h, w = img.shape[:2]
    oh, ow = size
    y0, y1, x0, x1 = (0, oh, 0, ow) if box is None else box
    if (oh, ow) == (h, w):
        return img[y0:y1, x0:x1]
    pil = Image.fromarray(img)
    sx, sy = w / ow, h / oh
    if oh >= h and ow >= w:  # enlarging: PIL's bilinear filter has support 1 here, i.e. plain bilinear
        src_box = (x0 * sx, y0 * sy, x1 * sx, y1 * sy)
        out = pil.resize((x1 - x0, y1 - y0), Image.BILINEAR, box=src_box)
    else:
        # output centre (x + .5) maps to input (x + .5) * s; PIL samples input pixel centres at +.5
        coeffs = (sx, 0, x0 * sx, 0, sy, y0 * sy)
        out = pil.transform((x1 - x0, y1 - y0), Image.AFFINE, coeffs, resample=Image.BILINEAR)
    return np.asarray(out)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize with cv2's ``INTER_NEAREST`` rule ``src = floor(dst * in / out)``."""
    if tuple(size) == mask.shape:
        return mask
    rows, cols = nearest_indices(mask.shape, size)
    return np.take(np.take(mask, rows, axis=0), cols, axis=1)


def nearest_indices(shape: tuple[int, int], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Source row and column of every output pixel under cv2's ``INTER_NEAREST``."""
    (h, w), (oh, ow) = shape, size
    rows = np.minimum((np.arange(oh) * (h / oh)).astype(np.int64), h - 1)
    cols = np.minimum((np.arange(ow) * (w / ow)).astype(np.int64), w - 1)
    return rows, cols


class Compose:
    """Apply transforms in order; ``Compose(ts)(sample, rng)``."""

    def __init__(self, transforms: Sequence[Any]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        rng = _rng(rng)
        for t in self.transforms:
            sample = t(sample, rng)
        return sample

    def __repr__(self) -> str:
        return "Compose(\n  " + ",\n  ".join(repr(t) for t in self.transforms) + "\n)"


class Resize:
    """Resize keeping the aspect ratio to ``scale`` (long, short), times U(ratio_range) if given.

    ``resize_mask=False`` leaves the mask at its original size (evaluation: metrics are computed at
    the label's resolution). ``meta["img_size"]`` records the new (H, W).
    """

    def __init__(
        self,
        scale: Sequence[int] = (2048, 512),
        ratio_range: Sequence[float] | None = None,
        resize_mask: bool = True,
    ) -> None:
        self.scale = tuple(scale)
        self.ratio_range = None if ratio_range is None else tuple(ratio_range)
        self.resize_mask = resize_mask

    def draw_size(self, h: int, w: int, rng: np.random.Generator | None) -> tuple[int, int]:
        """The (H, W) an (h, w) image is resized to (one ratio draw when ``ratio_range`` is set)."""
        scale: tuple[float, ...] = self.scale
        if self.ratio_range is not None:
            lo, hi = self.ratio_range
            ratio = _rng(rng).random() * (hi - lo) + lo  # mmseg: random_sample() * (max - min) + min
            scale = ratio_bound(self.scale, ratio)
        return rescale_size(h, w, scale)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        size = self.draw_size(*sample["image"].shape[:2], rng)
        sample["image"] = resize_image(sample["image"], size)
        if self.resize_mask and sample.get("mask") is not None:
            sample["mask"] = resize_mask(sample["mask"], size)
        sample["meta"]["img_size"] = size
        return sample

    def __repr__(self) -> str:
        return f"Resize(scale={self.scale}, ratio_range={self.ratio_range}, resize_mask={self.resize_mask})"


class RandomCrop:
    """Random crop of ``crop_size`` (H, W), retrying while one class fills ≥ ``cat_max_ratio``.

    mmseg's rule: draw a box; up to 10 times, if the mask crop has fewer than two non-ignore classes
    or its largest class covers ≥ cat_max_ratio of the non-ignore pixels, draw again. The last box
    drawn is used even if it fails. Images smaller than the crop are cropped to their own size
    (``Pad`` fills the rest).
    """

    def __init__(
        self,
        crop_size: Sequence[int] = (512, 512),
        cat_max_ratio: float = 1.0,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index

    def _box(self, h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        ch, cw = self.crop_size
        y = int(rng.integers(0, max(h - ch, 0) + 1))
        x = int(rng.integers(0, max(w - cw, 0) + 1))
        return y, min(y + ch, h), x, min(x + cw, w)

    def _acceptable(self, mask: np.ndarray) -> bool:
        counts = np.bincount(mask.ravel(), minlength=256)
        counts[self.ignore_index] = 0
        counts = counts[counts > 0]
        return len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio

    def choose_box(
        self, h: int, w: int, window: Callable[[Box], np.ndarray] | None, rng: np.random.Generator
    ) -> Box:
        """The crop box (y0, y1, x0, x1) of an (h, w) sample; ``window(box)`` gives the mask inside a box."""
        box = self._box(h, w, rng)
        if self.cat_max_ratio < 1.0 and window is not None:
            for _ in range(10):
                if self._acceptable(window(box)):
                    break
                box = self._box(h, w, rng)
        return box

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        mask = sample.get("mask")
        window = None if mask is None else (lambda b: mask[b[0] : b[1], b[2] : b[3]])
        y0, y1, x0, x1 = self.choose_box(*sample["image"].shape[:2], window, _rng(rng))
        sample["image"] = sample["image"][y0:y1, x0:x1]
        if mask is not None:
            sample["mask"] = mask[y0:y1, x0:x1]
        sample["meta"]["crop_box"] = (y0, y1, x0, x1)
        return sample

    def __repr__(self) -> str:
        return f"RandomCrop(crop_size={self.crop_size}, cat_max_ratio={self.cat_max_ratio})"


class RandomResizeCrop:
    """``Resize(scale, ratio_range)`` then ``RandomCrop(crop_size, cat_max_ratio)``, fused.

    Same random draws in the same order and the same pixels (±1 grey level from PIL's rounding) as
    the two transforms in sequence, but only the crop window of the image is ever resized: enlarging
    a 480×360 image ×2.8 to crop 512×512 out of it otherwise costs most of the pipeline's time.
    """

    def __init__(
        self,
        crop_size: Sequence[int] = (512, 512),
        scale: Sequence[int] = (2048, 512),
        ratio_range: Sequence[float] | None = (0.5, 2.0),
        cat_max_ratio: float = 1.0,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        self.resize = Resize(scale, ratio_range)
        self.crop = RandomCrop(crop_size, cat_max_ratio, ignore_index)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        rng = _rng(rng)
        size = self.resize.draw_size(*sample["image"].shape[:2], rng)
        mask = sample.get("mask")
        window = None
        if mask is not None:
            # the resized mask is only ever looked at through crop windows: index just those
            rows, cols = nearest_indices(mask.shape, size)

            def window(b: Box) -> np.ndarray:
                return np.take(np.take(mask, rows[b[0] : b[1]], axis=0), cols[b[2] : b[3]], axis=1)

        box = self.crop.choose_box(*size, window, rng)
        sample["image"] = resize_image(sample["image"], size, box)
        if window is not None:
            sample["mask"] = window(box)
        sample["meta"].update(img_size=size, crop_box=box)
        return sample

    def __repr__(self) -> str:
        return f"RandomResizeCrop({self.resize!r}, {self.crop!r})"


class RandomFlip:
    """Horizontal flip of image and mask with probability ``prob``."""

    def __init__(self, prob: float = 0.5) -> None:
        self.prob = prob

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        flip = _rng(rng).random() < self.prob
        if flip:
            sample["image"] = sample["image"][:, ::-1]
            if sample.get("mask") is not None:
                sample["mask"] = sample["mask"][:, ::-1]
        sample["meta"]["flip"] = bool(flip)
        return sample

    def __repr__(self) -> str:
        return f"RandomFlip(prob={self.prob})"


def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """mmseg ``PhotoMetricDistortion.convert``: ``img * alpha + beta`` clipped to 0..255, truncated."""
    out = img.astype(np.float32)
    if alpha != 1.0:
        out *= alpha
    if beta != 0.0:
        out += beta
    return np.clip(out, 0, 255, out=out).astype(np.uint8)


class PhotoMetricDistortion:
    """mmseg's photometric distortion; each step is applied with probability 0.5.

    Order: brightness (±``brightness_delta``), then contrast (×U(contrast_range)) either here or last
    (a coin decides), saturation (×U(saturation_range)) and hue (+randint(−hue_delta, hue_delta) in
    cv2 units of 2°). Operates on uint8 images, as mmseg does.
    """

    def __init__(
        self,
        brightness_delta: int = 32,
        contrast_range: Sequence[float] = (0.5, 1.5),
        saturation_range: Sequence[float] = (0.5, 1.5),
        hue_delta: int = 18,
    ) -> None:
        self.brightness_delta = brightness_delta
        self.contrast_range = tuple(contrast_range)
        self.saturation_range = tuple(saturation_range)
        self.hue_delta = hue_delta

    def _contrast(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.integers(2):
            return _convert(img, alpha=rng.uniform(*self.contrast_range))
        return img

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        rng = _rng(rng)
        img = sample["image"]
        if rng.integers(2):
            img = _convert(img, beta=rng.uniform(-self.brightness_delta, self.brightness_delta))
        contrast_first = rng.integers(2) == 1
        if contrast_first:
            img = self._contrast(img, rng)
        sat = rng.uniform(*self.saturation_range) if rng.integers(2) else None
        hue = int(rng.integers(-self.hue_delta, self.hue_delta)) if rng.integers(2) else None
        if sat is not None or hue is not None:
            img = self._hsv(img, sat, hue)
        if not contrast_first:
            img = self._contrast(img, rng)
        sample["image"] = img
        return sample

    @staticmethod
    def _hsv(img: np.ndarray, sat: float | None, hue: int | None) -> np.ndarray:
        hsv = np.array(Image.fromarray(np.ascontiguousarray(img)).convert("HSV"))
        if sat is not None:
            hsv[..., 1] = _convert(hsv[..., 1], alpha=sat)
        if hue is not None:
            # cv2 hue spans 0..179 (2° steps); PIL's spans 0..254, so rescale the shift.
            shift = round(hue * 255 / 180)
            hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + shift) % 255).astype(np.uint8)
        return np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))

    def __repr__(self) -> str:
        return (
            f"PhotoMetricDistortion(brightness_delta={self.brightness_delta}, contrast_range="
            f"{self.contrast_range}, saturation_range={self.saturation_range}, hue_delta={self.hue_delta})"
        )


class Normalize:
    """``(image - mean) / std`` per RGB channel; uint8 (H, W, 3) -> float32 tensor (3, H, W).

    Also turns the mask into an int64 tensor: from here on a sample holds tensors.
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.inv_std = 1.0 / torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        img = sample["image"]
        out = np.empty((3, *img.shape[:2]), dtype=np.float32)
        out[...] = img.transpose(2, 0, 1)  # one pass: HWC uint8 -> CHW float32
        sample["image"] = torch.from_numpy(out).sub_(self.mean).mul_(self.inv_std)
        return ToTensor()(sample)

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.flatten().tolist()}, std={(1 / self.inv_std).flatten().tolist()})"


class Pad:
    """Pad bottom/right to ``size`` (H, W) or to a multiple of ``size_divisor``; image 0, mask 255.

    ``pad_mask=False`` leaves the mask alone (evaluation keeps it at the original label size).
    """

    def __init__(
        self,
        size: Sequence[int] | None = None,
        size_divisor: int | None = None,
        pad_val: float = 0.0,
        seg_pad_val: int = IGNORE_INDEX,
        pad_mask: bool = True,
    ) -> None:
        if (size is None) == (size_divisor is None):
            raise ValueError("Pad: give exactly one of size or size_divisor")
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.size_divisor = size_divisor
        self.pad_val = pad_val
        self.seg_pad_val = seg_pad_val
        self.pad_mask = pad_mask

    def _target(self, h: int, w: int) -> tuple[int, int]:
        if self.size is not None:
            return max(h, self.size[0]), max(w, self.size[1])
        d = self.size_divisor
        return -(-h // d) * d, -(-w // d) * d

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        img = sample["image"]
        chw = isinstance(img, torch.Tensor)  # after Normalize: (3, H, W) tensor; before: (H, W, 3) array
        h, w = img.shape[-2:] if chw else img.shape[:2]
        th, tw = self._target(h, w)
        if (th, tw) != (h, w):
            if chw:
                sample["image"] = torch.nn.functional.pad(img, (0, tw - w, 0, th - h), value=self.pad_val)
            else:
                out = np.full((th, tw, img.shape[2]), self.pad_val, dtype=img.dtype)
                out[:h, :w] = img
                sample["image"] = out
            mask = sample.get("mask")
            if self.pad_mask and mask is not None and tuple(mask.shape) == (h, w):
                if isinstance(mask, torch.Tensor):
                    m = torch.nn.functional.pad(mask, (0, tw - w, 0, th - h), value=self.seg_pad_val)
                else:
                    m = np.full((th, tw), self.seg_pad_val, dtype=mask.dtype)
                    m[:h, :w] = mask
                sample["mask"] = m
        sample["meta"]["pad_size"] = (th, tw)
        return sample

    def __repr__(self) -> str:
        return f"Pad(size={self.size}, size_divisor={self.size_divisor}, pad_val={self.pad_val}, seg_pad_val={self.seg_pad_val})"


class ToTensor:
    """image (H, W, 3) array -> float32 tensor (3, H, W) (values unchanged); mask -> int64 tensor (H, W).

    Leaves tensors alone, so it may follow ``Normalize``.
    """

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        img = sample["image"]
        if not isinstance(img, torch.Tensor):
            sample["image"] = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()
        mask = sample.get("mask")
        if mask is not None and not isinstance(mask, torch.Tensor):
            sample["mask"] = torch.from_numpy(np.ascontiguousarray(mask)).long()
        return sample

    def __repr__(self) -> str:
        return "ToTensor()"


def build_train_transform(
    crop_size: Sequence[int] = (512, 512),
    scale: Sequence[int] = (2048, 512),
    ratio_range: Sequence[float] = (0.5, 2.0),
    cat_max_ratio: float = 0.75,
    flip_prob: float = 0.5,
    photometric: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    ignore_index: int = IGNORE_INDEX,
) -> Compose:
    """The CGRSeg/mmseg train pipeline (SPEC 1.6): resize × ratio, crop, flip, photometric, normalise, pad.

    Output: ``image`` float32 (3, crop_h, crop_w), ``mask`` int64 (crop_h, crop_w) with 255 padding.
    """
    ts: list[Any] = [
        RandomResizeCrop(crop_size, scale, ratio_range, cat_max_ratio, ignore_index),
        RandomFlip(flip_prob),
    ]
    if photometric:
        ts.append(PhotoMetricDistortion())
    ts += [Normalize(mean, std), Pad(size=crop_size, pad_val=0.0, seg_pad_val=ignore_index)]
    return Compose(ts)


class MultiScaleResize:
    """Multi-scale test-time augmentation as mmseg's ``MultiScaleFlipAug(img_ratios=...)``: the
    ORIGINAL image resized to each of :func:`multiscale_sizes` (bound ``scale`` x ratio, aspect
    kept), each normalised.

    Sets ``images`` (one float32 (3, h_r, w_r) tensor per ratio) and ``image`` (the first); the
    mask stays at its original size.
    """

    def __init__(
        self,
        scale: Sequence[int],
        ratios: Sequence[float],
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.scale = (int(scale[0]), int(scale[1]))
        self.ratios = tuple(float(r) for r in ratios)
        self.normalize = Normalize(mean, std)

    def sizes(self, h: int, w: int) -> list[tuple[int, int]]:
        """The (H, W) an h x w image is resized to, one per ratio."""
        return multiscale_sizes(h, w, self.ratios, self.scale)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        original = sample["image"]
        images = []
        for size in self.sizes(*original.shape[:2]):
            images.append(self.normalize({**sample, "image": resize_image(original, size)})["image"])
        sample = ToTensor()({**sample, "image": images[0]})
        sample["images"] = images
        return sample

    def __repr__(self) -> str:
        return f"MultiScaleResize(scale={self.scale}, ratios={list(self.ratios)})"


def build_eval_transform(
    scale: Sequence[int] = (2048, 512),
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    size_divisor: int | None = None,
    ratios: Sequence[float] | None = None,
) -> Compose:
    """Evaluation: resize the image keeping aspect (mmseg rescale), normalise; mask kept at ORIGINAL size.

    Padding to a multiple of 32 is left to the inference code unless ``size_divisor`` is given.
    ``ratios`` other than ``[1.0]``: multi-scale test-time augmentation (:class:`MultiScaleResize`).
    """
    if ratios is not None and list(ratios) != [1.0]:
        if size_divisor:
            raise ValueError("multi-scale evaluation pads in the inference code; leave size_divisor unset")
        return Compose([MultiScaleResize(scale, ratios, mean, std)])
    ts: list[Any] = [Resize(scale, None, resize_mask=False), Normalize(mean, std)]
    if size_divisor:
        ts.append(Pad(size_divisor=size_divisor, pad_mask=False))
    return Compose(ts)


def default_transform() -> Compose:
    """What a dataset applies when given no transform: normalise and convert, no resizing."""
    return Compose([Normalize()])
