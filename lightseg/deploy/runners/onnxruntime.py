"""ONNX Runtime sessions on one file: numpy in, numpy out."""

from __future__ import annotations

import os
import queue
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lightseg.deploy.cpu import available_cores
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
    """ONNX Runtime on one file: ``session(x) -> np.ndarray`` (x: N x 3 x H x W float32, numpy or
    torch, at the graph's input shape; ``input_shape`` has ``None`` for dynamic axes).

    ``streams`` sessions share ``threads`` (default: ORT's own count for one session, the
    available cores for several): a call takes a free session, so that many calls run side by side.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        threads: int | None = None,
        optimization: str = "all",
        providers: Sequence[str] | None = None,
        streams: int = 1,
    ):
        import_onnxruntime()
        path = Path(path)
        if not path.is_file():
            raise InputNotFoundError(f"ONNX file not found: {path}")
        total = threads or (available_cores() if streams > 1 else None)
        each = max(1, int(total) // streams) if total else None
        self.path, self.providers = path, list(providers or ["CPUExecutionProvider"])
        self.sessions = [self._session(each, optimization) for _ in range(streams)]
        self.session = self.sessions[0]
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for s in self.sessions:
            self._free.put(s)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = tuple(d if isinstance(d, int) else None for d in inp.shape)

    def _session(self, threads: int | None, optimization: str):
        import onnxruntime as ort

        try:
            return ort.InferenceSession(
                str(self.path),
                sess_options=ort_session_options(threads, optimization),
                providers=self.providers,
            )
        except Exception as e:  # ORT raises its own private exception types
            raise InputError(f"{self.path}: ONNX Runtime cannot load this file ({e})") from e

    def __call__(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        x = as_input(x, self.input_shape, self.path)
        session = self._free.get()
        try:
            return session.run(None, {self.input_name: x})[0]
        finally:
            self._free.put(session)
