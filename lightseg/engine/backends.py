"""The one place that turns a model, a checkpoint or an exported file into a runner.

A runner is called like the eager model: ``runner(x)`` takes a normalised N x 3 x H x W float
tensor (sides multiples of ``runner.size_divisor``) and returns what its graph computes
(``runner.output``: stride-s logits unless the graph was exported otherwise) as a torch tensor.
It carries the model's facts (``runner.meta``), ``runtime`` and ``precision``. Runners are safe to
call from several threads at once.

Runtimes and the precisions they run:

- ``torch``: ``fp32`` or ``bf16`` (CPU autocast); ``optimize`` none / fold-bn / compile.
- ``onnxruntime``: ``fp32`` or ``int8`` (static QDQ, calibrated on real images).
- ``openvino``: ``fp32``, ``bf16`` (inference precision hint) or ``int8`` (NNCF post-training
  quantisation, calibrated on real images). Needs the ``openvino`` extra.

A model (or checkpoint) run with ``onnxruntime``/``openvino`` is exported once per padded input
size into a cache keyed by its content (weights, metadata, options and library versions), so a
second process with the same model starts from the cached file.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lightseg.engine import signal_stack
from lightseg.engine.export import (
    EXPORT_KEY,
    FORMAT_SUFFIX,
    CalibrationImages,
    ExportInfo,
    InferenceGraph,
    export_model,
    import_openvino,
)
from lightseg.errors import CheckpointError, ConfigError, InputError, InputNotFoundError
from lightseg.meta import META_KEY, ModelMeta, model_meta

RUNTIMES = ("torch", "onnxruntime", "openvino")
PRECISIONS = {
    "torch": ("fp32", "bf16"),
    "onnxruntime": ("fp32", "int8"),
    "openvino": ("fp32", "bf16", "int8"),
}
OPTIMIZE = ("none", "fold-bn", "compile")
RUNTIME_FORMAT = {"onnxruntime": "onnx", "openvino": "openvino"}
EXPORTED_SUFFIXES = {".onnx": "onnxruntime", ".xml": "openvino"}
# CPU features that decide which reduced precision pays (recorded with every benchmark result).
CPU_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


@functools.cache
def cpu_flags() -> tuple[str, ...]:
    """The :data:`CPU_FEATURES` this CPU has (from /proc/cpuinfo; empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line.split(":", 1)[1].split() for line in f if line.startswith("flags"))
    except (OSError, StopIteration):
        return ()
    return tuple(f for f in CPU_FEATURES if f in flags)


def default_cpu_path() -> tuple[str, str]:
    """(runtime, precision) run on a CPU when none is asked for: the fastest path that needs only
    the weights and whose accuracy cost on CamVid test was measured at <= 0.1 mIoU (docs/deploy.md,
    "Which path by default"). OpenVINO bf16 where the CPU has AMX-BF16 (about 2x ONNX Runtime fp32;
    without AMX, bf16 was slower than fp32); else ONNX Runtime fp32 on the optimised export (exact);
    without onnxruntime, eager torch with BN folded."""
    if "amx_bf16" in cpu_flags() and _installed("openvino"):
        return "openvino", "bf16"
    if _installed("onnxruntime"):
        return "onnxruntime", "fp32"
    return "torch", "fp32"


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def check_runtime(runtime: str, precision: str) -> None:
    if runtime not in RUNTIMES:
        raise InputError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
    if precision not in PRECISIONS[runtime]:
        where = [r for r, ps in PRECISIONS.items() if precision in ps]
        raise InputError(
            f"{runtime} runs {', '.join(PRECISIONS[runtime])}, not {precision!r}"
            + (f"; {precision} runs with --runtime {' or '.join(where)}" if where else "")
        )


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
        try:
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover - depends on the installed extras
            raise InputError("onnxruntime is needed: pip install 'lightseg[export]'") from e
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
        x = _as_input(x, self.input_shape, self.path)
        return self.session.run(None, {self.input_name: x})[0]


