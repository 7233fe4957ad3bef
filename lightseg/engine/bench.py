"""Latency benchmarks (``lightseg bench``) and the ``lightseg export`` verb.

Every result says what the timed graph contains (``output``):
- ``logits``: the model's logits at its output stride (8 for CGRSeg), nothing else;
- ``logits-full``: plus bilinear upsampling to the input size (K x H x W);
- ``argmax``: uint8/int64 labels at full resolution = argmax of ``logits-full``; with
  ``runtime=onnxruntime`` the graph returns stride-s logits and labels come from
  :func:`lightseg.engine.predict.upsample_argmax` (timed), in-graph argmax is ``argmax-graph``.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightseg.engine.predict import RUNTIMES, upsample_argmax
from lightseg.errors import ConfigError, InputError

OUTPUTS = ("logits", "logits-full", "argmax", "argmax-graph")


def environment(threads: int | None = None, device: str = "cpu") -> dict[str, Any]:
    """Hardware and versions recorded with every result."""
    env: dict[str, Any] = {
        "device": device,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": threads or torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            env["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
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


def onnx_graph(
    model: nn.Module,
    size: Sequence[int],
    batch: int = 1,
    *,
    optimize: str = "fold-bn",
    output: str = "logits",
    precision: str = "fp32",
    onnx_path: str | os.PathLike | None = None,
    calibration: Sequence[Any] | None = None,
    opset: int | None = None,
) -> Path:
    """The ONNX file that :func:`make_runner` runs for an ``onnxruntime`` path, exported (and
    quantised) unless it is already in ``onnx_path``; see there for the arguments. A parent that
    times paths in fresh processes calls this once per path, so that the children only run."""
    from lightseg.engine.export import export_onnx, quantize_onnx_int8

    if output not in OUTPUTS:
        raise ConfigError(f"output must be one of {', '.join(OUTPUTS)}; got {output!r}")
    if precision not in ("fp32", "int8"):
        raise ConfigError(f"onnxruntime precision must be fp32 or int8, got {precision!r}")
    h, w = int(size[0]), int(size[1])
    graph_out = {"argmax": "logits", "argmax-graph": "argmax"}.get(output, output)
    name = getattr(model, "model_name", type(model).__name__)
    suffix = f"_opset{opset}" if opset else ""
    path = (
        Path(onnx_path or tempfile.mkdtemp(prefix="lightseg-bench-"))
        / f"{name}_{h}x{w}_b{batch}_{optimize}_{graph_out}{suffix}.onnx"
    )
    naive = optimize == "none"
    if not path.is_file():
        export_onnx(
            model,
            path,
            (h, w),
            batch=batch,
            output=graph_out,
            optimize="none" if naive else "fold-bn",
            # naive: torch.onnx.export's defaults (opset 20 with torch 2.13)
            opset=opset or (None if naive else 20),
        )
    if precision == "fp32":
        return path
    int8_path = path.with_name(path.stem + "_int8.onnx")
    if not int8_path.is_file():
        if not calibration:
            raise ConfigError("precision int8 needs calibration images")
        quantize_onnx_int8(path, int8_path, calibration)
    return int8_path


def make_runner(
    model: nn.Module,
    size: Sequence[int],
    batch: int = 1,
    *,
    runtime: str = "torch",
    optimize: str = "fold-bn",
    output: str = "logits",
    threads: int | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    onnx_path: str | os.PathLike | None = None,
    calibration: Sequence[Any] | None = None,
    opset: int | None = None,
) -> Callable[[torch.Tensor], Any]:
    """A function ``run(x)`` computing ``output`` for a batch ``x`` with the chosen path.

    ``precision``: ``fp32``; ``bf16`` (torch CPU autocast); ``int8`` (ORT static INT8 calibrated on
    ``calibration``: N x 3 x H x W normalised real images). ``optimize`` for ORT: ``none`` exports
    the model as it is with ``torch.onnx.export``'s defaults (the naive baseline); anything else
    folds BN, fixes attention biases and exports at opset 20 (one ``Gelu`` op per GELU).
    ``opset`` overrides the ONNX opset of either export (benchmarks compare older spellings).
    ``onnx_path``: a directory for the exported files (default: a new temporary one); a file that
    is already there for this model, size and path is reused, so a benchmark can export once and
    time the graph in several processes.
    """
    from lightseg.engine.export import InferenceGraph, OrtRunner
    from lightseg.fuse import optimize_for_inference

    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
    if output not in OUTPUTS:
        raise ConfigError(f"output must be one of {', '.join(OUTPUTS)}; got {output!r}")
    h, w = int(size[0]), int(size[1])
    if runtime == "onnxruntime":
        path = onnx_graph(
            model,
            (h, w),
            batch,
            optimize=optimize,
            output=output,
            precision=precision,
            onnx_path=onnx_path,
            calibration=calibration,
            opset=opset,
        )
        ort = OrtRunner(path, threads=threads)
        if output == "argmax":
            return lambda x: upsample_argmax(torch.from_numpy(ort(x)), (h, w))
        return ort
    prepared = optimize_for_inference(model, optimize, size=(h, w) if optimize != "none" else None)
    graph = InferenceGraph(prepared, "logits" if output == "argmax" else output.replace("-graph", ""))
    graph = graph.to(device).eval()
    use_bf16 = precision == "bf16"
    if precision not in ("fp32", "bf16"):
        raise ConfigError(f"torch precision must be fp32 or bf16, got {precision!r}")

    @torch.no_grad()
    def run(x: torch.Tensor) -> Any:
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=use_bf16):
            y = graph(x)
        if output == "argmax":
            return upsample_argmax(y.float(), (h, w))
        return y

    return run


def bench(
    model: nn.Module,
    size: Sequence[int] = (512, 512),
    batch: int = 1,
    *,
    runtime: str = "torch",
    optimize: str = "fold-bn",
    output: str = "logits",
    threads: int | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    warmup: int = 3,
    runs: int = 20,
    inputs: torch.Tensor | None = None,
    **runner_kwargs: Any,
) -> dict[str, Any]:
    """Time one path; returns a result dict (latencies, images/s, peak memory, what was timed)."""
    if threads:
        torch.set_num_threads(threads)
    run = make_runner(
        model,
        size,
        batch,
        runtime=runtime,
        optimize=optimize,
        output=output,
        threads=threads,
        device=device,
        precision=precision,
        **runner_kwargs,
    )
    x = inputs if inputs is not None else torch.randn(batch, 3, int(size[0]), int(size[1]))
    x = x.to(device)
    sync = torch.cuda.synchronize if device == "cuda" else None
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = time_fn(lambda: run(x), warmup, runs, sync)
    mem = round(torch.cuda.max_memory_allocated() / 2**20, 1) if device == "cuda" else peak_rss_mb()
    return {
        "model": getattr(model, "model_name", type(model).__name__),
        "size": f"{int(size[0])}x{int(size[1])}",
        "batch": batch,
        "runtime": runtime,
        "optimize": optimize,
        "precision": precision,
        "output": output,
        **summarize(times, batch),
        "peak_mem_mb": mem,
        "peak_mem_kind": "cuda max allocated" if device == "cuda" else "process peak RSS",
        "times_ms": [round(t * 1e3, 3) for t in times],
    }


# --------------------------------------------------------------------------------------------------
# Timing in fresh processes
# --------------------------------------------------------------------------------------------------
def bench_in_fresh_process(spec: dict[str, Any]) -> dict[str, Any]:
    """:func:`bench` for one path, run by a new Python process: no thread pool (OpenMP, ONNX
    Runtime) or memory of this process affects it, and its peak memory is its own.

    ``spec``: ``model`` (registered name), ``num_classes``, optional ``weights``, ``size``,
    ``batch``, ``threads``, ``device``, ``warmup``, ``runs`` and ``runner``: the path as
    :func:`make_runner` keywords (``runtime``, ``optimize``, ``output``, ``precision``, ``opset``,
    ``onnx_path``). An INT8 graph must already be in ``onnx_path`` (the child does not calibrate).
    """
    cmd = [sys.executable, "-m", "lightseg.engine.bench", json.dumps(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        what = " ".join(f"{k}={v}" for k, v in spec["runner"].items() if k != "onnx_path")
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
    from lightseg.models.registry import create_model

    torch.manual_seed(0)  # random-init weights are the same in every process
    model = create_model(spec["model"], num_classes=spec["num_classes"], weights=spec.get("weights")).eval()
    return bench(
        model,
        spec["size"],
        spec.get("batch", 1),
        threads=spec.get("threads"),
        device=spec.get("device", "cpu"),
        warmup=spec["warmup"],
        runs=spec["runs"],
        **spec["runner"],
    )


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


# --------------------------------------------------------------------------------------------------
# CLI verbs
# --------------------------------------------------------------------------------------------------
def add_bench_args(p) -> None:
    p.add_argument("models", nargs="+", help="registered model names")
    p.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--num-classes", type=int, default=150)
    p.add_argument("--weights", default=None, help="weights to load (default: random init; speed only)")
    p.add_argument("--runtime", choices=RUNTIMES, nargs="+", default=["torch"])
    p.add_argument("--optimize", choices=["none", "fold-bn", "compile"], nargs="+", default=["fold-bn"])
    p.add_argument(
        "--output", choices=OUTPUTS, nargs="+", default=["logits"], help="what the timed graph returns"
    )
    p.add_argument("--precision", choices=["fp32", "bf16", "int8"], default="fp32")
    p.add_argument(
        "--calibration",
        nargs="+",
        default=None,
        metavar="IMAGES",
        help="images (files, folders, globs) to calibrate --precision int8 on; use real images of the domain",
    )
    p.add_argument("--calibration-count", type=int, default=16, help="at most this many calibration images")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.add_argument(
        "--no-isolate",
        dest="isolate",
        action="store_false",
        help="time every path in this process, one after another (default: each path in its own "
        "fresh process, so no thread pool or memory of one path affects another)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="processes per path, each doing its share of --runs, in alternating order (isolated mode)",
    )
    p.add_argument(
        "--onnx-dir",
        default=None,
        metavar="DIR",
        help="where exported ONNX files are written and reused (default: a temporary directory)",
    )


def image_batches(inputs: Sequence[str], size: Sequence[int], count: int = 16) -> list[Any]:
    """Up to ``count`` images from ``inputs`` (files, folders, globs; spread evenly over what is
    found), resized to ``size`` (bilinear) and normalised: 1 x 3 x H x W float32 arrays."""
    import numpy as np

    from lightseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from lightseg.engine.predict import collect_inputs, read_image

    items = [it for it in collect_inputs(inputs)[0] if it.kind == "image"]
    if not items:
        raise InputError(f"no calibration images among {' '.join(map(str, inputs))}")
    items = items[:: max(1, len(items) // count)][:count]
    mean, std = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)
    h, w = int(size[0]), int(size[1])
    out = []
    for it in items:
        img = read_image(it.path).resize((w, h), resample=2)  # 2 = PIL bilinear
        out.append(((np.asarray(img, np.float32) - mean) / std).transpose(2, 0, 1)[None].copy())
    return out


def run_bench(args, rest: list[str]) -> int:
    from lightseg.models.registry import create_model

    if args.runs < 1 or args.rounds < 1:
        raise ConfigError("--runs and --rounds must be at least 1")
    calibration = None
    if args.precision == "int8":
        if not args.calibration:
            raise ConfigError("--precision int8 needs --calibration IMAGES (real images to calibrate on)")
        calibration = image_batches(args.calibration, args.size, args.calibration_count)
    paths = [
        {"runtime": r, "optimize": o, "output": x}
        for r in args.runtime
        for o in args.optimize
        for x in args.output
    ]
    onnx_dir = args.onnx_dir or tempfile.mkdtemp(prefix="lightseg-bench-")
    common = {
        "threads": args.threads,
        "device": args.device,
        "precision": args.precision,
        "onnx_path": onnx_dir,
    }
    if calibration:
        common["calibration"] = calibration
    results, specs = [], {}
    for name in args.models:
        model = create_model(name, num_classes=args.num_classes, weights=args.weights).eval()
        for path in paths:
            if not args.isolate:
                results.append(
                    bench(model, args.size, args.batch, warmup=args.warmup, runs=args.runs, **common, **path)
                )
                continue
            if path["runtime"] == "onnxruntime":  # export (and quantise) here: the child only runs
                onnx_graph(
                    model,
                    args.size,
                    args.batch,
                    optimize=path["optimize"],
                    output=path["output"],
                    precision=args.precision,
                    onnx_path=onnx_dir,
                    calibration=calibration,
                )
            specs[f"{name} {' '.join(path.values())}"] = {
                "model": name,
                "num_classes": args.num_classes,
                "weights": args.weights,
                "size": list(args.size),
                "batch": args.batch,
                "threads": args.threads,
                "device": args.device,
                "warmup": args.warmup,
                "runs": args.runs,
                "runner": {**path, "precision": args.precision, "onnx_path": onnx_dir},
            }
    if specs:
        results = list(bench_isolated(specs, args.rounds).values())
    env = environment(args.threads, args.device)
    env["paths_timed"] = "each in its own process" if args.isolate else "in one process, one after another"
    if args.format == "json":
        print(json.dumps({"environment": env, "results": results}, indent=2))
    else:
        print(" · ".join(f"{k}: {v}" for k, v in env.items()))
        print(format_table(results))
    return 0


def add_export_args(p) -> None:
    p.add_argument("model", help="registered model name")
    p.add_argument("--weights", required=True, help="checkpoint file")
    p.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="classes of the weights (default: from the file, else 150)",
    )
    p.add_argument("--format", choices=["onnx", "pt2"], default="onnx")
    p.add_argument("--size", type=int, nargs=2, required=True, metavar=("H", "W"), help="static input size")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dynamic-batch", action="store_true")
    p.add_argument(
        "--output-argmax", action="store_true", help="graph returns uint8 labels at full resolution"
    )
    p.add_argument(
        "--output-full", action="store_true", help="graph returns logits upsampled to the input size"
    )
    p.add_argument("--no-fold", action="store_true", help="keep BatchNorm and dynamic attention biases")
    p.add_argument("-o", "--output", required=True, help="file to write")
    p.add_argument(
        "--check", action="store_true", help="run the ONNX file in ONNX Runtime and compare with eager"
    )


def run_export(args, rest: list[str]) -> int:
    from lightseg.engine.export import export_onnx, export_pt2
    from lightseg.engine.predict import load_model

    if args.output_argmax and args.output_full:
        raise ConfigError("choose one of --output-argmax and --output-full")
    model = load_model(args.model, args.weights, args.num_classes)
    output = "argmax" if args.output_argmax else "logits-full" if args.output_full else "logits"
    optimize = "none" if args.no_fold else "fold-bn"
    kw = dict(batch=args.batch, dynamic_batch=args.dynamic_batch, output=output, optimize=optimize)
    fn = export_onnx if args.format == "onnx" else export_pt2
    path = fn(model, args.output, args.size, **kw)
    print(
        f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, {args.format}, input {args.batch}x3x{args.size[0]}x{args.size[1]}, output {output})"
    )
    if args.check and args.format == "onnx":
        report = check_onnx(model, path, args.size, batch=args.batch, output=output)
        print(" · ".join(f"{k}: {v}" for k, v in report.items()))
        return 0 if report["ok"] else 1
    return 0


@torch.no_grad()
def check_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    size: Sequence[int],
    batch: int = 1,
    output: str = "logits",
    inputs: torch.Tensor | None = None,
    atol: float = 1e-4,
    min_agree: float = 0.999,
) -> dict[str, Any]:
    """Compare an exported file with the eager model (unfolded, dynamic biases) on ``inputs``.

    Returns max abs logit difference (for logit outputs), argmax agreement and ``ok`` under the
    tolerances (max abs diff <= ``atol``; argmax equal on >= ``min_agree`` of pixels).
    """
    from lightseg.engine.export import InferenceGraph, OrtRunner

    x = inputs if inputs is not None else torch.randn(batch, 3, int(size[0]), int(size[1]))
    got = torch.from_numpy(OrtRunner(path)(x))
    ref = InferenceGraph(model.eval(), "logits" if output == "argmax" else output)(x)
    ref_labels = (ref if output != "argmax" else InferenceGraph(model, "logits-full")(x)).argmax(1)
    if output == "argmax":
        agree = (got.long() == ref_labels).float().mean().item()
        return {"argmax_agree": round(agree, 6), "ok": agree >= min_agree}
    diff = (got - ref).abs().max().item()
    agree = (got.argmax(1) == ref.argmax(1)).float().mean().item()
    return {
        "max_abs_diff": f"{diff:.2e}",
        "argmax_agree": round(agree, 6),
        "ok": diff <= atol and agree >= min_agree,
    }


if __name__ == "__main__":  # the child of bench_in_fresh_process
    print(json.dumps(_bench_spec(json.loads(sys.argv[1]))))
