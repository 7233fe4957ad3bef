"""What runs what: the runtimes, the files they read and write, the precisions each file holds and each
runtime runs, and what an exported graph returns. The one table; the command line's choices, the
checks and the error messages all read it.

- ``torch`` runs a model in fp32, bf16 (autocast) or fp16 (autocast, on CUDA); it reads no
  exported file.
- ``onnxruntime`` runs ``.onnx`` files in fp32 or int8 (static QDQ, calibrated on real images).
- ``openvino`` runs ``.xml`` IR files (and ``.onnx``) in fp32, bf16 (an inference-precision hint)
  or int8 (NNCF post-training quantisation). Needs the ``openvino`` extra.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightseg.errors import InputError
from lightseg.fuse import OPTIMIZATIONS

PRECISIONS = ("fp32", "bf16", "fp16", "int8")


@dataclass(frozen=True)
class FileFormat:
    """An export format: its suffix, the precisions a file can hold and the runtime that runs it."""

    name: str
    suffix: str
    precisions: tuple[str, ...]
    runtime: str | None  # None: loaded with torch.export, not run by a lightseg runner


@dataclass(frozen=True)
class Runtime:
    """An inference runtime: the precisions it runs, the format a model is exported to for it, and
    the suffixes of the files it reads."""

    name: str
    precisions: tuple[str, ...]
    export_format: str | None
    reads: tuple[str, ...]


# bf16 OpenVINO files keep fp32 weights and record bf16 as the inference precision the runtime compiles
# with; ONNX has no valid bfloat16 convolution.
FORMATS: dict[str, FileFormat] = {
    f.name: f
    for f in (
        FileFormat("onnx", ".onnx", ("fp32", "int8"), "onnxruntime"),
        FileFormat("openvino", ".xml", ("fp32", "bf16", "int8"), "openvino"),
        FileFormat("pt2", ".pt2", ("fp32",), None),
    )
}
RUNTIMES: dict[str, Runtime] = {
    r.name: r
    for r in (
        Runtime("torch", ("fp32", "bf16", "fp16"), None, ()),
        Runtime("onnxruntime", ("fp32", "int8"), "onnx", (".onnx",)),
        Runtime("openvino", ("fp32", "bf16", "int8"), "openvino", (".xml", ".onnx")),
    )
}
# Suffix of a file a runner reads -> the runtime that runs it by default.
EXPORTED_SUFFIXES = {f.suffix: f.runtime for f in FORMATS.values() if f.runtime}
OPTIMIZE = OPTIMIZATIONS  # none / fold-bn / compile (see lightseg.fuse.optimize_for_inference)

# What an exported graph returns: stride-s logits, logits upsampled to the input size (K x H x W), or
# uint8 labels at full resolution (argmax inside the graph).
GRAPH_OUTPUTS = ("logits", "logits-full", "argmax")
# What ``lightseg bench --output`` times -> the graph output it needs: ``argmax`` computes full-resolution
# labels outside the graph (upsample_argmax, timed), ``argmax-graph`` inside it.
TIMED_OUTPUTS = {
    "logits": "logits",
    "logits-full": "logits-full",
    "argmax": "logits",
    "argmax-graph": "argmax",
}


def runtime_names() -> list[str]:
    return list(RUNTIMES)


def check_runtime(runtime: str, precision: str) -> None:
    """Fail naming what ``runtime`` runs and which runtime runs ``precision`` instead."""
    if runtime not in RUNTIMES:
        raise InputError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
    _check_precision(RUNTIMES, runtime, precision, "{name} runs {have}, not {want!r}", "--runtime")


def check_format(fmt: str, precision: str) -> None:
    """Fail naming what a ``fmt`` file can hold and where ``precision`` is available instead."""
    if fmt not in FORMATS:
        raise InputError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    _check_precision(
        FORMATS, fmt, precision, "a {name} file cannot hold {want} (it holds {have})", "--format"
    )


def _check_precision(table: dict, name: str, precision: str, refusal: str, option: str) -> None:
    """``refusal`` when ``table[name]`` lacks ``precision``, plus the entries that have it."""
    have = table[name].precisions
    if precision not in have:
        where = [k for k, v in table.items() if precision in v.precisions]
        raise InputError(
            refusal.format(name=name, want=precision, have=", ".join(have))
            + (f"; {precision} is available with {option} {' or '.join(where)}" if where else "")
        )


def check_optimize(optimize: str) -> None:
    if optimize not in OPTIMIZE:
        raise InputError(f"optimize must be one of {', '.join(OPTIMIZE)}; got {optimize!r}")


def is_exported(source: Any) -> bool:
    """Whether ``source`` names a file a runner reads (``.onnx``, ``.xml``)."""
    return isinstance(source, (str, os.PathLike)) and Path(source).suffix in EXPORTED_SUFFIXES


def file_runtime(path: Path, runtime: str | None) -> str:
    """The runtime that runs the exported file ``path``: ``runtime`` when it reads that suffix, by
    default the file's own; an error saying what runs it otherwise."""
    if path.suffix not in EXPORTED_SUFFIXES:
        raise InputError(f"{path}: not an exported model (expected {' or '.join(EXPORTED_SUFFIXES)})")
    runtime = runtime or EXPORTED_SUFFIXES[path.suffix]
    if runtime not in RUNTIMES:
        raise InputError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
    if path.suffix not in RUNTIMES[runtime].reads:
        readers = [r.name for r in RUNTIMES.values() if path.suffix in r.reads]
        hint = "" if runtime != "torch" else "; for torch, pass the checkpoint it was exported from"
        raise InputError(f"{path}: a {path.suffix} file runs with --runtime {' or '.join(readers)}{hint}")
    return runtime


def exported_file(runtime: str, precision: str) -> tuple[str, str]:
    """(format, precision) of the file a model is exported to, to run on ``runtime`` at
    ``precision``: one fp32 ONNX file serves fp32 and bf16 on both runtimes (OpenVINO reads ONNX,
    and its bf16 is a compile option), so the paths a measured default compares share one export;
    INT8 is quantised into the runtime's own format."""
    if precision == "int8":
        return RUNTIMES[runtime].export_format or "onnx", "int8"
    return "onnx", "fp32"


def int8_file_hint(runtime: str) -> str:
    """How to make a calibrated INT8 file for ``runtime``."""
    fmt = RUNTIMES[runtime].export_format or "onnx"
    return f"`lightseg export CHECKPOINT --format {fmt} --precision int8 --calibration DIR`"
