"""Runners: the one way to turn a model, a checkpoint or an exported file into something that runs.

Every caller (``Segmenter`` and so predict and serve, eval, export's check, bench) gets its runner
from :func:`build_runner`. One module per runtime: :mod:`.pytorch` (eager, BN folded),
:mod:`.onnxruntime` and :mod:`.openvino` (sessions on one file), :mod:`.files` (an exported file as
a runner), :mod:`.exporting` (a model exported on first use, through the export cache) and
:mod:`.auto` (the path measured fastest on this machine, the default).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from lightseg.checkpoint import load_weights
from lightseg.deploy import autoselect
from lightseg.deploy.extras import installed
from lightseg.deploy.formats import check_runtime, is_exported
from lightseg.deploy.options import RunnerOptions
from lightseg.deploy.runners.auto import AutoRunner
from lightseg.deploy.runners.base import Runner
from lightseg.deploy.runners.exporting import ExportingRunner
from lightseg.deploy.runners.files import FileRunner
from lightseg.deploy.runners.pytorch import TorchRunner
from lightseg.errors import InputError, InputNotFoundError
from lightseg.meta import ModelMeta
from lightseg.models.build import load_model

__all__ = [
    "AutoRunner",
    "ExportingRunner",
    "FileRunner",
    "Runner",
    "TorchRunner",
    "build_runner",
    "resolve_path",
]


def resolve_path(options: RunnerOptions) -> RunnerOptions:
    """``options`` with the runtime and precision to run a model (not a file) at: the runtime
    asked for (at the precision asked for, else fp32), else ``$LIGHTSEG_RUNTIME``'s; INT8 without
    a runtime on OpenVINO where installed (its calibration needs far less memory), else ONNX
    Runtime. Otherwise the runtime stays ``None``: measured (:class:`~.auto.AutoRunner`)."""
    runtime, precision = options.runtime, options.precision
    if runtime is None and (env := autoselect.override()) is not None:
        runtime, precision = env[0], precision or env[1]
    if runtime is None and precision == "int8":
        runtime = "openvino" if installed("openvino") else "onnxruntime"
    if runtime is None:
        if not autoselect.candidates(options.device, precision):
            raise InputError(
                f"no path runs {precision} on {options.device}: choose --runtime and --precision "
                "(see `lightseg predict --help`)"
            )
        return options
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
    precision by default; a model on the runtime asked for, else ``$LIGHTSEG_RUNTIME``'s, else the
    path measured fastest on this machine (:func:`resolve_path`, :class:`AutoRunner`). ``meta``
    gives the facts of a file exported by another tool (or overrides a model's).
    """
    options = RunnerOptions.of(options, **option_fields)
    if is_exported(source):
        if weights is not None:
            raise InputError(f"{source}: an exported file holds its weights; drop --weights {weights}")
        runner: Runner = FileRunner(
            source, options.runtime, options.precision, options.threads, meta,
            streams=options.streams, providers=options.providers,
        )  # fmt: skip
        if options.runtime is None and options.precision is None:
            runner.reason = "the exported file's own runtime and precision"
        return runner
    model = _model(source, weights, num_classes)
    if meta is not None:
        model.meta = meta
    asked = options
    options = resolve_path(options)
    if options.runtime is None:
        return AutoRunner(model, options)
    if options.runtime == "torch":
        runner = TorchRunner(
            model, options.optimize, options.precision, device=options.device, threads=options.threads
        )
    else:
        runner = ExportingRunner(model, options)
    if asked.runtime is None:
        runner.reason = (
            f"${autoselect.ENV}" if autoselect.override() else "INT8 asked for: its default runtime"
        )
    return runner


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
