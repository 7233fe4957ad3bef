"""OpenVINO IR export (``.xml`` + ``.bin``), converted from the ONNX export: fp32, bf16 (an
inference-precision hint) or int8 (NNCF post-training quantisation)."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterable, Sequence, Sized
from pathlib import Path

import numpy as np
from torch import nn

from lightseg._version import __version__
from lightseg.deploy import signal_stack
from lightseg.deploy.calibration import check_calibration
from lightseg.deploy.export_onnx import export_onnx
from lightseg.deploy.extras import import_openvino
from lightseg.deploy.formats import check_format
from lightseg.deploy.graph import check_export_size
from lightseg.deploy.metadata import EXPORT_KEY, ExportInfo, is_openvino_ir
from lightseg.errors import InputError
from lightseg.meta import META_KEY, ModelMeta, model_meta


def export_openvino(
    model: nn.Module,
    path: str | os.PathLike,
    size: Sequence[int],
    *,
    precision: str = "fp32",
    calibration: Iterable[np.ndarray] | None = None,
    batch: int = 1,
    dynamic_batch: bool = False,
    output: str = "logits",
    optimize: str = "fold-bn",
) -> Path:
    """An OpenVINO IR (``.xml`` + ``.bin``) converted from the ONNX export (see
    :func:`onnx_to_openvino`). Needs the ``openvino`` extra."""
    check_format("openvino", precision)
    path = Path(path)
    check_calibration(precision, calibration, f"{path}: INT8")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lightseg-ov-", dir=path.parent) as tmp:
        onnx_path = export_onnx(
            model, Path(tmp) / "m.onnx", size, batch=batch, dynamic_batch=dynamic_batch, output=output,
            optimize=optimize,
        )  # fmt: skip
        info = ExportInfo(
            check_export_size(model, size), None if dynamic_batch else batch, output, precision, optimize,
            __version__,
        )  # fmt: skip
        return onnx_to_openvino(onnx_path, path, model_meta(model), info, calibration)


def onnx_to_openvino(
    onnx_path: str | os.PathLike,
    path: str | os.PathLike,
    meta: ModelMeta,
    info: ExportInfo,
    calibration: Iterable[np.ndarray] | None = None,
) -> Path:
    """Convert an fp32 ONNX graph into an OpenVINO IR at ``info.precision`` with ``meta`` and
    ``info`` in its ``rt_info``: ``fp32``; ``bf16`` (fp32 weights, compiled with bf16 inference
    precision); ``int8`` (NNCF post-training quantisation on ``calibration``, read one batch at a
    time)."""
    with signal_stack.kept():
        return _onnx_to_openvino(onnx_path, Path(path), meta, info, calibration)


def _onnx_to_openvino(onnx_path, path: Path, meta: ModelMeta, info: ExportInfo, calibration) -> Path:
    ov = import_openvino()
    check_format("openvino", info.precision)
    path = Path(path)
    if not is_openvino_ir(path):
        raise InputError(f"{path}: an OpenVINO IR is written as NAME.xml (+ NAME.bin)")
    ov_model = ov.Core().read_model(str(onnx_path))
    check_calibration(info.precision, calibration, f"{path}: INT8")
    if info.precision == "int8":
        ov_model = quantize_openvino_int8(ov_model, calibration)
    ov_model.set_rt_info(meta.to_json(), [META_KEY])
    ov_model.set_rt_info(info.to_json(), [EXPORT_KEY])
    ov.save_model(ov_model, str(path), compress_to_fp16=False)
    return path


def quantize_openvino_int8(ov_model, calibration: Iterable[np.ndarray]):
    """NNCF's default post-training quantisation of an ``openvino.Model`` on real images.

    ``calibration`` is handed to NNCF as an iterable, so images stream from disk (NNCF passes over
    them for statistics and again for bias correction); all of them are used.
    """
    try:
        import nncf
    except ImportError as e:
        raise InputError("INT8 for OpenVINO needs NNCF: pip install 'lightseg[openvino]'") from e
    n = len(calibration) if isinstance(calibration, Sized) else 300
    if n == 0:
        raise InputError("INT8 calibration needs at least one image batch")
    fold_constants(ov_model)
    with contextlib.redirect_stdout(sys.stderr):  # NNCF draws progress bars on stdout
        return nncf.quantize(ov_model, nncf.Dataset(calibration), subset_size=n)


def fold_constants(ov_model) -> None:
    """Fold constant subgraphs of ``ov_model`` in place. OpenVINO's ONNX reader leaves each
    depthwise kernel behind a Reshape to the grouped layout; NNCF then quantises the Reshape's
    output, and the CPU plugin, which wants the weight FakeQuantize on a constant, runs those
    convolutions in fp32 behind it. Folded, they run in int8 (CGRSeg-T: all depthwise convs)."""
    from openvino import passes

    manager = passes.Manager()
    manager.register_pass(passes.ConstantFolding())
    manager.run_passes(ov_model)
