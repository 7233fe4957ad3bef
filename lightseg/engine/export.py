"""Export segmentors to ONNX / torch.export and run ONNX files with ONNX Runtime.

Exported graphs have a static spatial size (CGRSeg's pyramid pooling pools to a size computed
from the input, and the attention-bias tables are resized to the fixed grid once, at export time);
the batch dimension is optionally dynamic. The dynamo-based exporter is used: the legacy
TorchScript exporter fails on ``adaptive_avg_pool2d`` to computed sizes.

Opset 20 by default, not the exporter's default 18: opset 20 has a ``Gelu`` operator, at 18 the
exporter spells each GELU as ``Div -> Erf -> Add -> Mul -> Mul``. ONNX Runtime's GeluFusion does not
match that spelling (the 0.5 multiplies ``1 + erf`` before ``x``), so the 57 GELUs of CGRSeg-T ran as
five memory-bound passes each, and because ``Erf`` has no NCHWc kernel every one of them also forced
the blocked-layout convolutions around it to reorder to NCHW and back. Measured on CGRSeg-T, 512x512,
1 thread: 149 ms -> 105 ms of kernel time (ReorderOutput 23 ms -> 3 ms, GELU 45 ms -> 22 ms).

What the graph returns (``output``):
- ``"logits"``: N x K x H/s x W/s float logits at the model's output stride s (8 for CGRSeg);
- ``"logits-full"``: the same bilinearly upsampled (align_corners=False) to N x K x H x W;
- ``"argmax"``: ``argmax_k`` of ``"logits-full"`` as N x H x W uint8 labels (K <= 256).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lightseg.fuse import optimize_for_inference

OUTPUTS = ("logits", "logits-full", "argmax")
INPUT_NAME = "image"
# Graph output names per output kind (an output named "argmax" clashes with the ArgMax node's name).
OUTPUT_NAMES = {"logits": "logits", "logits-full": "logits_full", "argmax": "labels"}


class InferenceGraph(nn.Module):
    """``model`` plus the output stage that an exported graph contains (see the module docstring)."""

    def __init__(self, model: nn.Module, output: str = "logits"):
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(OUTPUTS)}; got {output!r}")
        num_classes = getattr(model, "num_classes", None)
        if output == "argmax" and num_classes is not None and num_classes > 256:
            raise ValueError(f"uint8 argmax output holds at most 256 classes; the model has {num_classes}")
        self.model = model
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        if self.output == "logits":
            return logits
        full = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        if self.output == "logits-full":
            return full
        return full.argmax(1).to(torch.uint8)


def _check_size(model: nn.Module, size: Sequence[int]) -> tuple[int, int]:
    if len(size) != 2:
        raise ValueError(f"size must be (H, W), got {tuple(size)}")
    h, w = int(size[0]), int(size[1])
    d = int(getattr(model, "size_divisor", 1))
    if h % d or w % d:
        raise ValueError(
            f"export size {h}x{w} is not a multiple of {d}; use {-(-h // d) * d}x{-(-w // d) * d} "
            "(predict pads inputs to the exported size)"
        )
    return h, w


def inference_graph(
    model: nn.Module, size: Sequence[int], output: str = "logits", optimize: str = "fold-bn"
) -> InferenceGraph:
    """An eval-mode :class:`InferenceGraph` for a fixed input ``size`` (BN folded and attention
    biases fixed unless ``optimize="none"``)."""
    hw = _check_size(model, size)
    prepared = optimize_for_inference(model, optimize, size=hw if optimize != "none" else None)
    return InferenceGraph(prepared, output).eval()


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
    docstring); ``None`` takes ``torch.onnx.export``'s default (18) — with ``optimize="none"`` that
    is the "naive" export the benchmarks compare against.
    Returns the path. Needs the ``export`` extra (onnx, onnxscript).
    """
    if optimize == "compile":
        raise ValueError("optimize='compile' is a run-time option; export with 'fold-bn' or 'none'")
    graph = inference_graph(model, size, output, optimize)
    h, w = _check_size(model, size)
    x = torch.randn(batch, 3, h, w)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dyn = {"x": {0: torch.export.Dim("batch", min=1, max=1024)}} if dynamic_batch else None
    with warnings.catch_warnings(), torch.no_grad():
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
    return path


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
    h, w = _check_size(model, size)
    dyn = {"x": {0: torch.export.Dim("batch", min=1, max=1024)}} if dynamic_batch else None
    with torch.no_grad():
        program = torch.export.export(graph, (torch.randn(batch, 3, h, w),), dynamic_shapes=dyn)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))
    return path


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
        raise ValueError(f"optimization must be one of {', '.join(levels)}; got {optimization!r}")
    so = ort.SessionOptions()
    so.graph_optimization_level = levels[optimization]
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    if threads:
        so.intra_op_num_threads = int(threads)
    so.log_severity_level = 3
    return so


