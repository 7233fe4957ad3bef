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

import numpy as np
from torch import nn

from lightseg.errors import ConfigError, InputError, WeightsNotFoundError

PRECISIONS = ("fp32",)
BATCH_ANY = (
    1 << 16
)  # the server's batcher decides batch sizes: the segmenter never splits one  # what this engine runs; the CLI offers the names the backend layer knows


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


def load_backend(
    source: nn.Module | str | os.PathLike,
    *,
    runtime: str = "torch",
    precision: str = "fp32",
    weights: str | os.PathLike | None = None,
    threads: int | None = None,
) -> Backend:
    """A :class:`Backend` for a model object, a lightseg checkpoint file, or a registered model name
    with ``weights`` (any layout ``lightseg predict`` reads)."""
    from lightseg.engine.predict import RUNTIMES, Segmenter, load_model

    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime {runtime}: this installation runs {', '.join(RUNTIMES)}")
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision}: this installation runs {', '.join(PRECISIONS)}")
    if isinstance(source, nn.Module):
        model = source.eval()
    else:
        path = Path(source)
        if path.suffix.lower() in (".onnx", ".xml"):
            raise InputError(
                f"{path}: this installation serves PyTorch checkpoints; pass the checkpoint the file "
                "was exported from (with --runtime onnxruntime for ONNX Runtime)"
            )
        if path.is_file():
            model = load_model(None, path)
        elif path.suffix or os.sep in str(source):  # meant as a file, not a model name
            raise WeightsNotFoundError(f"{path}: no such checkpoint file")
        elif weights is None:
            raise ConfigError(
                f"{source}: not a file; to serve a registered model name give its weights with --weights FILE"
            )
        else:
            model = load_model(str(source), weights)
    seg = Segmenter(
        model,
        runtime=runtime,
        optimize="fold-bn" if runtime == "torch" else "none",
        threads=threads,
        batch_size=BATCH_ANY,
    )
    meta = model.meta
    info = ModelInfo(
        name=meta.name,
        classes=tuple(seg.classes or meta.class_names),
        palette=tuple(tuple(c) for c in seg.palette[: seg.num_classes]),
        runtime=runtime,
        precision=precision,
        size_divisor=meta.size_divisor,
    )
    return Backend(seg, info)
