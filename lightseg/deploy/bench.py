"""Latency benchmarks (``lightseg bench``): time one inference path, in this or a fresh process.

Every result says what was timed (``output``, :data:`~lightseg.deploy.formats.TIMED_OUTPUTS`):
- ``logits``: the model's logits at its output stride (8 for CGRSeg), nothing else;
- ``logits-full``: plus bilinear upsampling to the input size (K x H x W);
- ``argmax``: labels at full resolution = argmax of ``logits-full``, computed from the stride-s
  logits by :func:`lightseg.inference.upsample_argmax` (timed);
- ``argmax-graph``: the same labels computed inside the graph (upsample + argmax, uint8).
A path is a :class:`~lightseg.deploy.options.RunnerOptions` (runtime, precision, optimize, threads,
...) plus the output; runners are those of :mod:`lightseg.deploy.runners`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from lightseg.deploy.autoselect import Decision, synthetic_probe
from lightseg.deploy.calibration import calibration_for
from lightseg.deploy.cpu import cpu_flags, cpu_name
from lightseg.deploy.export_cache import cached_export
from lightseg.deploy.formats import (
    EXPORTED_SUFFIXES,
    TIMED_OUTPUTS,
    check_runtime,
    exported_file,
    is_exported,
)
from lightseg.deploy.media import read_image
from lightseg.deploy.metadata import exported_facts
from lightseg.deploy.options import RunnerOptions
from lightseg.deploy.runners import FileRunner, TorchRunner, build_runner
from lightseg.deploy.runners.auto import decide
from lightseg.errors import ConfigError
from lightseg.inference import pad_to_multiple, upsample_argmax
from lightseg.meta import model_meta
from lightseg.models.build import load_model


def environment(threads: int | None = None, device: str = "cpu") -> dict[str, Any]:
    """Hardware and versions recorded with every result."""
    env: dict[str, Any] = {
        "device": device,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpu_features": list(cpu_flags()),
        "threads": threads or torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    for pkg in ("onnxruntime", "openvino", "nncf"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            env[pkg] = importlib.metadata.version(pkg)
    if device == "cuda" and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env


def time_fn(
    fn: Callable[[], Any], warmup: int = 3, runs: int = 20, sync: Callable[[], None] | None = None
) -> list[float]:
    """Seconds per call of ``fn`` over ``runs`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t)
    return times


def time_interleaved(
    fns: dict[str, Callable[[], Any]], warmup: int = 2, runs: int = 20, block: int = 5
) -> dict[str, list[float]]:
    """Seconds per call of each function, timed in rotating blocks: each round runs every
    function ``warmup`` times untimed, then ``block`` times timed, until each has ``runs`` timings.
    Paths compared side by side thus see the same drift in machine load, while the untimed calls
    at the start of each block absorb the previous path's thread pools still spinning (ONNX
    Runtime and OpenMP workers busy-wait after a run: on 2 cores, strict one-call round-robin
    charged that to the next path)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    while any(len(t) < runs for t in times.values()):
        for k, fn in fns.items():
            for _ in range(warmup):
                fn()
            for _ in range(min(block, runs - len(times[k]))):
                t = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t)
    return times


def summarize(times: Sequence[float], batch: int) -> dict[str, float]:
    med = statistics.median(times)
    return {
        "median_ms": round(med * 1e3, 2),
        "min_ms": round(min(times) * 1e3, 2),
        "max_ms": round(max(times) * 1e3, 2),
        "images_per_s": round(batch / med, 2),
        "runs": len(times),
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process (MiB), including everything before this run.

    Linux: ``VmHWM``, the peak of the current address space. ``ru_maxrss`` would be wrong for the
    processes that ``lightseg bench`` starts: it keeps the parent's resident size at fork.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / (2**20 if sys.platform == "darwin" else 1024), 1)


def export_path(
    model: nn.Module,
    size: Sequence[int],
    batch: int = 1,
    *,
    output: str = "logits",
    opset: int | None = None,
    options: RunnerOptions | None = None,
    **option_fields: Any,
) -> Path:
    """The file an ``onnxruntime``/``openvino`` path runs (see :func:`make_runner`), exported (and
    quantised on ``options.calibration``) once into ``options.cache_dir`` or the export cache. A
    parent that times paths in fresh processes calls this first, so that the children find the
    file and only run."""
    o = RunnerOptions.of(options, **option_fields)
    precision = o.precision or "fp32"
    check_runtime(o.runtime, precision)
    calib = None
    if precision == "int8":
        calib = calibration_for(o.calibration, size, model_meta(model), o.calibration_count)
    fmt, file_precision = exported_file(o.runtime, precision)
    return cached_export(
        model, fmt, size, precision=file_precision, calibration=calib,
        optimize=o.optimize, output=TIMED_OUTPUTS[output], batch=batch,
        opset=opset or (None if o.optimize == "none" else 20), cache_dir=o.cache_dir,
    )  # fmt: skip


def make_runner(
    model: nn.Module | str | os.PathLike,
    size: Sequence[int],
    batch: int = 1,
    *,
    output: str = "logits",
    opset: int | None = None,
    options: RunnerOptions | None = None,
    as_predict: bool = False,
    **option_fields: Any,
) -> Callable[[torch.Tensor], Any]:
    """A function ``run(x)`` computing ``output`` for a batch ``x`` on the path ``options`` (or its
    fields as keywords) describes; the runtime defaults to ``torch``. ``as_predict``: the runner
    predict builds for ``options`` (:func:`~lightseg.deploy.runners.build_runner`: without a
    runtime, the measured default path, its decision from the cache where one was made), logits.

    ``model``: a model, or an exported ``.onnx``/``.xml`` file (then ``runtime`` must be one that
    runs it; ``size``, ``optimize`` and ``precision`` are the file's). For a model on
    ``onnxruntime``/``openvino`` the graph is exported (and for int8 quantised) once into
    ``cache_dir`` (default: the export cache), keyed by content, so a benchmark can export in one
    process and time in others. ``optimize``: ``none`` exports the model as it is with
    ``torch.onnx.export``'s defaults (the naive baseline); otherwise BN folded, attention biases
    fixed, opset 20. ``opset`` overrides the ONNX opset of either export.
    """
    if output not in TIMED_OUTPUTS:
        raise ConfigError(f"output must be one of {', '.join(TIMED_OUTPUTS)}; got {output!r}")
    o = RunnerOptions.of(options, **option_fields)
    h, w = int(size[0]), int(size[1])
    if as_predict:
        if output != "logits" or is_exported(model):
            raise ConfigError("predict's runner is timed for a model, on its logits")
        return build_runner(model, o)
    if is_exported(model):
        runner: Any = FileRunner(model, o.runtime, o.precision, threads=o.threads)
    elif o.runtime in (None, "torch"):
        runner = TorchRunner(
            model,
            o.optimize,
            o.precision or "fp32",
            size=(h, w),
            output=TIMED_OUTPUTS[output],
            device=o.device,
        )
    else:
        path = export_path(model, (h, w), batch, output=output, opset=opset, options=o)
        runner = FileRunner(path, o.runtime, o.precision or "fp32", o.threads)
    if output == "argmax":
        return lambda x: upsample_argmax(runner(x), (h, w))
    return runner


def bench(
    model: nn.Module | str | os.PathLike,
    size: Sequence[int] = (512, 512),
    batch: int = 1,
    *,
    output: str = "logits",
    opset: int | None = None,
    warmup: int = 3,
    runs: int = 20,
    inputs: torch.Tensor | None = None,
    options: RunnerOptions | None = None,
    as_predict: bool = False,
    **option_fields: Any,
) -> dict[str, Any]:
    """Time one path; returns a result dict (latencies, images/s, peak memory, what was timed).

    ``model`` may be an exported file: then its own size, optimisation and precision are timed
    (``precision`` may switch an OpenVINO file between fp32 and bf16). ``as_predict``: the runner
    predict builds (see :func:`make_runner`; without a runtime, the measured default path); the
    result names the path it ran and why."""
    o = RunnerOptions.of(options, **option_fields)
    if o.threads:
        torch.set_num_threads(o.threads)
    if is_exported(model):
        _meta, info = exported_facts(model)
        name, size = str(model), info.input_size
        o = o.replace(
            runtime=o.runtime or EXPORTED_SUFFIXES[Path(model).suffix],
            optimize=info.optimize,
            precision=o.precision or info.precision,
        )
        if info.batch:
            batch = info.batch
    else:
        name = model_meta(model).name
        if not as_predict:
            o = o.replace(runtime=o.runtime or "torch", precision=o.precision or "fp32")
    run = make_runner(model, size, batch, output=output, opset=opset, options=o, as_predict=as_predict)
    x = inputs if inputs is not None else torch.randn(batch, 3, int(size[0]), int(size[1]))
    x = x.to(o.device)
    sync = torch.cuda.synchronize if o.device == "cuda" else None
    if o.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = time_fn(lambda: run(x), warmup, runs, sync)
    mem = round(torch.cuda.max_memory_allocated() / 2**20, 1) if o.device == "cuda" else peak_rss_mb()
    return {
        "model": name,
        "size": f"{int(size[0])}x{int(size[1])}",
        "batch": batch,
        "runtime": run.runtime if as_predict else o.runtime,
        "optimize": o.optimize,
        "precision": run.precision if as_predict else o.precision,
        **({"why": run.why} if as_predict else {}),
        "output": output,
        **summarize(times, batch),
        "peak_mem_mb": mem,
        "peak_mem_kind": "cuda max allocated" if o.device == "cuda" else "process peak RSS",
        "times_ms": [round(t * 1e3, 3) for t in times],
    }


# --------------------------------------------------------------------------------------------------
# Timing in fresh processes
# --------------------------------------------------------------------------------------------------
def bench_in_fresh_process(spec: dict[str, Any]) -> dict[str, Any]:
    """:func:`bench` for one path, run by a new Python process: no thread pool (OpenMP, ONNX
    Runtime) or memory of this process affects it, and its peak memory is its own.

    ``spec``: ``model`` (registered name or exported file), ``num_classes``, optional ``weights``,
    ``size``, ``batch``, ``warmup``, ``runs``, ``output``, optional ``opset`` and ``options``: the
    path as :class:`~lightseg.deploy.options.RunnerOptions` fields (``runtime``, ``precision``,
    ``optimize``, ``threads``, ``device``, ``calibration``, ``calibration_count``, ``cache_dir``).
    The parent exports (and calibrates) first, so the child finds its graph in ``cache_dir``.
    """
    cmd = [sys.executable, "-m", "lightseg.deploy.bench", json.dumps(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        path = {**spec.get("options", {}), "output": spec.get("output")}
        what = " ".join(f"{k}={v}" for k, v in path.items() if v is not None and k != "cache_dir")
        raise RuntimeError(f"benchmarking {spec['model']} ({what}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_isolated(
    specs: dict[str, dict[str, Any]], rounds: int = 1, log: Callable[[str], None] | None = None
) -> dict[str, dict[str, Any]]:
    """Every spec (see :func:`bench_in_fresh_process`) timed in ``rounds`` fresh processes, each
    doing its share of ``spec["runs"]``, the order of the specs reversed every other round so that
    drift in machine load hits all alike. Returns label -> result over all runs (peak memory:
    the largest of its processes)."""
    labels = list(specs)
    parts: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
    for r in range(rounds):
        for label in labels if r % 2 == 0 else labels[::-1]:
            spec = specs[label]
            parts[label].append(bench_in_fresh_process(dict(spec, runs=-(-spec["runs"] // rounds))))
            if log:
                log(f"round {r + 1}/{rounds}: {label}")
    merged = {}
    for label, results in parts.items():
        times_ms = [t for res in results for t in res["times_ms"]]
        merged[label] = results[0] | {
            **summarize([t / 1e3 for t in times_ms], results[0]["batch"]),
            "peak_mem_mb": max(res["peak_mem_mb"] for res in results),
            "times_ms": times_ms,
        }
    return merged


def _bench_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The child side of :func:`bench_in_fresh_process`."""
    model: Any = spec["model"]
    if not is_exported(model):
        torch.manual_seed(0)  # random-init weights are the same in every process
        model = load_model(model, spec.get("weights"), spec.get("num_classes"))
    return bench(
        model,
        spec["size"],
        spec.get("batch", 1),
        output=spec.get("output", "logits"),
        opset=spec.get("opset"),
        warmup=spec["warmup"],
        runs=spec["runs"],
        options=RunnerOptions.from_dict(spec.get("options", {})),
        as_predict=spec.get("as_predict", False),
    )


# --------------------------------------------------------------------------------------------------
# The measured default path (lightseg bench --auto)
# --------------------------------------------------------------------------------------------------
def auto_decision(
    model: nn.Module,
    size: Sequence[int],
    options: RunnerOptions | None = None,
    image: str | os.PathLike | None = None,
    remeasure: bool = False,
) -> Decision:
    """The default path of ``model`` at ``size`` (padded to its size divisor, as predict pads) on
    this machine: the cached decision, else measured now (:mod:`lightseg.deploy.autoselect`). The
    probe is ``image`` resized to ``size``, else :func:`~lightseg.deploy.autoselect.synthetic_probe`
    (a decision made on it is not used by predict, which decides on its own first image)."""
    options = options or RunnerOptions()
    h, w = int(size[0]), int(size[1])
    if image is not None:
        rgb = np.asarray(Image.fromarray(read_image(Path(image))).resize((w, h), Image.BILINEAR))
    else:
        rgb = synthetic_probe((h, w))
    meta = model_meta(model)
    mean = torch.tensor(meta.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(meta.std, dtype=torch.float32).view(1, 3, 1, 1)
    x = (torch.from_numpy(rgb.astype(np.float32)).permute(2, 0, 1)[None] - mean) / std
    x = pad_to_multiple(x, int(meta.size_divisor)).to(options.device)
    kind = "given image" if image is not None else "synthetic"
    decision, _ = decide(model, x, options, probe_kind=kind, remeasure=remeasure)
    return decision


def format_table(results: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of bench results."""
    cols = [
        "model",
        "size",
        "batch",
        "runtime",
        "optimize",
        "precision",
        "output",
        "median_ms",
        "min_ms",
        "max_ms",
        "images_per_s",
        "peak_mem_mb",
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in results]
    return "\n".join(lines)


if __name__ == "__main__":  # the child of bench_in_fresh_process
    print(json.dumps(_bench_spec(json.loads(sys.argv[1]))))
