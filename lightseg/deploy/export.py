"""Export a segmentor to a file: ONNX (:mod:`~lightseg.deploy.export_onnx`), OpenVINO IR
(:mod:`~lightseg.deploy.export_openvino`) or a ``torch.export`` program (``.pt2``). Every file but
``.pt2`` carries the model's metadata and an export record (:mod:`~lightseg.deploy.metadata`)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lightseg.deploy.export_onnx import export_onnx_file
from lightseg.deploy.export_openvino import export_openvino
from lightseg.deploy.formats import check_format
from lightseg.deploy.graph import check_export_size, inference_graph


def export_pt2(
    model: nn.Module,
    path: str | os.PathLike,
    size: Sequence[int],
    *,
    batch: int = 1,
    dynamic_batch: bool = False,
    output: str = "logits",
    optimize: str = "fold-bn",
) -> Path:
    """Write a ``torch.export`` program (``.pt2``; load with ``torch.export.load(path).module()``)."""
    graph = inference_graph(model, size, output, optimize)
    h, w = check_export_size(model, size)
    dyn = {"x": {0: torch.export.Dim("batch", min=1, max=1024)}} if dynamic_batch else None
    with torch.no_grad():
        program = torch.export.export(graph, (torch.randn(batch, 3, h, w),), dynamic_shapes=dyn)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))
    return path


def export_model(
    model: nn.Module,
    path: str | os.PathLike,
    size: Sequence[int],
    fmt: str = "onnx",
    *,
    precision: str = "fp32",
    calibration: Iterable[np.ndarray] | None = None,
    **kw,
) -> Path:
    """Write ``model`` as ``fmt`` (onnx, openvino, pt2) at ``precision``; see the format's exporter."""
    check_format(fmt, precision)
    if fmt == "onnx":
        return export_onnx_file(model, path, size, precision=precision, calibration=calibration, **kw)
    if fmt == "openvino":
        return export_openvino(model, path, size, precision=precision, calibration=calibration, **kw)
    return export_pt2(model, path, size, **kw)
