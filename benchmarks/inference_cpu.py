"""CPU inference benchmark: every inference path of one model side by side in one run.

Four parts, timed side by side so that machine load hits every path alike (in one process, or with
``--isolate`` part A in one fresh process per path):

A. Speed: random-init weights, 150 classes, 512x512, batch 1. Eager unfused (the reference
   structure), eager with BN folded, eager bf16, the naive ONNX Runtime export
   (``torch.onnx.export`` defaults: with torch 2.13 opset 20 and the exporter's own graph
   optimisation), the same at opset 18 (GELU spelled ``Div/Erf/Add/Mul/Mul``, the default of older
   exporters), the optimised export (BN folded, fixed attention biases, opset 20 ``Gelu``), its
   static INT8 version, and OpenVINO on the optimised export in fp32, bf16 (inference precision
   hint) and INT8 (NNCF post-training quantisation). Speed-ups are computed against the naive export.
B. Full-resolution labels, with trained CamVid weights (``--weights``; the boundary-only
   ``upsample_argmax`` only pays off when labels form regions, which random weights never do):
   stride-8 logits vs. labels at 512x512 via ``upsample_argmax`` and via in-graph upsample+argmax,
   on a real CamVid test image; the same for the INT8 paths (ONNX Runtime, OpenVINO).
C. Accuracy cost of reduced precision, trained weights: mIoU on the 233 CamVid test images
   (480x360, ``lightseg.evaluation`` through the runners) for every runtime and precision.
D. INT8 calibration peak memory (``--calib`` CamVid train images at the timed size, each
   quantiser in its own process on an already exported fp32 graph; images streamed from disk).

Writes benchmarks/results/inference_cpu_<model>_<cpu>_<threads>t.{json,md}.

    python benchmarks/inference_cpu.py --isolate --threads 2 --runs 20 --weights <CamVid checkpoint>
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from lightseg.deploy.bench import (
    bench_isolated,
    environment,
    export_path,
    make_runner,
    summarize,
    time_interleaved,
)
from lightseg.deploy.calibration import CalibrationImages
from lightseg.deploy.options import RunnerOptions
from lightseg.deploy.runners import FileRunner
from lightseg.models import create_model

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LIGHTSEG_DATA", ROOT.parent / "shared" / "data")) / "camvid"

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
OV_FP32 = "OpenVINO, optimised export, fp32"
OV_BF16 = "OpenVINO, optimised export, bf16 inference precision"
OV_INT8 = "OpenVINO, NNCF INT8 (default PTQ, CamVid-calibrated)"
OV = {OV_FP32: "fp32", OV_BF16: "bf16", OV_INT8: "int8"}


def _names(split: str) -> list[str]:
    return sorted(p.name for p in (DATA / split).glob("*.png"))


def _calibration(n: int) -> dict[str, Any]:
    """INT8 calibration options: n CamVid *train* images spread over the split (never the test
    images that part C scores), streamed from disk."""
    return {"calibration": (str(DATA / "train"),), "calibration_count": n}


def speed_rows(calib, openvino: bool) -> list[tuple[str, dict[str, Any]]]:
    """Part A: (label, make_runner arguments) for the random-init model."""
    rows = [(label, dict(kw, output="logits")) for label, kw in FP32_ROWS]
    rows.append((BF16, dict(runtime="torch", optimize="fold-bn", precision="bf16", output="logits")))
    if calib:
        rows.append((INT8, dict(runtime="onnxruntime", precision="int8", output="logits", **calib)))
    if openvino:
        for label, precision in OV.items():
            if precision != "int8" or calib:
                kw = dict(runtime="openvino", precision=precision, output="logits")
                rows.append((label, kw | (calib if precision == "int8" else {})))
    # Worst case for full-resolution labels: untrained weights change the label at almost every
    # pixel, so upsample_argmax falls back to upsampling all K=150 maps.
    rows.append(
        (
            OPTIMISED + " + upsample_argmax (untrained: worst case)",
            dict(runtime="onnxruntime", output="argmax"),
        )
    )
    return rows


def full_res_rows(calib, openvino: bool) -> list[tuple[str, dict[str, Any]]]:
    """Part B: the trained model, stride-8 logits vs. full-resolution labels."""
    paths = [(OPTIMISED, dict(runtime="onnxruntime"))]
    if calib:
        paths.append((INT8, dict(runtime="onnxruntime", precision="int8", **calib)))
    if openvino:  # the fastest paths measured here; bf16 is the default where the CPU has AMX
        paths.append((OV_BF16, dict(runtime="openvino", precision="bf16")))
        if calib:
            paths.append((OV_INT8, dict(runtime="openvino", precision="int8", **calib)))
    rows = []
    for label, q in paths:
        rows += [(label, dict(q, output="logits")), (label + " + upsample_argmax", dict(q, output="argmax"))]
        if label == OPTIMISED:
            rows.append((label + ", in-graph upsample+argmax (uint8)", dict(q, output="argmax-graph")))
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


def time_paths(parts, size, threads: int, warmup: int, runs: int, cache: str) -> list[list[dict[str, Any]]]:
    """Build every runner first, then time them in rotating blocks of 5 runs (``time_interleaved``),
    so that a drift in machine load hits every path alike. ``parts``: [(model, input, rows), ...].
    Exported graphs go to ``cache`` (keyed by content: an ``argmax`` row reuses its ``logits`` file)."""
    fns, meta = {}, {}
    for p, (model, x, rows) in enumerate(parts):
        for label, kw in rows:
            kw = {"optimize": "fold-bn", "precision": "fp32", **kw}
            run = make_runner(model, size, 1, threads=threads, cache_dir=cache, **kw)
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


def time_isolated(args, model, rows, size, cache: str) -> list[dict[str, Any]]:
    """Part A with every path timed in its own fresh process (``--isolate``): no thread pool of one
    path (OpenMP, ONNX Runtime, OpenVINO) is alive while another is timed. The graphs are exported
    (and quantised) once into ``cache`` first; then ``--rounds`` rounds run one process per path, the
    order reversed every other round so that drift in machine load hits all paths alike
    (:func:`lightseg.deploy.bench.bench_isolated`)."""
    for _, kw in rows:
        if kw["runtime"] != "torch":
            export_path(model, size, 1, cache_dir=cache, **kw)
    specs = {
        label: {
            "model": args.model,
            "num_classes": args.num_classes,
            "size": list(size),
            "warmup": args.warmup + 1,
            "runs": args.runs,
            "output": kw["output"],
            "opset": kw.get("opset"),
            "options": RunnerOptions.of(
                threads=args.threads,
                cache_dir=cache,
                **{k: v for k, v in kw.items() if k not in ("output", "opset")},
            ).to_dict(),
        }
        for label, kw in rows
    }
    timed = bench_isolated(specs, args.rounds, log=lambda line: print(line, file=sys.stderr, flush=True))
    return [result_row(label, kw, [t / 1e3 for t in timed[label]["times_ms"]], size) for label, kw in rows]


def accuracy_part(
    model, threads: int, n_images: int, calib_n: int, openvino: bool, cache: str
) -> dict[str, Any]:
    """mIoU on CamVid test (480x360 -> padded 384x480) per runtime and precision, and its change vs.
    eager fp32. Every exported path runs through :class:`lightseg.deploy.runners.FileRunner`."""
    from lightseg.config import EvalConfig
    from lightseg.data import build_dataset
    from lightseg.data.transforms import build_eval_transform
    from lightseg.evaluation import evaluate
    from lightseg.fuse import optimize_for_inference

    ds = build_dataset("camvid", str(DATA), "test", transform=build_eval_transform(scale=(480, 360)))
    if n_images:
        ds = torch.utils.data.Subset(ds, range(min(n_images, len(ds))))
        ds.num_classes, ds.ignore_index, ds.classes = 11, 255, None
    cfg = EvalConfig(mode="whole")
    d = int(model.size_divisor)
    h, w = -(-360 // d) * d, -(-480 // d) * d
    calib = _calibration(calib_n)

    def runner(runtime: str, precision: str) -> FileRunner:
        kw = calib if precision == "int8" else {}
        path = export_path(model, (h, w), runtime=runtime, precision=precision, cache_dir=cache, **kw)
        return FileRunner(path, runtime, precision, threads)

    folded = optimize_for_inference(model, "fold-bn", size=(h, w))
    variants = {
        "eager fp32": (model, None),
        "ORT fp32 (optimised export)": (runner("onnxruntime", "fp32"), None),
        "ORT INT8 (static, convs)": (runner("onnxruntime", "int8"), None),
        "eager bf16 autocast (BN folded)": (folded, torch.bfloat16),
    }
    if openvino:
        variants |= {
            "OpenVINO fp32": (runner("openvino", "fp32"), None),
            "OpenVINO bf16": (runner("openvino", "bf16"), None),
            "OpenVINO INT8 (NNCF)": (runner("openvino", "int8"), None),
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


CALIB_CHILD = """
import json, sys
from lightseg.deploy.bench import peak_rss_mb
from lightseg.deploy.calibration import CalibrationImages
from lightseg.deploy.export_onnx import quantize_onnx_int8
from lightseg.deploy.export_openvino import quantize_openvino_int8
kind, src, dst, data, n, h, w = sys.argv[1:]
before = peak_rss_mb()
calib = CalibrationImages([data], (int(h), int(w)), (123.675, 116.28, 103.53), (58.395, 57.12, 57.375), int(n))
if kind == "onnxruntime":
    quantize_onnx_int8(src, dst, calib)