class OpenVinoSession:
    """An OpenVINO compiled model on one file (IR ``.xml`` or ``.onnx``): ``session(x) -> np.ndarray``.

    ``precision`` sets the inference precision (``bf16`` on a CPU without bfloat16 support runs
    fp32, with a warning). One infer request per calling thread, so concurrent calls are safe.
    """

    def __init__(self, path: str | os.PathLike, precision: str = "fp32", threads: int | None = None):
        with signal_stack.kept():
            self._compile(path, precision, threads)
        self._local = threading.local()

    def _compile(self, path: str | os.PathLike, precision: str, threads: int | None) -> None:
        ov = import_openvino()
        path = Path(path)
        check_ir_files(path)
        core = ov.Core()
        if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            warnings.warn("this CPU has no bfloat16 support: OpenVINO runs bf16 as fp32", stacklevel=2)
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY",
            # int8 graphs: fp32 for what stays unquantised (bf16 there would add its own error)
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        except Exception as e:  # OpenVINO raises RuntimeError with a long C++ trace
            raise InputError(f"{path}: OpenVINO cannot load this file ({str(e).splitlines()[0]})") from e
        self.path = path
        shape = self.compiled.inputs[0].get_partial_shape()
        self.input_shape = tuple(d.get_length() if d.is_static else None for d in shape)

    def __call__(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        x = _as_input(x, self.input_shape, self.path)
        request = getattr(self._local, "request", None)
        with signal_stack.kept():
            if request is None:
                request = self._local.request = self.compiled.create_infer_request()
            return request.infer({0: x})[0].copy()  # the request reuses its output buffer


def _as_input(x: np.ndarray | torch.Tensor, want: tuple, path: Path) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 4 or any(w is not None and w != g for w, g in zip(want, x.shape)):
        raise InputError(f"{path} takes input of shape {want}, got {tuple(x.shape)}")
    return x


def check_ir_files(path: Path) -> None:
    """An OpenVINO IR is two files side by side; fail naming the one that is missing."""
    if not path.is_file():
        raise InputNotFoundError(f"model file not found: {path}")
    if path.suffix == ".xml" and not path.with_suffix(".bin").is_file():
        raise InputError(
            f"{path}: its weights file {path.with_suffix('.bin').name} is missing; an OpenVINO IR is "
            "two files, NAME.xml and NAME.bin, kept in the same folder (copy both, or re-export)"
        )


# --------------------------------------------------------------------------------------------------
# Reading what an exported file is
# --------------------------------------------------------------------------------------------------
MISSING_FACTS = "model name, number of classes, mean/std, size divisor, output stride"


def read_file_metadata(path: str | os.PathLike) -> tuple[dict[str, str], tuple, str]:
    """(lightseg metadata strings, input shape, output tensor name) of an ``.onnx``/``.xml`` file."""
    path = Path(path)
    check_ir_files(path)
    if path.suffix == ".xml":
        ov = import_openvino()
        try:
            with signal_stack.kept():
                model = ov.Core().read_model(str(path))
        except Exception as e:
            raise InputError(f"{path}: OpenVINO cannot read this file ({str(e).splitlines()[0]})") from e
        props = {
            k: str(model.get_rt_info([k]).astype(str))
            for k in (META_KEY, EXPORT_KEY)
            if model.has_rt_info([k])
        }
        shape = tuple(d.get_length() if d.is_static else None for d in model.inputs[0].get_partial_shape())
        return props, shape, model.outputs[0].get_any_name()
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise InputError(f"{path}: not a readable ONNX file ({type(e).__name__}: {e})") from e
    props = {p.key: p.value for p in proto.metadata_props}
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    return props, shape, proto.graph.output[0].name


def exported_facts(path: str | os.PathLike, meta: ModelMeta | None = None) -> tuple[ModelMeta, ExportInfo]:
    """The model metadata and export record stored in an exported file.

    A file exported by another tool carries neither: then ``meta`` must give the model's facts
    (the export record is read from the graph: its input size, a logits output, fp32); without
    it the error lists what is missing and how to pass it.
    """
    path = Path(path)
    props, shape, _ = read_file_metadata(path)
    source = str(path)
    if META_KEY in props and meta is None:
        meta = ModelMeta.from_json(props[META_KEY], source)
    if meta is None:
        raise InputError(
            f"{path}: the file carries no lightseg metadata ({META_KEY}); missing: {MISSING_FACTS} "
            "(classes and palette optional). Re-export it with `lightseg export CHECKPOINT --format "
            f"{'openvino' if path.suffix == '.xml' else 'onnx'}`, or pass the facts: "
            "`--meta meta.json` (a JSON object with name, num_classes, mean, std, size_divisor, "
            "output_stride, classes, palette) or in Python `Segmenter(path, meta=lightseg.ModelMeta(...))`"
        )
    if EXPORT_KEY in props:
        return meta, ExportInfo.from_json(props[EXPORT_KEY], source)
    if len(shape) != 4 or shape[2] is None or shape[3] is None:
        raise InputError(f"{path}: expected an N x 3 x H x W input of static H and W, got {shape}")
    return meta, ExportInfo((shape[2], shape[3]), shape[0], "logits", "fp32", "unknown", "unknown")


# --------------------------------------------------------------------------------------------------
# Runners: torch in, torch out
# --------------------------------------------------------------------------------------------------
class Runner:
    """Base of every runner (see the module docstring)."""

    runtime: str
    precision: str
    meta: ModelMeta
    output: str = "logits"

    @property
    def size_divisor(self) -> int:
        return int(self.meta.size_divisor)

    @property
    def num_classes(self) -> int:
        return int(self.meta.num_classes or 0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.meta.name} on {self.runtime} {self.precision}"


class TorchRunner(Runner):
    """Eager PyTorch: ``optimize`` none / fold-bn (BN folded; with ``size`` the attention biases
    are fixed to it) / compile; ``precision`` fp32 or bf16 (CPU autocast). Returns fp32."""

    runtime = "torch"

    def __init__(
        self,
        model: nn.Module,
        optimize: str = "fold-bn",
        precision: str = "fp32",
        *,
        size: Sequence[int] | None = None,
        output: str = "logits",
        device: str = "cpu",
    ):
        from lightseg.fuse import optimize_for_inference

        check_runtime("torch", precision)
        if optimize not in OPTIMIZE:
            raise InputError(f"optimize must be one of {', '.join(OPTIMIZE)}; got {optimize!r}")
        self.meta = model_meta(model)
        self.precision, self.optimize, self.output, self.device = precision, optimize, output, device
        hw = (int(size[0]), int(size[1])) if size is not None and optimize != "none" else None
        prepared = optimize_for_inference(model, optimize, size=hw)
        self.graph = InferenceGraph(prepared, output).to(device).eval()

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            y = self.graph(x)
        return y.float() if y.is_floating_point() else y


class FileRunner(Runner):
    """An exported ``.onnx`` / ``.xml`` file on ONNX Runtime or OpenVINO.

    The graph has a static input size S: inputs of that size run as they are; smaller ones
    (already padded to the size divisor) are padded further to S at the bottom/right and the output
    cropped back (like padding to the size divisor, this changes what the model sees at the
    border: export at your image size for results equal to the checkpoint's). Larger inputs fail.
    A graph of fixed batch runs a larger batch one image at a time.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        runtime: str | None = None,
        precision: str | None = None,
        threads: int | None = None,
        meta: ModelMeta | None = None,
    ):
        self.path = Path(path)
        if self.path.suffix not in EXPORTED_SUFFIXES:
            raise InputError(
                f"{self.path}: not an exported model (expected {' or '.join(EXPORTED_SUFFIXES)})"
            )
        runtime = runtime or EXPORTED_SUFFIXES[self.path.suffix]
        if runtime == "onnxruntime" and self.path.suffix == ".xml":
            raise InputError(f"{self.path}: an OpenVINO IR runs with --runtime openvino, not onnxruntime")
        if runtime == "torch":
            raise InputError(
                f"{self.path}: an exported file runs with --runtime onnxruntime or openvino; "
                "for torch, pass the checkpoint it was exported from"
            )
        check_runtime(runtime, precision or "fp32")
        self.meta, self.info = exported_facts(self.path, meta)
        self.precision = _file_precision(self.path, runtime, self.info.precision, precision)
        self.runtime, self.output = runtime, self.info.output
        if runtime == "onnxruntime":
            self.session: Any = OrtSession(self.path, threads)
        else:
            self.session = OpenVinoSession(self.path, self.precision, threads)

    @property
    def input_size(self) -> tuple[int, int]:
        return self.info.input_size

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        sh, sw = self.info.input_size
        if h > sh or w > sw:
            raise InputError(
                f"{self.path} was exported for {sh}x{sw} inputs; this one is {h}x{w} after padding to a "
                f"multiple of {self.size_divisor}: export at that size (`lightseg export ... --size {h} {w}`) "
                f"or use sliding windows (`--mode slide --crop-size {sh} {sw}`)"
            )
        xp = F.pad(x, (0, sw - w, 0, sh - h)) if (h, w) != (sh, sw) else x
        if self.info.batch is None or n == self.info.batch:
            y = torch.from_numpy(self.session(xp))
        else:
            y = torch.cat([torch.from_numpy(self.session(xp[i : i + 1])) for i in range(n)])
        if (h, w) == (sh, sw):
            return y
        if self.output == "logits":
            s = int(self.meta.output_stride)
            return y[..., : -(-h // s), : -(-w // s)]
        return y[..., :h, :w]

    def describe(self) -> str:
        return f"{self.path} on {self.runtime} {self.precision}"


def _file_precision(path: Path, runtime: str, held: str, wanted: str | None) -> str:
    """The precision to run a file holding ``held`` at, or an error saying how to get ``wanted``."""
    if wanted is None or wanted == held:
        return held
    # OpenVINO's bf16 is a compile option: fp32 and bf16 files run at either.
    if runtime == "openvino" and {held, wanted} <= {"fp32", "bf16"}:
        return wanted
    if wanted == "int8":
        raise InputError(
            f"{path} holds {held} weights; INT8 needs a calibrated file: `lightseg export CHECKPOINT "
            f"--format {RUNTIME_FORMAT.get(runtime, 'onnx')} --precision int8 --calibration DIR`"
        )
    raise InputError(f"{path} holds {held} weights and runs only at {held} on {runtime}, not {wanted}")


class ExportingRunner(Runner):
    """A model on ONNX Runtime or OpenVINO: exported (and for int8 quantised) once per padded input
    size into the content-keyed cache (:func:`cached_export`), then run from the file."""

    def __init__(
        self,
        model: nn.Module,
        runtime: str,
        precision: str = "fp32",
        *,
        threads: int | None = None,
        optimize: str = "fold-bn",
        calibration: Sequence[str | os.PathLike] | str | os.PathLike | None = None,
        calibration_count: int = 32,
        cache_dir: str | os.PathLike | None = None,
    ):
        check_runtime(runtime, precision)
        if precision == "int8" and not calibration:
            raise InputError(
                "INT8 needs calibration images: pass calibration=DIR (command line: --calibration DIR), "
                "a folder of real images of the domain the model will see"
            )
        self.model = model.eval()
        self.meta = model_meta(model)
        self.runtime, self.precision, self.threads, self.optimize = runtime, precision, threads, optimize
        self.calibration, self.calibration_count = calibration, calibration_count
        self.cache_dir = cache_dir
        self._files: dict[tuple[int, int], FileRunner] = {}
        self._lock = threading.Lock()

    def file_runner(self, h: int, w: int) -> FileRunner:
        with self._lock:  # one export per size, also when threads ask at once
            if (h, w) not in self._files:
                calib = None
                if self.precision == "int8":
                    calib = CalibrationImages(
                        self.calibration, (h, w), self.meta.mean, self.meta.std, self.calibration_count
                    )
                path = cached_export(
                    self.model, RUNTIME_FORMAT[self.runtime], (h, w), precision=self.precision,
                    calibration=calib, optimize=self.optimize, dynamic_batch=True, cache_dir=self.cache_dir,
                )  # fmt: skip
                self._files[(h, w)] = FileRunner(path, self.runtime, self.precision, self.threads)
            return self._files[(h, w)]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.file_runner(int(x.shape[-2]), int(x.shape[-1]))(x)


# --------------------------------------------------------------------------------------------------
# The export cache
# --------------------------------------------------------------------------------------------------
def export_cache_dir() -> Path:
    """``$LIGHTSEG_CACHE/exports``, default ``~/.cache/lightseg/exports``."""
    root = os.environ.get("LIGHTSEG_CACHE") or Path.home() / ".cache" / "lightseg"
    return Path(root) / "exports"


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    from lightseg import __version__

    out = {"lightseg": __version__, "torch": torch.__version__}
    for pkg in ("onnx", "onnxscript", "onnxruntime", "openvino", "nncf"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out


def content_key(model: nn.Module, options: dict[str, Any]) -> str:
    """SHA-256 of the model's weights (every tensor of its state dict), its metadata, the export
    options and the library versions that shape the file."""
    h = hashlib.sha256()
    h.update(json.dumps({"options": options, "versions": _versions(), "type": type(model).__name__},
                        sort_keys=True, default=str).encode())  # fmt: skip
    h.update(model_meta(model).to_json().encode())
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cached_export(
    model: nn.Module,
    fmt: str,
    size: Sequence[int],
    *,
    precision: str = "fp32",
    calibration: CalibrationImages | None = None,
    optimize: str = "fold-bn",
    output: str = "logits",
    batch: int = 1,
    dynamic_batch: bool = False,
    opset: int | None = 20,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """The exported file for these options, from the cache when the same content was exported
    before (else exported into it; a finished file appears atomically)."""
    options = dict(
        fmt=fmt, size=[int(size[0]), int(size[1])], precision=precision, optimize=optimize, output=output,
        batch=batch, dynamic_batch=dynamic_batch, opset=opset,
        calibration=calibration.fingerprint() if calibration is not None else None,
    )  # fmt: skip
    key = content_key(model, options)
    folder = Path(cache_dir) if cache_dir else export_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{model_meta(model).name}_{size[0]}x{size[1]}_{optimize}_{output}_{precision}_{key[:16]}"
    path = folder / (stem + FORMAT_SUFFIX[fmt])
    if path.is_file() and (fmt != "openvino" or path.with_suffix(".bin").is_file()):
        return path
    tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=folder))
    try:
        kw: dict[str, Any] = dict(batch=batch, dynamic_batch=dynamic_batch, output=output, optimize=optimize)
        if fmt == "onnx":
            kw["opset"] = opset
        made = export_model(
            model, tmp / path.name, size, fmt, precision=precision, calibration=calibration, **kw
        )
        if fmt == "openvino":  # the .bin first: a reader that finds the .xml finds its weights
            os.replace(made.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(made, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


# --------------------------------------------------------------------------------------------------
# From whatever the user has to a runner
# --------------------------------------------------------------------------------------------------
def load_model(
    name: str | None, weights: str | os.PathLike | None, num_classes: int | None = None
) -> nn.Module:
    """A segmentor in eval mode.

    - ``weights`` is a lightseg checkpoint: rebuilt from the file (its metadata names the model and
      its classes; ``name`` and ``num_classes``, if given, must agree);
    - otherwise ``create_model(name, num_classes=num_classes or 150, weights=weights)``, loaded
      strictly: weights for another number of classes fail naming the file and the keys.
    """
    from lightseg.checkpoint import load_checkpoint
    from lightseg.models.registry import create_model

    if weights is not None:
        try:
            model = load_checkpoint(weights)
        except CheckpointError:
            model = None  # a foreign layout: needs the name (and class count) from the caller
        if model is not None:
            saved = model_meta(model)
            if name and saved.name != name:
                raise CheckpointError(f"{weights}: holds weights of {saved.name!r}, not {name!r}")
            if num_classes is not None and num_classes != saved.num_classes:
                raise CheckpointError(
                    f"{weights}: holds weights for {saved.num_classes} classes, not {num_classes}: drop "
                    "--num-classes (a lightseg checkpoint knows its classes) or use weights for that many"
                )
            return model.eval()
    if not name:
        raise CheckpointError(
            f"{weights}: not a lightseg checkpoint, so it does not name its model: give the model name "
            "too (see `lightseg models`)"
        )
    model = create_model(
        name, num_classes=num_classes or 150, weights=None if weights is None else str(weights)
    )
    return model.eval()


def is_exported(source: Any) -> bool:
    return isinstance(source, (str, os.PathLike)) and Path(source).suffix in EXPORTED_SUFFIXES


def build_runner(
    source: nn.Module | str | os.PathLike,
    *,
    runtime: str | None = None,
    precision: str | None = None,
    weights: str | os.PathLike | None = None,
    num_classes: int | None = None,
    optimize: str = "fold-bn",
    threads: int | None = None,
    meta: ModelMeta | None = None,
    calibration: Sequence[str | os.PathLike] | str | os.PathLike | None = None,
    calibration_count: int = 32,
    cache_dir: str | os.PathLike | None = None,
    device: str = "cpu",
) -> Runner:
    """A runner for ``source``: an ``nn.Module``, a registered model name (with ``weights``), a
    checkpoint file, or an exported ``.onnx`` / ``.xml`` file.

    ``runtime`` default: an exported file's own (``.onnx``: onnxruntime, ``.xml``: openvino);
    otherwise the CPU default path (:func:`default_cpu_path`, whose precision applies when neither
    is given). ``precision`` default: the file's, else fp32. ``meta`` gives the facts of a file
    exported by another tool (or overrides a model's). ``calibration``: images (files, folders,
    globs) for int8, ``calibration_count`` of them used.
    """
    if is_exported(source):
        if weights is not None:
            raise InputError(f"{source}: an exported file holds its weights; drop --weights {weights}")
        return FileRunner(source, runtime, precision, threads, meta)
    if isinstance(source, nn.Module):
        model = source.eval()
        if weights is not None:
            from lightseg.checkpoint import load_weights

            load_weights(model, weights)
    elif isinstance(source, (str, os.PathLike)) and Path(source).is_file():
        model = load_model(None, source, num_classes)
    elif isinstance(source, os.PathLike) or Path(source).suffix or os.sep in source:  # not a name
        raise InputNotFoundError(
            f"{source}: no such file (a model is a checkpoint, an exported .onnx/.xml file, or a "
            "registered name with --weights: see `lightseg models`)"
        )
    else:
        model = load_model(str(source), weights, num_classes)
    if meta is not None:
        model.meta = meta
    if runtime is None:
        runtime, default_precision = default_cpu_path() if device == "cpu" else ("torch", "fp32")
        precision = precision or default_precision
    precision = precision or "fp32"
    check_runtime(runtime, precision)
    if runtime == "torch":
        return TorchRunner(model, optimize, precision, device=device)
    return ExportingRunner(
        model, runtime, precision, threads=threads, optimize=optimize if optimize != "compile" else "fold-bn",
        calibration=calibration, calibration_count=calibration_count, cache_dir=cache_dir,
    )  # fmt: skip


def read_meta_file(path: str | os.PathLike) -> ModelMeta:
    """A :class:`ModelMeta` from a JSON file (``--meta``), for files exported by other tools."""
    p = Path(path)
    if not p.is_file():
        raise InputNotFoundError(f"metadata file not found: {p}")
    return ModelMeta.from_json(p.read_text(), str(p))


def calibration_for(inputs: Iterable[str] | None, size, meta: ModelMeta, count: int) -> CalibrationImages:
    """Streamed calibration images for a model's input ``size`` and normalisation."""
    return CalibrationImages(list(inputs) if inputs else None, size, meta.mean, meta.std, count)
