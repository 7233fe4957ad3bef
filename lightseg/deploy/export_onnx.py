"""ONNX export (fp32, and static INT8 quantisation with ONNX Runtime's tools).

The dynamo-based exporter is used: the legacy TorchScript exporter fails on
``adaptive_avg_pool2d`` to computed sizes.

Opset 20, pinned (torch 2.13's exporter defaults to it too; older ones wrote 18): opset 20 has a
``Gelu`` operator, at 18 the exporter spells each GELU as ``Div -> Erf -> Add -> Mul -> Mul``.
ONNX Runtime's GeluFusion does not match that spelling (the 0.5 multiplies ``1 + erf`` before
``x``), so the 57 GELUs of CGRSeg-T ran as five memory-bound passes each, and because ``Erf`` has
no NCHWc kernel every one of them also forced the blocked-layout convolutions around it to reorder
to NCHW and back. Measured on CGRSeg-T, 512x512, 1 thread: 149 ms -> 105 ms of kernel time
(ReorderOutput 23 ms -> 3 ms, GELU 45 ms -> 22 ms).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterable, Sequence, Sized
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lightseg._version import __version__
from lightseg.deploy.calibration import check_calibration
from lightseg.deploy.formats import check_format
from lightseg.deploy.graph import INPUT_NAME, OUTPUT_NAMES, check_export_size, inference_graph
from lightseg.deploy.metadata import ExportInfo, write_onnx_metadata
from lightseg.errors import ConfigError, InputError
from lightseg.meta import model_meta


class _TorchvisionNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("torchvision is not installed")


@contextlib.contextmanager
def _without_torchvision_notices():
    """torch's exporter looks up torchvision's detection ops on every export and logs a warning per
    op when torchvision is absent (it is not a lightseg dependency); no lightseg graph uses them."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    quiet = _TorchvisionNotice()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    size: Sequence[int],
    *,
    batch: int = 1,
    dynamic_batch: bool = False,
    output: str = "logits",
    optimize: str = "fold-bn",
    opset: int | None = 20,
) -> Path:
    """Write ``model`` as a single-file ONNX graph for inputs ``batch x 3 x H x W``.

    ``optimize="fold-bn"`` folds BatchNorm and pre-resizes the attention biases to ``size``;
    ``"none"`` exports the model as it is. ``opset``: 20 (one ``Gelu`` node per GELU, see the module
    docstring); ``None`` takes ``torch.onnx.export``'s default (20 with torch 2.13) — with
    ``optimize="none"`` that is the "naive" export the benchmarks compare against.
    Returns the path. Needs the ``export`` extra (onnx, onnxscript).
    """
    if optimize == "compile":
        raise ConfigError("optimize='compile' is a run-time option; export with 'fold-bn' or 'none'")
    graph = inference_graph(model, size, output, optimize)
    h, w = check_export_size(model, size)
    x = torch.randn(batch, 3, h, w)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dyn = {"x": {0: torch.export.Dim("batch", min=1, max=1024)}} if dynamic_batch else None
    with warnings.catch_warnings(), _without_torchvision_notices(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter is chatty about internals users cannot act on
        torch.onnx.export(
            graph,
            (x,),
            str(path),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAMES[output]],
            dynamic_shapes=dyn,
            external_data=False,
            verbose=False,
        )
    if optimize != "none":
        import onnx

        proto = onnx.load(str(path))
        if fold_channel_scales(proto):
            onnx.save(proto, str(path))
    return path


def fold_channel_scales(proto) -> int:
    """Fold ``Mul(s, Conv(x))`` with a constant per-output-channel ``s`` (C x 1 x 1; EfficientFormerV2's
    layer scale ``gamma * mlp(x)``) into the conv's weights and bias, in place on an
    ``onnx.ModelProto``; returns how many were folded.

    ONNX Runtime fuses these itself when it runs fp32, but not before quantisation, so an INT8
    graph would keep 25 extra full-resolution multiplies between dequantise and the residual add.
    Exact up to float rounding: ``s * (W x + b) = (s W) x + s b`` per output channel. The scaled
    parameters are new initializers (the exporter shares equal tensors, e.g. zero biases).
    """
    from onnx import numpy_helper

    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    uses: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    made_by = {o: n for n in graph.node for o in n.output}
    folded = []
    for mul in graph.node:
        if mul.op_type != "Mul" or len(mul.input) != 2:
            continue
        for scale_name, conv_out in (mul.input, mul.input[::-1]):
            conv = made_by.get(conv_out)
            if scale_name not in inits or conv is None or conv.op_type != "Conv" or uses.get(conv_out) != 1:
                continue
            if any(p not in inits for p in conv.input[1:]):
                continue
            scale = numpy_helper.to_array(inits[scale_name])
            c = inits[conv.input[1]].dims[0]
            if scale.shape not in ((c, 1, 1), (1, c, 1, 1)):  # per output channel, nothing else
                continue
            s = scale.reshape(c).astype(np.float64)
            for k, name in enumerate(conv.input[1:], 1):
                p = numpy_helper.to_array(inits[name])
                scaled = p * s.reshape((c,) + (1,) * (p.ndim - 1))
                new = numpy_helper.from_array(scaled.astype(p.dtype), f"{name}__scaled_{len(folded)}")
                graph.initializer.append(new)
                inits[new.name] = new
                uses[name] -= 1
                conv.input[k] = new.name
            conv.output[0] = mul.output[0]  # the conv now produces what the Mul did
            uses[scale_name] -= 1
            folded.append(mul)
            break
    for mul in folded:
        graph.node.remove(mul)
    for name in [n for n, u in uses.items() if u == 0 and n in inits]:
        graph.initializer.remove(inits[name])
    return len(folded)


