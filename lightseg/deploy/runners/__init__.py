"""Runners: the one way to turn a model, a checkpoint or an exported file into something that runs.

Every caller (``Segmenter`` and so predict and serve, eval, export's check, bench) gets its runner
from :func:`build_runner`. One module per runtime: :mod:`.pytorch` (eager, BN folded),
:mod:`.onnxruntime` and :mod:`.openvino` (sessions on one file), :mod:`.files` (an exported file as
a runner) and :mod:`.exporting` (a model exported on first use, through the export cache).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from lightseg.checkpoint import load_weights
from lightseg.deploy.cpu import default_cpu_path
from lightseg.deploy.formats import check_runtime, is_exported
from lightseg.deploy.options import RunnerOptions
from lightseg.deploy.runners.base import Runner
from lightseg.deploy.runners.exporting import ExportingRunner
from lightseg.deploy.runners.files import FileRunner
from lightseg.deploy.runners.pytorch import TorchRunner
from lightseg.errors import InputError, InputNotFoundError
from lightseg.meta import ModelMeta
from lightseg.models.build import load_model

__all__ = ["ExportingRunner", "FileRunner", "Runner", "TorchRunner", "build_runner", "resolve_path"]


def resolve_path(options: RunnerOptions) -> RunnerOptions:
    """``options`` with the runtime and precision to run a model (not a file) at: those asked for,
    else on a CPU the default path (:func:`~lightseg.deploy.cpu.default_cpu_path`, whose precision
    applies only when neither is given), on CUDA eager torch; fp32 where no precision is given."""
    runtime, precision = options.runtime, options.precision
    if runtime is None:
        runtime, default_precision = default_cpu_path() if options.device == "cpu" else ("torch", "fp32")
        precision = precision or default_precision
    precision = precision or "fp32"
    check_runtime(runtime, precision)
    return options.replace(runtime=runtime, precision=precision)


def build_runner(
    source: nn.Module | str | os.PathLike,
    options: RunnerOptions | None = None,
    *,
    weights: str | os.PathLike | None = None,
    num_classes: int | None = None,
    meta: ModelMeta | None = None,
    **option_fields: Any,
) -> Runner:
    """A runner for ``source``: an ``nn.Module``, a registered model name (with ``weights``), a
    checkpoint file, or an exported ``.onnx`` / ``.xml`` file.

    ``options`` (or its fields as keywords, see :class:`RunnerOptions`) say how it runs: an
    exported file on its own runtime unless another that reads it is asked for, at the file's
    precision by default; a model on the runtime asked for, else the default path
    (:func:`resolve_path`). ``meta`` gives the facts of a file exported by another tool (or
    overrides a model's).
    """
    options = RunnerOptions.of(options, **option_fields)
    if is_exported(source):
        if weights is not None:
            raise InputError(f"{source}: an exported file holds its weights; drop --weights {weights}")
        return FileRunner(source, options.runtime, options.precision, options.threads, meta)
    model = _model(source, weights, num_classes)
    if meta is not None:
        model.meta = meta
    options = resolve_path(options)
    if options.runtime == "torch":
        return TorchRunner(model, options.optimize, options.precision, device=options.device)
    return ExportingRunner(model, options)


def _model(source: nn.Module | str | os.PathLike, weights, num_classes: int | None) -> nn.Module:
    if isinstance(source, nn.Module):
        if weights is not None:
            load_weights(source, weights)
        return source.eval()
    if Path(source).is_file():
        return load_model(None, source, num_classes)
    if isinstance(source, os.PathLike) or Path(source).suffix or os.sep in str(source):  # not a name
        raise InputNotFoundError(
            f"{source}: no such file (a model is a checkpoint, an exported .onnx/.xml file, or a "
            "registered name with --weights: see `lightseg models`)"
        )
    return load_model(str(source), weights, num_classes)
