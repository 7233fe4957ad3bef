"""CPU inference benchmark of CGRSeg-T: every inference path side by side in one run (issue 6).

Three parts, timed side by side so that machine load hits every path alike (in one process, or with
``--isolate`` part A in one fresh process per path):

A. Speed, the issue's setting: random-init weights, 150 classes, 512x512, batch 1. Eager unfused
   (the reference structure), eager with BN folded, bf16, the naive ONNX Runtime export
   (``torch.onnx.export`` defaults: with torch 2.13 opset 20 and the exporter's own graph
   optimisation), the same at opset 18 (GELU spelled ``Div/Erf/Add/Mul/Mul``, the default of older
   exporters), the optimised export (BN folded, fixed attention biases, opset 20 ``Gelu``) and its
   static INT8 version. The speed-up targets are computed against the opset-20 naive export.
B. Full-resolution labels, with trained CamVid weights (``--weights``; the boundary-only
   ``upsample_argmax`` only pays off when labels form regions, which random weights never do):
   stride-8 logits vs. labels at 512x512 via ``upsample_argmax`` and via in-graph upsample+argmax,
   on a real CamVid test image.
C. Accuracy cost of reduced precision, trained weights: mIoU on the 233 CamVid test images
   (480x360, ``lightseg.engine.evaluate``) for eager fp32, ORT fp32, ORT INT8 and eager bf16.

Writes benchmarks/results/inference_cpu_<model>_<cpu>_<threads>t.{json,md}.

    cp runs/cgrseg-t_camvid-360x480_cpu/last.pt /tmp/camvid.pt
    python benchmarks/inference_cpu.py --threads 2 --runs 20 --weights /tmp/camvid.pt
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightseg.engine.bench import (
    bench_isolated,
    environment,
    image_batches,
    make_runner,
    onnx_graph,
    summarize,
    time_interleaved,
)
from lightseg.engine.predict import upsample_argmax
from lightseg.models import create_model

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "camvid"

# What each timed path is, in words (the first column of the committed table).
FP32_ROWS = [
    ("eager, unfused (reference structure)", dict(runtime="torch", optimize="none")),
    ("eager, BN folded + fixed attention biases", dict(runtime="torch", optimize="fold-bn")),
    ("ORT, naive export (torch.onnx.export defaults)", dict(runtime="onnxruntime", optimize="none")),
    (
        "ORT, naive export at opset 18 (GELU as Div/Erf/Add/Mul/Mul)",
        dict(runtime="onnxruntime", optimize="none", opset=18),
    ),
    ("ORT, optimised export (BN folded, opset-20 Gelu)", dict(runtime="onnxruntime", optimize="fold-bn")),
]
NAIVE, OPTIMISED = FP32_ROWS[2][0], FP32_ROWS[4][0]
EAGER = FP32_ROWS[0][0]
BF16 = "eager, BN folded, bf16 autocast"
INT8 = "ORT, optimised export, static INT8 (convs, CamVid-calibrated)"


def _names(split: str) -> list[str]:
    return sorted(p.name for p in (DATA / split).glob("*.png"))


def _calibration(n: int, size: tuple[int, int]) -> list[np.ndarray]:
    """INT8 calibration batches: n CamVid *train* images spread over the split (never the test
    images that part C scores)."""
    return image_batches([str(DATA / "train")], size, n)


def speed_rows(model, calib) -> list[tuple[str, dict[str, Any]]]:
    """Part A: (label, make_runner arguments) for the random-init model."""
    rows = [(label, dict(kw, output="logits")) for label, kw in FP32_ROWS]
    rows.append((BF16, dict(runtime="torch", optimize="fold-bn", precision="bf16", output="logits")))
    if calib:
        rows.append((INT8, dict(runtime="onnxruntime", precision="int8", calibration=calib, output="logits")))
    # Worst case for full-resolution labels: untrained weights change the label at almost every
    # pixel, so upsample_argmax falls back to upsampling all K=150 maps.
    rows.append(
        (
            OPTIMISED + " + upsample_argmax (untrained: worst case)",
            dict(runtime="onnxruntime", output="argmax"),
        )
    )
    return rows


def full_res_rows(calib) -> list[tuple[str, dict[str, Any]]]:
    """Part B: the trained model, stride-8 logits vs. full-resolution labels."""
    rows = [
        (OPTIMISED, dict(runtime="onnxruntime", output="logits")),
        (OPTIMISED + " + upsample_argmax", dict(runtime="onnxruntime", output="argmax")),
        (
            OPTIMISED + ", in-graph upsample+argmax (uint8)",
            dict(runtime="onnxruntime", output="argmax-graph"),
        ),
    ]
    if calib:
        q = dict(runtime="onnxruntime", precision="int8", calibration=calib)
        rows += [(INT8, dict(q, output="logits")), (INT8 + " + upsample_argmax", dict(q, output="argmax"))]
    return rows


def result_row(label: str, kw: dict[str, Any], times: list[float], size) -> dict[str, Any]:
    """One table row: what was timed and its latency summary."""
    return {
        "path": label,
        "precision": kw.get("precision", "fp32"),
        "output": kw["output"],
        "size": f"{size[0]}x{size[1]}",
        **summarize(times, 1),
    }


def time_paths(parts, size, threads: int, warmup: int, runs: int) -> list[list[dict[str, Any]]]:
    """Build every runner first, then time them in rotating blocks of 5 runs (``time_interleaved``),
    so that a drift in machine load hits every path alike. ``parts``: [(model, input, rows), ...]."""
    fns, meta = {}, {}
    for p, (model, x, rows) in enumerate(parts):
        ort_logits = {}  # ORT "argmax" = the "logits" graph + upsample_argmax: export it once
        for label, kw in rows:
            kw = {"optimize": "fold-bn", "precision": "fp32", **kw}
            key = tuple(
                sorted((k, v if isinstance(v, str) else id(v)) for k, v in kw.items() if k != "output")
            )
            if kw.get("runtime") == "onnxruntime" and kw["output"] == "argmax" and key in ort_logits:
                logits = ort_logits[key]
                run = lambda x, f=logits: upsample_argmax(torch.from_numpy(f(x)), size)  # noqa: E731
            else:
                run = make_runner(model, size, 1, threads=threads, **kw)
                if kw.get("runtime") == "onnxruntime" and kw["output"] == "logits":
                    ort_logits[key] = run
            fns[(p, label)] = lambda run=run, x=x: run(x)
            meta[(p, label)] = kw
            print(f"built: {label}", file=sys.stderr, flush=True)
    times = time_interleaved(fns, warmup, runs, block=5)
    out: list[list[dict[str, Any]]] = [[] for _ in parts]
    for (p, label), t in times.items():
        r = result_row(label, meta[(p, label)], t, size)
        out[p].append(r)
        print(f"{label:70s} {r['output']:13s} {r['median_ms']:8.1f} ms", file=sys.stderr, flush=True)
    return out


def time_isolated(args, rows, size) -> list[dict[str, Any]]:
    """Part A with every path timed in its own fresh process (``--isolate``): no thread pool of one
    path (OpenMP, ONNX Runtime) is alive while another is timed. The graphs are exported once into
    a shared directory first; then ``--rounds`` rounds run one process per path, the order reversed
    every other round so that drift in machine load hits all paths alike
    (:func:`lightseg.engine.bench.bench_isolated`)."""
    cache = tempfile.mkdtemp(prefix="lightseg-isolate-")
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=args.num_classes).eval()
    for _, kw in rows:
        if kw["runtime"] == "onnxruntime":  # export (and quantise) once, here
            onnx_graph(model, size, 1, onnx_path=cache, **{k: v for k, v in kw.items() if k != "runtime"})
    specs = {
        label: {
            "model": args.model,
            "num_classes": args.num_classes,
            "size": list(size),
            "threads": args.threads,
            "warmup": args.warmup + 1,
            "runs": args.runs,
            "runner": {k: v for k, v in kw.items() if k != "calibration"} | {"onnx_path": cache},
        }
        for label, kw in rows
    }
    timed = bench_isolated(specs, args.rounds, log=lambda line: print(line, file=sys.stderr, flush=True))
    return [result_row(label, kw, [t / 1e3 for t in timed[label]["times_ms"]], size) for label, kw in rows]


class _OrtLogits:
    """An ONNX file in the role of a segmentor for ``evaluate``: stride-8 logits, static size."""

    def __init__(self, runner, model: torch.nn.Module):
        self.runner, self.size_divisor, self.num_classes = runner, model.size_divisor, model.num_classes

    def eval(self) -> _OrtLogits:
        return self

    def train(self, mode: bool = True) -> _OrtLogits:
        return self

    training = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.runner(x))


def accuracy_part(model, threads: int, n_images: int, calib_n: int) -> dict[str, Any]:
    """mIoU on CamVid test (480x360 -> padded 384x480) per precision, and its change vs. fp32."""
    from lightseg.config import EvalConfig
    from lightseg.data import build_dataset
    from lightseg.data.transforms import build_eval_transform
    from lightseg.engine.evaluate import evaluate
    from lightseg.engine.export import OrtRunner, export_onnx, quantize_onnx_int8
    from lightseg.fuse import optimize_for_inference

    ds = build_dataset("camvid", str(DATA), "test", transform=build_eval_transform(scale=(480, 360)))
    if n_images:
        ds = torch.utils.data.Subset(ds, range(min(n_images, len(ds))))
        ds.num_classes, ds.ignore_index, ds.classes = 11, 255, None
    cfg = EvalConfig(mode="whole")
    d = int(model.size_divisor)
    h, w = -(-360 // d) * d, -(-480 // d) * d
    tmp = Path(tempfile.mkdtemp(prefix="lightseg-acc-"))
    fp32 = export_onnx(model, tmp / "fp32.onnx", (h, w))
    int8 = quantize_onnx_int8(fp32, tmp / "int8.onnx", _calibration(calib_n, (h, w)))
    folded = optimize_for_inference(model, "fold-bn", size=(h, w))
    variants = {
        "eager fp32": (model, None),
        "ORT fp32 (optimised export)": (_OrtLogits(OrtRunner(fp32, threads), model), None),
        "ORT INT8 (static, convs)": (_OrtLogits(OrtRunner(int8, threads), model), None),
        "eager bf16 autocast (BN folded)": (folded, torch.bfloat16),
    }
    out: dict[str, Any] = {"images": len(ds), "input": f"{h}x{w} (480x360 padded)"}
    for name, (m, amp) in variants.items():
        t = time.perf_counter()
        res = evaluate(m, ds, cfg, amp_dtype=amp, progress=False)
        out[name] = {"mIoU": round(res["mIoU"], 2), "aAcc": round(res["aAcc"], 2)}
        print(
            f"{name:40s} mIoU {res['mIoU']:.2f} ({time.perf_counter() - t:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    ref = out["eager fp32"]["mIoU"]
    for name in variants:
        out[name]["delta_mIoU"] = round(out[name]["mIoU"] - ref, 2)
    return out


def _table(rows: list[dict[str, Any]]) -> str:
    cols = ["path", "precision", "output", "median_ms", "min_ms", "max_ms", "images_per_s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def targets(speed: list[dict], full: list[dict], acc: dict | None) -> dict[str, Any]:
    by = {r["path"]: r["median_ms"] for r in speed if r["output"] == "logits"}
    fp32 = {k: v for k, v in by.items() if k in dict(FP32_ROWS)}
    best_fp32 = min(fp32, key=fp32.get)
    best = min(by, key=by.get)
    s: dict[str, Any] = {
        "naive_ort_ms": by[NAIVE],
        "unfused_eager_ms": by[EAGER],
        "best_fp32": {"path": best_fp32, "ms": by[best_fp32]},
        "best_fp32_speedup_vs_naive_ort": round(by[NAIVE] / by[best_fp32], 2),
        "best_fp32_speedup_vs_unfused_eager": round(by[EAGER] / by[best_fp32], 2),
        "best": {"path": best, "ms": by[best]},
        "best_speedup_vs_naive_ort": round(by[NAIVE] / by[best], 2),
        "best_speedup_vs_unfused_eager": round(by[EAGER] / by[best], 2),
    }
    if full:
        f = {r["path"]: r["median_ms"] for r in full}
        s["full_res_label_overhead_trained"] = {
            "upsample_argmax": round(f[OPTIMISED + " + upsample_argmax"] / f[OPTIMISED] - 1, 3),
            "in_graph_argmax": round(
                f[OPTIMISED + ", in-graph upsample+argmax (uint8)"] / f[OPTIMISED] - 1, 3
            ),
        }
        if INT8 in f:
            s["full_res_label_overhead_trained"]["int8 + upsample_argmax"] = round(
                f[INT8 + " + upsample_argmax"] / f[INT8] - 1, 3
            )
    met = {
        "best path >= 1.5x naive ORT": s["best_speedup_vs_naive_ort"] >= 1.5,
        "best path >= 4x unfused eager": s["best_speedup_vs_unfused_eager"] >= 4,
        "best fp32 path >= 1.5x naive ORT": s["best_fp32_speedup_vs_naive_ort"] >= 1.5,
        "best fp32 path >= 4x unfused eager": s["best_fp32_speedup_vs_unfused_eager"] >= 4,
    }
    if full:
        over = s["full_res_label_overhead_trained"]
        met["full-res labels <= 15% over stride-8 logits (fp32, upsample_argmax)"] = (
            over["upsample_argmax"] <= 0.15
        )
    s["targets_met"] = met
    if acc:
        s["accuracy_camvid_test"] = acc
    return s


def command_line(args) -> str:
    """The command that reproduces this run (the weights path stands for a CamVid checkpoint)."""
    cmd = (
        f"python benchmarks/inference_cpu.py --model {args.model} --threads {args.threads} --runs {args.runs}"
    )
    if args.isolate:
        cmd += f" --isolate --rounds {args.rounds}"
    if args.weights:
        cmd += " --weights <CamVid checkpoint>"
    return cmd + (" --no-accuracy" if args.no_accuracy else "")


def how_timed(args) -> str:
    blocks = (
        f"in rotating blocks of 5 runs, each block after {args.warmup} untimed runs "
        f"({args.runs} timed runs per path), so load drift hits all paths alike"
    )
    if not args.isolate:
        return f"every path built first, then timed in one process {blocks}."
    return (
        f"part A: every path timed in its own fresh process, {args.rounds} processes per path "
        f"(order reversed every other round), {args.warmup + 1} untimed then "
        f"{-(-args.runs // args.rounds)} timed runs each; part B: in one process {blocks}."
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="cgrseg_t")
    p.add_argument("--num-classes", type=int, default=150, help="classes of the random-init model (part A)")
    p.add_argument("--size", type=int, nargs=2, default=(512, 512))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2, help="untimed runs before each block of 5")
    p.add_argument("--calib", type=int, default=16, help="CamVid train images for INT8 calibration")
    p.add_argument("--weights", default=None, help="trained CamVid checkpoint for parts B and C")
    p.add_argument("--eval-images", type=int, default=0, help="CamVid test images in part C (0: all 233)")
    p.add_argument("--no-int8", action="store_true")
    p.add_argument("--no-accuracy", action="store_true")
    p.add_argument("--note", default="", help="free text stored with the results (e.g. machine load)")
    p.add_argument("--isolate", action="store_true", help="time each part-A path in its own process")
    p.add_argument("--rounds", type=int, default=4, help="with --isolate: processes per path")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    size = tuple(args.size)
    have_data = bool(_names("train")) and not args.no_int8
    calib = _calibration(args.calib, size) if have_data else []
    load = {"before": os.getloadavg()[0]}
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=args.num_classes).eval()
    x = torch.randn(1, 3, *size)
    parts = [] if args.isolate else [(model, x, speed_rows(model, calib))]
    trained, acc = None, None
    if args.weights:
        from lightseg import load_checkpoint

        trained = load_checkpoint(args.weights).eval()
        image = torch.from_numpy(image_batches([str(DATA / "test" / _names("test")[0])], size, 1)[0])
        parts.append((trained, image, full_res_rows(calib)))
    timed = time_paths(parts, size, args.threads, args.warmup, args.runs)
    if args.isolate:
        timed.insert(0, time_isolated(args, speed_rows(model, calib), size))
    speed, full = timed[0], (timed[1] if args.weights else [])
    if trained is not None and not args.no_accuracy:
        acc = accuracy_part(trained, args.threads, args.eval_images, args.calib)
    load["after"] = os.getloadavg()[0]
    env = environment(args.threads) | {"loadavg_1min": load}
    summary = targets(speed, full, acc)
    cpu = re.sub(r"[^A-Za-z0-9]+", "-", str(env.get("cpu", "cpu"))).strip("-").lower()[:40]
    out = ROOT / "benchmarks" / "results" / f"inference_cpu_{args.model}_{cpu}_{args.threads}t"
    payload = {
        "environment": env,
        "config": vars(args) | {"size": list(size)},
        "summary": summary,
        "speed_random_init": speed,
        "full_res_trained": full,
    }
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    h, w = size
    md = [
        f"# {args.model} CPU inference, {h}x{w}, batch 1, {args.threads} threads",
        "",
        " · ".join(f"{k}: {v}" for k, v in env.items()) + (f" · note: {args.note}" if args.note else ""),
        "",
        f"Produced by `{command_line(args)}`; " + how_timed(args),
        "`output`: `logits` = N x K x H/8 x W/8 logits; `argmax` = H x W labels via "
        "`upsample_argmax` on the stride-8 logits (timed); `argmax-graph` = uint8 labels computed in "
        "the ONNX graph (Resize + ArgMax).",
        "",
        f"## A. Speed, random-init weights, {args.num_classes} classes",
        "",
        _table(speed),
        "",
    ]
    if full:
        md += [
            f"## B. Full-resolution labels, trained CamVid weights ({trained.num_classes} classes), "
            "a CamVid test image",
            "",
            _table(full),
            "",
        ]
    if acc:
        md += ["## C. Accuracy cost of reduced precision: CamVid test mIoU (%)", ""]
        md += ["| path | mIoU | change vs eager fp32 | aAcc |", "|---|---|---|---|"]
        md += [
            f"| {k} | {v['mIoU']} | {v['delta_mIoU']:+.2f} | {v['aAcc']} |"
            for k, v in acc.items()
            if isinstance(v, dict)
        ]
        md += ["", f"{acc['images']} images, input {acc['input']}.", ""]
    md += ["## Summary", "", "```", json.dumps(summary, indent=2), "```", ""]
    out.with_suffix(".md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
