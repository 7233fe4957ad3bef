"""ONNX Runtime sessions on one file: numpy in, numpy out."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lightseg.deploy.extras import import_onnxruntime
from lightseg.deploy.runners.base import as_input
from lightseg.errors import ConfigError, InputError, InputNotFoundError


# --------------------------------------------------------------------------------------------------
# Sessions on one file: numpy in, numpy out
# --------------------------------------------------------------------------------------------------
def ort_session_options(threads: int | None = None, optimization: str = "all"):
    """ONNX Runtime options for latency on a CPU: full graph optimisation, ``threads`` intra-op
    threads, sequential execution (one image at a time gains nothing from inter-op threads)."""
    import onnxruntime as ort

    levels = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    if optimization not in levels:
        raise ConfigError(f"optimization must be one of {', '.join(levels)}; got {optimization!r}")
    so = ort.SessionOptions()
    so.graph_optimization_level = levels[optimization]
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    if threads:
        so.intra_op_num_threads = int(threads)
    so.log_severity_level = 3
    return so


class OrtSession:
    """An ONNX Runtime session on one file: ``session(x) -> np.ndarray`` (x: N x 3 x H x W float32,
    numpy or torch, at the graph's input shape; ``input_shape`` has ``None`` for dynamic axes)."""

    def __init__(
        self,
        path: str | os.PathLike,
        threads: int | None = None,
        optimization: str = "all",
        providers: Sequence[str] | None = None,
    ):
        ort = import_onnxruntime()
        path = Path(path)
        if not path.is_file():
            raise InputNotFoundError(f"ONNX file not found: {path}")
        try:
            self.session = ort.InferenceSession(
                str(path),
                sess_options=ort_session_options(threads, optimization),
                providers=list(providers or ["CPUExecutionProvider"]),
            )
        except Exception as e:  # ORT raises its own private exception types
            raise InputError(f"{path}: ONNX Runtime cannot load this file ({e})") from e
        self.path = path
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = tuple(d if isinstance(d, int) else None for d in inp.shape)

    def __call__(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        x = as_input(x, self.input_shape, self.path)
        return self.session.run(None, {self.input_name: x})[0]