else:
    import openvino as ov
    ov.save_model(quantize_openvino_int8(ov.Core().read_model(src), calib), dst)
print(json.dumps({"images": len(calib), "peak_rss_mb": peak_rss_mb(), "rss_before_mb": before}))
"""


def calibration_memory(model, size, n: int, openvino: bool) -> dict[str, Any]:
    """Part D: peak resident memory (VmHWM) of a fresh process that quantises an already exported
    fp32 graph on ``n`` CamVid train images at ``size``: ONNX Runtime's static INT8 and NNCF."""
    import subprocess

    from lightseg.deploy.export_onnx import export_onnx

    tmp = Path(tempfile.mkdtemp(prefix="lightseg-calib-"))
    src = export_onnx(model, tmp / "fp32.onnx", size)
    out: dict[str, Any] = {"images": n, "size": f"{size[0]}x{size[1]}"}
    for kind, dst in (("onnxruntime", "q.onnx"), ("openvino", "q.xml")):
        if kind == "openvino" and not openvino:
            continue
        argv = [
            sys.executable,
            "-c",
            CALIB_CHILD,
            kind,
            str(src),
            str(tmp / dst),
            str(DATA / "train"),
            str(n),
            *map(str, size),
        ]
        t = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, check=True)
        out[kind] = json.loads(done.stdout.strip().splitlines()[-1]) | {
            "seconds": round(time.perf_counter() - t, 1)
        }
        print(f"calibration {kind}: {out[kind]}", file=sys.stderr, flush=True)
    return out


