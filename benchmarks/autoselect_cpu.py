"""The measured default path against every path it chose from, on this machine.

For each model (``--models``, default CGRSeg-T and FRM-B1, CamVid's 11 classes, random weights with
trained-like normalisation statistics: fresh LayerNorms tie FRM's polyphase picks, which no trained
model does), image size (512x512; CamVid's 480x360, padded to 384x480) and thread count (1, 2):

1. The decision, made fresh in a cache of this run: ``lightseg bench --auto CHECKPOINT --size H W
   --threads T --image <a CamVid test image> --onnx-dir CACHE --format json`` in its own process.
   Its export (once per model and size; the thread counts share the file) and its measurement
   (building, checking and timing the candidates) are timed: what a user's first image costs.
2. Every candidate the decision timed and the default path itself, each as predict builds it
   (``build_runner``: the candidates with their runtime and precision asked for, the default
   without, an ``AutoRunner`` reading the decision from the cache), plus eager torch with BN
   folded (the fallback, and the old default of ``lightseg serve``), each in its own fresh
   process, ``--rounds`` processes per path in alternating order
   (``lightseg.deploy.bench.bench_isolated``); the model's logits at the padded size, batch 1.

The machine is shared: the 1-minute load average is recorded before and after every row.
Writes ``benchmarks/results/autoselect_cpu_<cpu>_<cores>c.json`` and ``.md``.

    python benchmarks/autoselect_cpu.py
    python benchmarks/autoselect_cpu.py --models cgrseg_t --threads 2 --runs 12 --rounds 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LIGHTSEG_DATA", ROOT.parent / "shared" / "data"))
sys.path.insert(0, str(ROOT / "tests"))

from helpers import trained_like_norms  # noqa: E402
from serve_load import write_results  # noqa: E402

from lightseg import create_model, save_weights  # noqa: E402
from lightseg.data.camvid import CamVid  # noqa: E402
from lightseg.deploy.bench import bench_isolated, environment  # noqa: E402
from lightseg.deploy.cpu import cpu_name  # noqa: E402

SIZES = {"512x512": (512, 512), "480x360": (360, 480)}  # image H x W; padded to the size divisor


def load() -> float:
    return round(os.getloadavg()[0], 2)


def decide(checkpoint: Path, size, threads: int, image: Path, cache: Path) -> tuple[dict, float]:
    """The decision record from ``lightseg bench --auto`` in its own process, and its wall time."""
    cmd = [
        sys.executable,
        "-m",
        "lightseg.cli",
        "bench",
        "--auto",
        str(checkpoint),
        "--size",
        *map(str, size),
    ]
    cmd += ["--threads", str(threads), "--image", str(image), "--onnx-dir", str(cache), "--format", "json"]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{shlex.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)[0], round(wall, 1)


def specs(checkpoint: Path, name: str, padded, threads: int, cache: Path, decision: dict, args) -> dict:
    """The paths timed: each candidate of the decision, eager BN folded, and the default."""
    base = {
        "model": name,
        "weights": str(checkpoint),
        "num_classes": len(CamVid.CLASSES),
        "size": list(padded),
        "batch": 1,
        "warmup": 2,
        "output": "logits",
    }
    opts = {"threads": threads, "cache_dir": str(cache)}
    out = {}
    for m in decision["measurements"]:
        c = m["candidate"]
        label = f"{c['runtime']} {c['precision']}"
        path = opts | {"runtime": c["runtime"], "precision": c["precision"]}
        out[label] = base | {"runs": args.runs, "options": path, "as_predict": True}
    eager = opts | {"runtime": "torch", "precision": "fp32", "optimize": "fold-bn"}
    out["eager fp32, BN folded"] = base | {"runs": max(args.rounds, args.runs // 2), "options": eager}
    out["default"] = base | {"runs": args.runs, "options": opts, "as_predict": True}
    return out


def row(
    name: str, image_size: str, padded, threads: int, decision: dict, wall: float, timed: dict, loads
) -> dict:
    candidates = {k: v for k, v in timed.items() if k not in ("default", "eager fp32, BN folded")}
    eligible = {
        f"{m['candidate']['runtime']} {m['candidate']['precision']}"
        for m in decision["measurements"]
        if m["status"] not in ("rejected", "failed")
    }
    fastest = min(candidates, key=lambda k: candidates[k]["median_ms"])
    fastest_ok = min((k for k in candidates if k in eligible), key=lambda k: candidates[k]["median_ms"])
    default = timed["default"]
    return {
        "model": name,
        "image": image_size,
        "padded": f"{padded[0]}x{padded[1]}",
        "threads": threads,
        "chosen": f"{decision['chosen']['runtime']} {decision['chosen']['precision']}",
        "default_ran": f"{default['runtime']} {default['precision']}",
        "default_from_cache": "cached" in default.get("why", ""),
        "median_ms": {k: v["median_ms"] for k, v in timed.items()},
        "min_ms": {k: v["min_ms"] for k, v in timed.items()},
        "runs": {k: v["runs"] for k, v in timed.items()},
        "fastest": fastest,
        "fastest_eligible": fastest_ok,
        "default_vs_fastest": round(default["median_ms"] / candidates[fastest]["median_ms"], 3),
        "default_vs_fastest_eligible": round(default["median_ms"] / candidates[fastest_ok]["median_ms"], 3),
        "decision": {
            "export_s": decision["export_s"],
            "measure_s": decision["measure_s"],
            "process_wall_s": wall,
            "table": decision["measurements"],
            "why": decision["why"],
            "loadavg": decision["loadavg"],
        },
        "load_before": loads[0],
        "load_after": loads[1],
    }


def markdown(doc: dict) -> str:
    paths = ["onnxruntime fp32", "openvino fp32", "openvino bf16", "eager fp32, BN folded", "default"]
    lines = [
        f"# The measured default path on {doc['environment']['cpu']} ({doc['environment']['cpu_count']} cores)",
        "",
        f"{doc['date']}; torch {doc['environment']['torch']}, onnxruntime {doc['environment'].get('onnxruntime')}, "
        f"openvino {doc['environment'].get('openvino')}; CPU features {', '.join(doc['environment']['cpu_features'])}.",
        f"Median ms of the logits at the padded size, batch 1, each path in its own process, {doc['rounds']} "
        "processes per path in alternating order; random weights with trained-like normalisation statistics, "
        "11 classes. The machine is shared with other work: 1-minute load averages per row.",
        "",
        "| model | image (padded) | threads | " + " | ".join(paths) + " | default ran | default / fastest "
        "| first use: export + measurement (s) | load before/after |",
        "|---|---|---|" + "---|" * len(paths) + "---|---|---|---|",
    ]
    for r in doc["rows"]:
        cells = [str(r["median_ms"].get(p, "-")) for p in paths]
        cells = [f"**{c}**" if p == r["fastest"] else c for p, c in zip(paths, cells)]
        ratio = f"{r['default_vs_fastest']:.2f}" + (
            f" ({r['default_vs_fastest_eligible']:.2f} of the fastest kept)"
            if r["fastest"] != r["fastest_eligible"]
            else ""
        )
        d = r["decision"]
        lines.append(
            f"| {r['model']} | {r['image']} ({r['padded']}) | {r['threads']} | "
            + " | ".join(cells)
            + f" | {r['default_ran']}{'' if r['default_from_cache'] else ' (not from the cache!)'} | {ratio} "
            f"| {d['export_s']} + {d['measure_s']} | {r['load_before']} / {r['load_after']} |"
        )
    lines += ["", "What each decision measured (its own timings, within its budget):", ""]
    for r in doc["rows"]:
        lines.append(f"- {r['model']} {r['image']}, {r['threads']} threads: {r['decision']['why']}")
    lines += ["", f"Command: `{doc['command']}`", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["cgrseg_t", "frm_van_b1"])
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--runs", type=int, default=16, help="timed runs per path (split over --rounds processes)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--note", default="")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    probe = sorted((DATA / "camvid" / "test").glob("*.png"))[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="autoselect-") as tmp:
        cache = Path(tmp) / "cache"
        for name in args.models:
            torch.manual_seed(0)
            model = trained_like_norms(create_model(name, num_classes=len(CamVid.CLASSES)))
            checkpoint = save_weights(model, Path(tmp) / f"{name}.safetensors")
            divisor = int(model.meta.size_divisor)
            for image_size in args.sizes:
                h, w = SIZES[image_size]
                padded = (-(-h // divisor) * divisor, -(-w // divisor) * divisor)
                image = probe
                if (h, w) != (360, 480):  # the probe at the timed size (predict's first input would be)
                    image = Path(tmp) / f"probe_{h}x{w}.png"
                    Image.open(probe).convert("RGB").resize((w, h), Image.BILINEAR).save(image)
                for threads in args.threads:
                    before = load()
                    decision, wall = decide(checkpoint, (h, w), threads, image, cache)
                    timed = bench_isolated(
                        specs(checkpoint, name, padded, threads, cache, decision, args), args.rounds
                    )
                    rows.append(
                        row(name, image_size, padded, threads, decision, wall, timed, (before, load()))
                    )
                    print(
                        json.dumps(
                            {k: rows[-1][k] for k in ("model", "image", "threads", "chosen", "median_ms")}
                        ),
                        flush=True,
                    )
    doc = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "environment": environment(),
        "rounds": args.rounds,
        "runs": args.runs,
        "note": args.note,
        "command": shlex.join(["python", "benchmarks/autoselect_cpu.py", *sys.argv[1:]]),
        "rows": rows,
    }
    stem = (
        args.out
        or f"autoselect_cpu_{re.sub(r'[^a-z0-9]+', '-', cpu_name().lower()).strip('-')}_{os.cpu_count()}c"
    )
    write_results(stem, doc, markdown(doc))


if __name__ == "__main__":
    main()
