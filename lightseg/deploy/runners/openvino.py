"""OpenVINO compiled models on one file (IR ``.xml`` or ``.onnx``): numpy in, numpy out."""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightseg.deploy import signal_stack
from lightseg.deploy.extras import import_openvino
from lightseg.deploy.metadata import check_ir_files
from lightseg.deploy.runners.base import as_input
from lightseg.errors import InputError


class OpenVinoSession:
    """An OpenVINO compiled model on one file (IR ``.xml`` or ``.onnx``): ``session(x) -> np.ndarray``.

    ``precision`` sets the inference precision (``bf16`` on a CPU without bfloat16 support runs
    fp32, with a warning). One infer request per calling thread, so concurrent calls are safe.
    ``streams`` 1 compiles for latency (one inference on every thread); N compiles for throughput,
    N streams sharing the threads, so N threads calling at once run side by side.
    """

    def __init__(
        self, path: str | os.PathLike, precision: str = "fp32", threads: int | None = None, streams: int = 1
    ):
        with signal_stack.kept():
            self._compile(path, precision, threads, streams)
        self._local = threading.local()

    def _compile(self, path: str | os.PathLike, precision: str, threads: int | None, streams: int) -> None:
        ov = import_openvino()
        path = Path(path)
        check_ir_files(path)
        core = ov.Core()
        if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            warnings.warn("this CPU has no bfloat16 support: OpenVINO runs bf16 as fp32", stacklevel=2)
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY" if streams == 1 else "THROUGHPUT",
            # int8 graphs: fp32 for what stays unquantised (bf16 there would add its own error)
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if streams > 1:
            config["NUM_STREAMS"] = int(streams)
        try:
            self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        except Exception as e:  # OpenVINO raises RuntimeError with a long C++ trace
            raise InputError(f"{path}: OpenVINO cannot load this file ({str(e).splitlines()[0]})") from e
        self.path = path
        shape = self.compiled.inputs[0].get_partial_shape()
        self.input_shape = tuple(d.get_length() if d.is_static else None for d in shape)

    def __call__(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        x = as_input(x, self.input_shape, self.path)
        request = getattr(self._local, "request", None)
        with signal_stack.kept():
            if request is None:
                request = self._local.request = self.compiled.create_infer_request()
            return request.infer({0: x})[0].copy()  # the request reuses its output buffer