class OrtRunner:
    """An ONNX Runtime session on one exported file: ``runner(x) -> np.ndarray``.

    ``x``: N x 3 x H x W float32 (numpy or torch) at the exported size. ``input_shape`` is the
    graph's input shape (``None`` for a dynamic axis); ``output`` the output kind (see OUTPUTS).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        threads: int | None = None,
        optimization: str = "all",
        providers: Sequence[str] | None = None,
    ):
        try:
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover - depends on the installed extras
            raise ImportError("onnxruntime is needed: pip install 'lightseg[export]'") from e
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX file not found: {path}")
        try:
            self.session = ort.InferenceSession(
                str(path),
                sess_options=ort_session_options(threads, optimization),
                providers=list(providers or ["CPUExecutionProvider"]),
            )
        except Exception as e:  # ORT raises its own private exception types
            raise ValueError(f"{path}: ONNX Runtime cannot load this file ({e})") from e
        self.path = path
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = tuple(d if isinstance(d, int) else None for d in inp.shape)
        name = self.session.get_outputs()[0].name
        # The output kind (see OUTPUTS) when the file was written by export_onnx, else the raw name.
        self.output = {v: k for k, v in OUTPUT_NAMES.items()}.get(name, name)

    def __call__(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        x = np.ascontiguousarray(x, dtype=np.float32)
        want = self.input_shape
        if x.ndim != 4 or any(w is not None and w != g for w, g in zip(want, x.shape)):
            raise ValueError(f"{self.path} takes input of shape {want}, got {tuple(x.shape)}")
        return self.session.run(None, {self.input_name: x})[0]


def _int8_exclusions(path: str | os.PathLike) -> list[str]:
    """Convolutions to keep in fp32: those reading a Softmax output (EfficientFormerV2's
    talking-head conv after the attention softmax). Quantising them puts Q/DQ on both sides of the
    Softmax, which ONNX Runtime then fuses into QLinearSoftmax: 4-5x slower than the fp32 Softmax
    here, and attention probabilities (mostly tiny, in [0, 1]) lose the most from uint8."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    softmax_out = {o for n in graph.node if n.op_type == "Softmax" for o in n.output}
    return [n.name for n in graph.node if n.op_type == "Conv" and softmax_out & set(n.input)]


def quantize_onnx_int8(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    calibration: Iterable[np.ndarray],
    *,
    per_channel: bool = True,
    op_types: Sequence[str] = ("Conv",),
    method: str = "minmax",
) -> Path:
    """Static INT8 quantisation of an fp32 ONNX file, calibrated on ``calibration``: N x 3 x H x W
    float32 batches of real, normalised images at the graph's size.

    QDQ format, uint8 activations / int8 weights (per output channel when ``per_channel``): the
    pairing ONNX Runtime runs with VNNI ``vpdpbusd`` on this CPU. Only ``op_types`` are quantised
    (default: convolutions, 3.9 of CGRSeg-T's 4.6 GMACs): quantising every op (ORT's default) puts
    Q/DQ around each GELU, Mul and Add and was slower than fp32. Convolutions reading a Softmax
    stay fp32 (see :func:`_int8_exclusions`). ``method``: ``minmax``, ``percentile`` (99.999th)
    or ``entropy`` calibration of activation ranges.
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
        raise ValueError(f"method must be one of {', '.join(methods)}; got {method!r}")
    src, dst = Path(src), Path(dst)
    batches = [np.ascontiguousarray(b, dtype=np.float32) for b in calibration]
    if not batches:
        raise ValueError("INT8 calibration needs at least one image batch")

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            b = next(self._it, None)
            return None if b is None else {INPUT_NAME: b}

    pre = dst.with_name(dst.stem + ".pre.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    try:
        quantize_static(
            str(pre),
            str(dst),
            _Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types),
            nodes_to_exclude=_int8_exclusions(pre),
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            calibrate_method=methods[method],
        )
    finally:
        pre.unlink(missing_ok=True)
    return dst
