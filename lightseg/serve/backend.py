"""The one place where the server meets the inference engine.

:func:`load_backend` builds a segmenter from a model, a checkpoint or a registered name, on the same
default path as ``lightseg predict`` (measured fastest on this machine), built for as many
inferences at once as the cores serve, and reads the facts the server publishes (classes, palette,
runtime, precision, input size). The rest of ``lightseg.serve`` sees only :class:`Backend`, so a
change in the engine changes this file alone.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from lightseg.deploy.cpu import available_cores, serve_streams
from lightseg.deploy.formats import is_exported
from lightseg.deploy.memory import SERVE_BUDGET, describe, parse_size
from lightseg.deploy.options import RunnerOptions
from lightseg.deploy.segmenter import Segmenter
from lightseg.errors import ConfigError, MemoryBudgetError, WeightsNotFoundError
from lightseg.inference import torch_threads

# The server's batcher decides batch sizes; the segmenter splits a batch only where its memory
# budget holds fewer images.
BATCH_ANY = 1 << 16


@dataclass(frozen=True)
class ModelInfo:
    """What ``GET /v1/model`` reports. ``input_size`` is ``None`` when any size is accepted (padded
    to a multiple of ``size_divisor`` and cropped back). ``runtime`` / ``precision``: as loaded
    (``None`` for a path measured on the first request; :meth:`Backend.path` says what runs)."""

    name: str
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    runtime: str | None
    precision: str | None
    size_divisor: int
    input_size: tuple[int, int] | None = None
    scale: tuple[int, int] | None = None  # (long, short) bound images are resized to; None: native
    max_memory: int = 0  # bytes one pass may allocate beyond the loaded model

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class Backend:
    """A segmenter and its facts. ``segment`` is called from ``workers`` threads at once (the
    server's inference workers), with images of one size; a runner that runs one call at a time
    (eager torch) gets them one at a time."""

    def __init__(self, segmenter, info: ModelInfo, workers: int = 1, threads: int | None = None):
        self.segmenter = segmenter
        self.info = info
        self.workers = workers
        # torch's share of the threads for the work around a runtime's inference (normalising,
        # the labels) when several workers run side by side: more would only contend.
        self.torch_threads = max(1, (threads or available_cores()) // workers)
        self._one_at_a_time = threading.Lock()

    def segment(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """H x W x 3 uint8 RGB images of one size -> H x W integer label maps."""
        if self.workers == 1:
            return list(self.segmenter(list(images)))
        if getattr(self.segmenter.runner, "concurrency", 1) == 1:  # eager torch: one at a time
            with self._one_at_a_time:
                return list(self.segmenter(list(images)))
        with torch_threads(self.torch_threads):
            return list(self.segmenter(list(images)))

    def path(self) -> dict[str, str | None]:
        """What runs now and why: ``runtime``, ``precision``, ``why`` (a measured path is decided
        on the first request of each image size)."""
        if self.segmenter is None:
            return {"runtime": self.info.runtime, "precision": self.info.precision, "why": "asked for"}
        seg = self.segmenter
        return {"runtime": seg.runtime, "precision": seg.precision, "why": seg.why}

    def admit(self, height: int, width: int) -> None:
        """Refuse, before it waits for the worker, an image the model cannot see at its scale or
        whose pass would not fit the memory budget (an InputError saying which)."""
        try:
            self.segmenter.plan(1, height, width)
        except MemoryBudgetError as e:
            if self.workers == 1:
                raise
            service = describe(self.info.max_memory)
            raise MemoryBudgetError(
                f"{e}; it is a share of the service's {service} ({self.workers} inference workers)"
            ) from None


def load_backend(
    source: nn.Module | str | os.PathLike,
    options: RunnerOptions | None = None,
    *,
    weights: str | os.PathLike | None = None,
    scale: Any = "model",
    max_memory: int | str = SERVE_BUDGET,
    streams: int | None = None,
    **option_fields: Any,
) -> Backend:
    """A :class:`Backend` for a model object, a lightseg checkpoint, an exported ``.onnx`` / ``.xml``
    file, or a registered model name with ``weights`` (any layout ``lightseg predict`` reads).

    ``options`` (or its fields as keywords) as for ``lightseg predict``: by default a model runs
    on the path measured fastest on this machine, an exported file on its own runtime.
    ``streams``: inferences run at once (default: sized to the threads,
    :func:`~lightseg.deploy.cpu.serve_streams`; eager torch runs one at a time)."""
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
    if options.runtime == "torch":
        streams = 1  # torch's threads are the process's: two calls would only share them
    options = options.replace(streams=streams or serve_streams(options.threads))
    # The budget is the service's: the workers' passes run at once, each on its share.
    share = parse_size(max_memory) // options.streams
    seg = Segmenter(source, options, weights=weights, batch_size=BATCH_ANY, scale=scale, max_memory=share)
    info = ModelInfo(
        name=seg.meta.name,
        classes=tuple(seg.classes),
        palette=tuple(tuple(c) for c in seg.palette[: seg.num_classes]),
        runtime=seg.runtime,
        precision=seg.precision,
        size_divisor=seg.runner.size_divisor,
        input_size=seg.runner.input_size,
        scale=seg.bound,
        max_memory=seg.budget * options.streams,
    )
    return Backend(seg, info, workers=options.streams, threads=options.threads)
