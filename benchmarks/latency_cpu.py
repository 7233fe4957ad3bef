"""Eager CPU latency of registered segmentors (default: CGRSeg-T/B/L) at 512x512, batch 1.

For each model: build (random init; weights do not change eager latency), eval mode,
``torch.inference_mode``, ``--warmup`` untimed runs, then ``--runs`` timed forward passes
(``time.perf_counter``), interleaved across models; median / min / max in milliseconds and the
median CPU time of all threads per run. The forward pass is the model's own
``forward`` (logits at the output stride), without resizing logits to the image size.

Writes ``benchmarks/results/latency_cpu_<cpu-model-or-hostname>.json`` and a Markdown table
beside it (``.md``), with the CPU model, thread count, torch version, date and the 1-minute
load average before and after (CPU timings drift with machine load: compare models measured
side by side in one run, not across files).

    python benchmarks/latency_cpu.py                      # CGRSeg-T/B/L, 2 threads
    python benchmarks/latency_cpu.py cgrseg_t frm_van_b0 --runs 30 --threads 4
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import socket
import statistics
import time
from pathlib import Path

import torch

from lightseg.models.build import create_model
from lightseg.models.registry import get_entry

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_MODELS = ("cgrseg_t", "cgrseg_b", "cgrseg_l")


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown-cpu"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def _load() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def _summary(name: str, times: list[float], cpu_times: list[float]) -> dict:
    return {
        "model": name,
        "median_ms": round(statistics.median(times), 1),
        "min_ms": round(min(times), 1),
        "max_ms": round(max(times), 1),
        # CPU time of all threads per run: the work done; on an idle machine latency is about
        # cpu_ms / threads, and a much larger wall time means the run waited for the CPU.
        "median_cpu_ms": round(statistics.median(cpu_times), 1),
        "runs_ms": [round(t, 1) for t in times],
    }


def time_models(
    names: list[str], size: tuple[int, int], warmup: int, runs: int, num_classes: int
) -> list[dict]:
    """Median/min/max eager latency (ms) of one forward pass of each model on a 1x3xHxW input.

    The timed runs are interleaved (model 1, model 2, ..., model 1, ...) so that a change of
    machine load during the benchmark hits every model alike and their ratios stay fair.
    """
    for name in names:
        if get_entry(name).kind != "segmentor":
            raise ValueError(f"{name!r} is a backbone; this benchmark times segmentors")
    torch.manual_seed(0)
    models = {name: create_model(name, num_classes=num_classes).eval() for name in names}
    x = torch.randn(1, 3, *size)
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu_times: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():
        for model in models.values():
            for _ in range(warmup):
                model(x)
        for _ in range(runs):
            for name, model in models.items():
                t0, c0 = time.perf_counter(), time.process_time()
                model(x)
                times[name].append((time.perf_counter() - t0) * 1e3)
                cpu_times[name].append((time.process_time() - c0) * 1e3)
    return [_summary(n, times[n], cpu_times[n]) for n in names]


def markdown(report: dict) -> str:
    h, w = report["size"]
    lines = [
        f"# Eager CPU latency, {h}x{w}, batch 1",
        "",
        f"CPU: {report['cpu_model']} ({report['host']}), {report['threads']} threads, "
        f"torch {report['torch']}, {report['date']}; {report['warmup']} warm-up + {report['runs']} timed runs.",
        f"Load average (1 min) before/after: {report['load_before']} / {report['load_after']}. "
        + report["note"],
        "",
        "| model | median (ms) | min (ms) | max (ms) | median CPU time, all threads (ms) |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['model']} | {r['median_ms']} | {r['min_ms']} | {r['max_ms']} | {r['median_cpu_ms']} |"
        for r in report["results"]
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*", default=list(DEFAULT_MODELS), help="registered segmentor names")
    p.add_argument("--size", type=int, nargs=2, default=[512, 512], metavar=("H", "W"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--num-classes", type=int, default=150)
    p.add_argument("--note", default="", help="free text stored with the results (e.g. machine load)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")

    torch.set_num_threads(args.threads)
    cpu = cpu_model()
    report = {
        "benchmark": "eager forward latency, batch 1",
        "host": socket.gethostname(),
        "cpu_model": cpu,
        "threads": args.threads,
        "torch": torch.__version__,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "size": list(args.size),
        "num_classes": args.num_classes,
        "warmup": args.warmup,
        "runs": args.runs,
        "load_before": _load(),
        "load_after": None,
        "note": args.note,
        "results": [],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"latency_cpu_{_slug(cpu if cpu != 'unknown-cpu' else socket.gethostname())}"
    report["results"] = time_models(args.models, tuple(args.size), args.warmup, args.runs, args.num_classes)
    report["load_after"] = _load()
    for r in report["results"]:
        print(
            f"{r['model']:24s} median {r['median_ms']:8.1f} ms  min {r['min_ms']:8.1f}  "
            f"max {r['max_ms']:8.1f}  CPU time {r['median_cpu_ms']:8.1f} ms"
        )
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
