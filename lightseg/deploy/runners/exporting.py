"""A model on ONNX Runtime or OpenVINO, exported on first use of each input size."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from lightseg.deploy.calibration import calibration_for, check_calibration
from lightseg.deploy.export_cache import cached_export
from lightseg.deploy.formats import check_runtime, exported_file
from lightseg.deploy.options import RunnerOptions
from lightseg.deploy.runners.base import Runner
from lightseg.deploy.runners.files import FileRunner
from lightseg.errors import InputError
from lightseg.meta import model_meta


class ExportingRunner(Runner):
    """A model on ONNX Runtime or OpenVINO: exported (and for int8 quantised) once per padded input
    size into the content-keyed cache (:func:`cached_export`), then run from the file (which file:
    :func:`~lightseg.deploy.formats.exported_file`)."""

    def __init__(self, model: nn.Module, options: RunnerOptions):
        if options.runtime not in ("onnxruntime", "openvino"):
            raise InputError(f"an exporting runner runs onnxruntime or openvino, not {options.runtime!r}")
        precision = options.precision or "fp32"
        check_runtime(options.runtime, precision)
        check_calibration(precision, options.calibration)
        self.model = model.eval()
        self.meta = model_meta(model)
        self.runtime, self.precision, self.concurrency = options.runtime, precision, options.streams
        # compile is a run-time option of torch; an export folds BN (or leaves the model as it is)
        self.options = options.replace(
            optimize="fold-bn" if options.optimize == "compile" else options.optimize
        )
        self._files: dict[tuple[int, int], FileRunner] = {}
        self._lock = threading.Lock()

    def export(self, h: int, w: int, on_export: Callable[[], None] | None = None) -> Path:
        """The file this runner runs at (h, w), exported (after ``on_export()``) unless cached."""
        o = self.options
        calib = None
        if self.precision == "int8":
            calib = calibration_for(o.calibration, (h, w), self.meta, o.calibration_count)
        fmt, file_precision = exported_file(self.runtime, self.precision)
        return cached_export(
            self.model, fmt, (h, w), precision=file_precision, calibration=calib,
            optimize=o.optimize, dynamic_batch=True, cache_dir=o.cache_dir, on_export=on_export,
        )  # fmt: skip

    def file_runner(self, h: int, w: int) -> FileRunner:
        with self._lock:  # one export per size, also when threads ask at once
            if (h, w) not in self._files:
                o = self.options
                path = self.export(h, w)
                self._files[(h, w)] = FileRunner(
                    path, self.runtime, self.precision, o.threads, streams=o.streams, providers=o.providers
                )
            return self._files[(h, w)]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.file_runner(int(x.shape[-2]), int(x.shape[-1]))(x)