def _table(rows: list[dict[str, Any]]) -> str:
    cols = ["path", "precision", "output", "median_ms", "min_ms", "max_ms", "images_per_s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def targets(speed: list[dict], full: list[dict], acc: dict | None) -> dict[str, Any]:
    by = {r["path"]: r["median_ms"] for r in speed if r["output"] == "logits"}
    fp32 = {r["path"]: r["median_ms"] for r in speed if r["output"] == "logits" and r["precision"] == "fp32"}
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
        for label, key in (
            (INT8, "int8 + upsample_argmax"),
            (OV_BF16, "openvino bf16 + upsample_argmax"),
            (OV_INT8, "openvino int8 + upsample_argmax"),
        ):
            if label in f:
                s["full_res_label_overhead_trained"][key] = round(
                    f[label + " + upsample_argmax"] / f[label] - 1, 3
                )
    checks = {
        "best path >= 1.8x naive ORT": s["best_speedup_vs_naive_ort"] >= 1.8,
        "best fp32 path >= 1.5x naive ORT": s["best_fp32_speedup_vs_naive_ort"] >= 1.5,
        "best path >= 4x unfused eager": s["best_speedup_vs_unfused_eager"] >= 4,
    }
    if full:
        over = s["full_res_label_overhead_trained"]
        checks["full-res labels <= 10% over stride-8 logits (fp32, upsample_argmax)"] = (
            over["upsample_argmax"] <= 0.10
        )
    if acc:
        s["accuracy_camvid_test"] = acc
        # Each timed path's CamVid cost (part C names them by runtime and precision).
        cost = {
            INT8: "ORT INT8 (static, convs)",
            BF16: "eager bf16 autocast (BN folded)",
            OV_FP32: "OpenVINO fp32",
            OV_BF16: "OpenVINO bf16",
            OV_INT8: "OpenVINO INT8 (NNCF)",
        }
        ok = {
            p: ms
            for p, ms in by.items()
            if p not in cost or -acc.get(cost[p], {}).get("delta_mIoU", -99) <= 0.3
        }
        best_ok = min(ok, key=ok.get)
        s["best_within_0.3_mIoU"] = {
            "path": best_ok,
            "ms": by[best_ok],
            "speedup_vs_naive_ort": round(by[NAIVE] / by[best_ok], 2),
        }
        checks["best path costing <= 0.3 mIoU >= 1.8x naive ORT"] = by[NAIVE] / by[best_ok] >= 1.8
    s["checks"] = checks
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
    p.add_argument("--calib", type=int, default=32, help="CamVid train images for INT8 calibration")
    p.add_argument("--weights", default=None, help="trained CamVid checkpoint for parts B and C")
    p.add_argument("--eval-images", type=int, default=0, help="CamVid test images in part C (0: all 233)")
    p.add_argument("--no-int8", action="store_true")
    p.add_argument("--no-openvino", action="store_true", help="leave out the OpenVINO rows")
    p.add_argument("--no-accuracy", action="store_true")
    p.add_argument("--no-calib-memory", action="store_true", help="skip part D")
    p.add_argument("--note", default="", help="free text stored with the results (e.g. machine load)")
    p.add_argument("--isolate", action="store_true", help="time each part-A path in its own process")
    p.add_argument("--rounds", type=int, default=4, help="with --isolate: processes per path")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    size = tuple(args.size)
    openvino = not args.no_openvino and importlib.util.find_spec("openvino") is not None
    cache = tempfile.mkdtemp(prefix="lightseg-bench-")
    load = {"before": os.getloadavg()[0]}
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=args.num_classes).eval()
    have_data = bool(_names("train")) and not args.no_int8
    calib = _calibration(args.calib) if have_data else None
    x = torch.randn(1, 3, *size)
    parts = [] if args.isolate else [(model, x, speed_rows(calib, openvino))]
    trained, acc, calib_mem = None, None, None
    if args.weights:
        from lightseg import load_checkpoint

        trained = load_checkpoint(args.weights).eval()
        first_test = CalibrationImages([DATA / "test"], size, trained.meta.mean, trained.meta.std, 1)
        image = torch.from_numpy(next(iter(first_test)))  # a real CamVid test image, normalised
        parts.append((trained, image, full_res_rows(calib, openvino)))
    timed = time_paths(parts, size, args.threads, args.warmup, args.runs, cache)
    if args.isolate:
        timed.insert(0, time_isolated(args, model, speed_rows(calib, openvino), size, cache))
    speed, full = timed[0], (timed[1] if args.weights else [])
    if trained is not None and not args.no_accuracy:
        acc = accuracy_part(trained, args.threads, args.eval_images, args.calib, openvino, cache)
    if have_data and not args.no_calib_memory:
        calib_mem = calibration_memory(model, size, args.calib, openvino)
    load["after"] = os.getloadavg()[0]
    env = environment(args.threads) | {"loadavg_1min": load}
    summary = targets(speed, full, acc)
    if calib_mem:
        summary["int8_calibration_memory"] = calib_mem
    h, w = size
    cpu = re.sub(r"[^A-Za-z0-9]+", "-", str(env.get("cpu", "cpu"))).strip("-").lower()[:40]
    cpu += "-amx" if "amx_bf16" in env.get("cpu_features", ()) else ""  # same name, other kernels
    stem = f"inference_cpu_{args.model}_{cpu}_{args.threads}t" + (f"_{h}x{w}" if size != (512, 512) else "")
    out = ROOT / "benchmarks" / "results" / stem
    payload = {
        "environment": env,
        "config": vars(args) | {"size": list(size)},
        "summary": summary,
        "speed_random_init": speed,
        "full_res_trained": full,
    }
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    md = [
        f"# {args.model} CPU inference, {h}x{w}, batch 1, {args.threads} threads",
        "",
        " · ".join(f"{k}: {v}" for k, v in env.items()) + (f" · note: {args.note}" if args.note else ""),
        "",
        f"Produced by `{command_line(args)}`; " + how_timed(args),
        "`output`: `logits` = N x K x H/8 x W/8 logits; `argmax` = H x W labels via "
        "`upsample_argmax` on the stride-8 logits (timed); `argmax-graph` = uint8 labels computed in "
        "the ONNX graph (Resize + ArgMax). No GPU here: GPU figures are not measured.",
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
    if calib_mem:
        md += [f"## D. INT8 calibration peak memory, {calib_mem['images']} images at {calib_mem['size']}", ""]
        md += ["| quantiser | peak RSS (MiB) | RSS after imports (MiB) | seconds |", "|---|---|---|---|"]
        md += [
            f"| {k} | {v['peak_rss_mb']} | {v['rss_before_mb']} | {v['seconds']} |"
            for k, v in calib_mem.items()
            if isinstance(v, dict)
        ]
        md += [""]
    md += ["## Summary", "", "```", json.dumps(summary, indent=2), "```", ""]
    out.with_suffix(".md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
