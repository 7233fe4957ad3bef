"""How an image is brought to the model: at the model's own test scale, by the rule evaluation uses.

``lightseg eval`` (like mmseg and the papers) resizes every image, keeping its aspect ratio, to fit a
(long side, short side) bound — the model's ``test_scale`` — runs the model there and brings the
logits back to the original size. Deployment does the same by default (``scale="model"``), with
the same resize of the same uint8 pixels (:func:`lightseg.data.transforms.resize_image`) and the same
normalisation, so a deployed model sees exactly what evaluation showed it. ``scale="native"`` runs
an image at its own size; a (long, short) pair is a bound of your choosing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lightseg.data.transforms import normalize_image, rescale_size, resize_image
from lightseg.errors import InputError
from lightseg.meta import ModelMeta

MODEL, NATIVE = "model", "native"
Scale = str | Sequence[int]


def resolve_scale(scale: Scale, meta: ModelMeta) -> tuple[int, int] | None:
    """The (long, short) bound ``scale`` stands for: ``"model"`` the model's ``test_scale``,
    ``"native"`` none (``None``), a pair itself (sorted to long, short)."""
    if scale == MODEL:
        return (max(meta.test_scale), min(meta.test_scale))
    if scale == NATIVE:
        return None
    if isinstance(scale, str) or len(scale) != 2 or min(int(v) for v in scale) < 1:
        raise InputError(
            f"scale must be 'model', 'native' or two sides (long, short) >= 1, e.g. (2048, 512); got {scale!r}"
        )
    long, short = (int(v) for v in scale)
    return (max(long, short), min(long, short))


def describe_scale(bound: tuple[int, int] | None) -> str:
    return "native" if bound is None else f"{bound[0]}x{bound[1]} (long x short, aspect kept)"


def input_size(
    h: int, w: int, bound: tuple[int, int] | None, fixed: tuple[int, int] | None = None
) -> tuple[int, int]:
    """The (H, W) an h x w image is run at: resized to fit ``bound`` keeping its aspect (mmcv's
    rule, as evaluation; ``None``: as it is), then, for a graph of ``fixed`` input size, shrunk
    further until it fits that. An image so elongated that a side would vanish is refused."""
    size = (h, w) if bound is None else rescale_size(h, w, bound)
    if fixed is not None and (size[0] > fixed[0] or size[1] > fixed[1]):
        factor = min(fixed[0] / h, fixed[1] / w)
        size = (min(int(h * factor + 0.5), fixed[0]), min(int(w * factor + 0.5), fixed[1]))
    if min(size) < 1:
        where = (
            f"the scale {describe_scale(bound)}"
            if fixed is None
            else f"the file's {fixed[0]}x{fixed[1]} input"
        )
        raise InputError(
            f"a {w}x{h} image (width x height) is too elongated for {where}: it would be seen at "
            f"{size[1]}x{size[0]} pixels; crop it into less elongated parts"
        )
    return size


def prepare(
    arrays: Sequence[np.ndarray], size: tuple[int, int], mean: torch.Tensor, inv_std: torch.Tensor
) -> torch.Tensor:
    """N x 3 x H x W float32: each H x W x 3 uint8 image resized to ``size`` and normalised, as the
    evaluation pipeline prepares images."""
    return torch.stack([normalize_image(resize_image(a, size), mean, inv_std) for a in arrays])
