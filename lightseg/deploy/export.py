"""Export a segmentor to a file: ONNX (:mod:`~lightseg.deploy.export_onnx`), OpenVINO IR
(:mod:`~lightseg.deploy.export_openvino`) or a ``torch.export`` program (``.pt2``). Every file but
``.pt2`` carries the model's metadata and an export record (:mod:`~lightseg.deploy.metadata`)."""

from __future__ import annotations

import io
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
from lightseg.storage import publish, staging


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
    # Serialised in memory, then written: torch's zip writer, given a path on a disk that fills up,
    # leaves a writer that aborts the whole process when it is garbage-collected later.
    archive = io.BytesIO()
    torch.export.save(program, archive)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(archive.getbuffer())
    return path


def export_model(
    model: nn.Module,
    path: str | os.PathLike,
    size: Sequence[int],
    fmt: str = "onnx",
    *,
    precision: str = "fp32",
    calibration: Iterable[np.ndarray] | None = None,
    then: str = "run the export again",
    **kw,
) -> Path:
    """Write ``model`` as ``fmt`` (onnx, openvino, pt2) at ``precision``; see the format's exporter.

    The file is made in a folder beside ``path`` and moved into place when finished (an OpenVINO IR:
    the ``.bin``, then the ``.xml``), so ``path`` is complete or absent. A failed write (a full,
    read-only or vanished disk) is one :class:`~lightseg.errors.StorageError` naming ``path``;
    ``then`` says how to go on once fixed."""
    check_format(fmt, precision)
    path = Path(path)
    with staging(path, f"the {fmt} export", then) as folder:
        made = folder / path.name
        if fmt == "onnx":
            export_onnx_file(model, made, size, precision=precision, calibration=calibration, **kw)
        elif fmt == "openvino":
            export_openvino(model, made, size, precision=precision, calibration=calibration, **kw)
            publish(made.with_suffix(".bin"), path.with_suffix(".bin"))
        else:
            export_pt2(model, made, size, **kw)
        publish(made, path)
    return path