def _int8_exclusions(path: str | os.PathLike, ends: bool = True) -> list[str]:
    """Convolutions to keep in fp32.

    - Those reading a Softmax output (EfficientFormerV2's talking-head conv after the attention
      softmax): quantising them puts Q/DQ on both sides of the Softmax, which ONNX Runtime then
      fuses into QLinearSoftmax, 4-5x slower than the fp32 Softmax here; attention probabilities
      (mostly tiny, in [0, 1]) also lose the most from uint8.
    - With ``ends``, the conv reading the image and the one writing the graph output (the
      classifier): ~1% of the MACs, and together half of the INT8 mIoU loss on CamVid.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    softmax_out = {o for n in graph.node if n.op_type == "Softmax" for o in n.output}
    keep = [n.name for n in graph.node if n.op_type == "Conv" and softmax_out & set(n.input)]
    if ends:
        inputs = {i.name for i in graph.input}
        outputs = {o.name for o in graph.output}
        keep += [
            n.name
            for n in graph.node
            if n.op_type == "Conv" and (inputs & set(n.input) or outputs & set(n.output))
        ]
    # A conv sharing weights with a kept one stays fp32 as well (CGRSeg calls its classifier
    # twice); otherwise the shared weight is quantised for the other call and read by both.
    kept_weights = {n.input[1] for n in graph.node if n.name in keep}
    keep += [
        n.name
        for n in graph.node
        if n.op_type == "Conv" and n.input[1] in kept_weights and n.name not in keep
    ]
    return keep


def quantize_onnx_int8(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    calibration: Iterable[np.ndarray],
    *,
    per_channel: bool = True,
    op_types: Sequence[str] = ("Conv",),
    method: str = "percentile",
    keep_ends_fp32: bool = True,
) -> Path:
    """Static INT8 quantisation of an fp32 ONNX file, calibrated on ``calibration``: N x 3 x H x W
    float32 batches of real, normalised images at the graph's size.

    QDQ format, uint8 activations / int8 weights (per output channel when ``per_channel``): the
    pairing ONNX Runtime runs with VNNI ``vpdpbusd`` on this CPU. Only ``op_types`` are quantised
    (default: convolutions, 3.9 of CGRSeg-T's 4.6 GMACs): quantising every op (ORT's default) puts
    Q/DQ around each GELU, Mul and Add and was slower than fp32. Convolutions reading a Softmax
    stay fp32, and with ``keep_ends_fp32`` the first conv and the classifier (see
    :func:`_int8_exclusions`). ``method``: activation ranges from ``percentile`` (99.999th, the
    default), ``minmax`` or ``entropy`` calibration. Measured on CamVid test (CGRSeg-T after 500
    iterations, mIoU 38.07 in fp32): min-max -0.40, percentile -0.21, ends in fp32 -0.22, both -0.17.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    if method not in methods:
        raise ConfigError(f"method must be one of {', '.join(methods)}; got {method!r}")
    src, dst = Path(src), Path(dst)
    if isinstance(calibration, Sized) and len(calibration) == 0:
        raise InputError("INT8 calibration needs at least one image batch")

    class _Reader(CalibrationDataReader):
        """Reads the batches one at a time (``calibration`` may stream them from disk)."""

        def __init__(self) -> None:
            self._it = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            b = next(self._it, None)
            return None if b is None else {INPUT_NAME: np.ascontiguousarray(b, dtype=np.float32)}

    pre = dst.with_name(dst.stem + ".pre.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)

    def quantize(calibrate_method) -> None:
        with contextlib.redirect_stdout(sys.stderr):  # ORT's calibrators print progress to stdout
            quantize_static(
                str(pre),
                str(dst),
                _Reader(),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(op_types),
                nodes_to_exclude=_int8_exclusions(pre, keep_ends_fp32),
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=per_channel,
                calibrate_method=calibrate_method,
            )

    try:
        try:
            quantize(methods[method])
        except ValueError as e:
            # numpy's histogram fails on an activation whose range is (almost) a single value on
            # these images, e.g. a 1x1 map at a small input size; min-max has no histogram.
            if method == "minmax" or "bins" not in str(e):
                raise
            warnings.warn(
                f"INT8 calibration: {method} calibration failed ({e}); using min-max ranges instead",
                stacklevel=2,
            )
            quantize(methods["minmax"])
    finally:
        pre.unlink(missing_ok=True)
    return dst


def export_onnx_file(
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
    opset: int | None = 20,
) -> Path:
    """:func:`export_onnx` (then :func:`quantize_onnx_int8` for ``precision="int8"``) with the
    model's metadata and the export record in the file."""
    check_format("onnx", precision)
    path = Path(path)
    check_calibration(precision, calibration, f"{path}: INT8")
    src = path if precision == "fp32" else path.with_name(path.stem + ".fp32.onnx")
    export_onnx(
        model,
        src,
        size,
        batch=batch,
        dynamic_batch=dynamic_batch,
        output=output,
        optimize=optimize,
        opset=opset,
    )
    if precision == "int8":
        try:
            quantize_onnx_int8(src, path, calibration)
        finally:
            src.unlink(missing_ok=True)
    info = ExportInfo(
        check_export_size(model, size), None if dynamic_batch else batch, output, precision, optimize,
        __version__,
    )  # fmt: skip
    write_onnx_metadata(path, model_meta(model), info)
    return path
