"""The one place where the server meets the inference engine.

:func:`load_backend` builds a segmenter from a model, a checkpoint or a registered name and reads the
facts the server publishes (classes, palette, runtime, precision, input size). The rest of
``lightseg.serve`` sees only :class:`Backend`, so a change in the engine changes this file alone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from lightseg.deploy.formats import is_exported
from lightseg.deploy.memory import SERVE_BUDGET
from lightseg.deploy.options import RunnerOptions
from lightseg.deploy.segmenter import Segmenter
from lightseg.errors import ConfigError, WeightsNotFoundError

# The server's batcher decides batch sizes; the segmenter splits a batch only where its memory
# budget holds fewer images.
BATCH_ANY = 1 << 16


@dataclass(frozen=True)
class ModelInfo:
    """What ``GET /v1/model`` reports. ``input_size`` is ``None`` when any size is accepted (padded
    to a multiple of ``size_divisor`` and cropped back)."""

    name: str
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    runtime: str
    precision: str
    size_divisor: int
    input_size: tuple[int, int] | None = None
    scale: tuple[int, int] | None = None  # (long, short) bound images are resized to; None: native
    max_memory: int = 0  # bytes one pass may allocate beyond the loaded model

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class Backend:
    """A segmenter and its facts. ``segment`` is called from one thread at a time (the server's
    inference worker), with images of one size."""

    def __init__(self, segmenter, info: ModelInfo):
        self.segmenter = segmenter
        self.info = info

    def segment(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """H x W x 3 uint8 RGB images of one size -> H x W integer label maps."""
        return list(self.segmenter(list(images)))

    def admit(self, height: int, width: int) -> None:
        """Refuse, before it waits for the worker, an image the model cannot see at its scale or
        whose pass would not fit the memory budget (an InputError saying which)."""
        self.segmenter.plan(1, height, width)


def load_backend(
    source: nn.Module | str | os.PathLike,
    options: RunnerOptions | None = None,
    *,
    weights: str | os.PathLike | None = None,
    scale: Any = "model",
    max_memory: int | str = SERVE_BUDGET,
    **option_fields: Any,
) -> Backend:
    """A :class:`Backend` for a model object, a lightseg checkpoint, an exported ``.onnx`` / ``.xml``
    file, or a registered model name with ``weights`` (any layout ``lightseg predict`` reads).

    ``options`` (or its fields as keywords) as for ``lightseg predict``; without them the runtime is
    eager torch for a model and the file's own for an exported file (``runtime=None``: the CPU
    default path)."""
    if options is None:
        option_fields.setdefault("runtime", "torch")
    options = RunnerOptions.of(options, **option_fields)
    if isinstance(source, nn.Module):
        source = source.eval()
    elif not is_exported(source) and not Path(source).is_file():
        if Path(source).suffix or os.sep in str(source):  # meant as a file, not a model name
            raise WeightsNotFoundError(f"{source}: no such checkpoint or exported file")
        if weights is None:
            raise ConfigError(
                f"{source}: not a file; to serve a registered model name give its weights with --weights FILE"
            )
    if is_exported(source) and options.runtime == "torch":
        options = options.replace(runtime=None)  # an exported file runs on its own runtime
    seg = Segmenter(source, options, weights=weights, batch_size=BATCH_ANY, scale=scale, max_memory=max_memory)
    info = ModelInfo(
        name=seg.meta.name,
        classes=tuple(seg.classes),
        palette=tuple(tuple(c) for c in seg.palette[: seg.num_classes]),
        runtime=seg.runtime,
        precision=seg.precision,
        size_divisor=seg.runner.size_divisor,
        input_size=seg.runner.input_size,
        scale=seg.bound,
        max_memory=seg.budget,
    )
    return Backend(seg, info)
