"""CPU inference benchmark of CGRSeg-T (or any segmentor): every path side by side in one run.

Writes benchmarks/results/inference_cpu_<cpu>_<threads>t.{json,md}. Paths: eager unfused (the
reference structure), eager with BN folded + fixed attention biases, ONNX Runtime naive export
(model as it is) and optimised export, full-resolution labels (smart upsample-argmax and in-graph
argmax), bf16 eager, ORT static INT8 calibrated on real CamVid images (agreement with fp32 on
other CamVid images is reported; mIoU needs a trained model).

    python benchmarks/inference_cpu.py --threads 2 --runs 20
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lightseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from lightseg.engine.bench import bench, environment, format_table, make_runner
from lightseg.models import create_model

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "camvid"


def camvid_batches(names: list[str], size: tuple[int, int]) -> list[np.ndarray]:
    """Normalised 1 x 3 x H x W CamVid images resized to ``size`` (bilinear)."""
    mean, std = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)
    out = []
    for n in names:
        img = Image.open(DATA / "test" / n).convert("RGB").resize((size[1], size[0]), Image.BILINEAR)
        x = (np.asarray(img, np.float32) - mean) / std
        out.append(x.transpose(2, 0, 1)[None].copy())
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="cgrseg_t")
    p.add_argument("--num-classes", type=int, default=150)
    p.add_argument("--size", type=int, nargs=2, default=(512, 512))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--calib", type=int, default=16, help="CamVid test images for INT8 calibration")
    p.add_argument("--no-int8", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=args.num_classes).eval()
    size = tuple(args.size)
    common = dict(threads=args.threads, warmup=args.warmup, runs=args.runs)
    rows = [
        ("eager, unfused (reference structure)", dict(runtime="torch", optimize="none", output="logits")),
        ("eager, BN folded + fixed biases", dict(runtime="torch", optimize="fold-bn", output="logits")),
        (
            "eager, folded, bf16 autocast",
            dict(runtime="torch", optimize="fold-bn", output="logits", precision="bf16"),
        ),
        ("ORT, naive export", dict(runtime="onnxruntime", optimize="none", output="logits")),
        ("ORT, optimised export", dict(runtime="onnxruntime", optimize="fold-bn", output="logits")),
        (
            "ORT, optimised + full-res labels (upsample_argmax)",
            dict(runtime="onnxruntime", optimize="fold-bn", output="argmax"),
        ),
        (
            "ORT, optimised + in-graph upsample+argmax",
            dict(runtime="onnxruntime", optimize="fold-bn", output="argmax-graph"),
        ),
        (
            "eager, folded + full-res labels (upsample_argmax)",
            dict(runtime="torch", optimize="fold-bn", output="argmax"),
        ),
        (
            "eager, folded + naive full-res logits",
            dict(runtime="torch", optimize="fold-bn", output="logits-full"),
        ),
    ]
    names = sorted(p.name for p in (DATA / "test").glob("*.png"))
    have_data = bool(names)
    calib = camvid_batches(names[: args.calib], size) if have_data else []
    if have_data and not args.no_int8:
        rows.append(
            (
                "ORT, optimised, static INT8 (CamVid-calibrated)",
                dict(
                    runtime="onnxruntime",
                    optimize="fold-bn",
                    output="logits",
                    precision="int8",
                    calibration=calib,
                ),
            )
        )
    results = []
    for label, kw in rows:
        r = bench(model, size, 1, **common, **kw)
        r["path"] = label
        results.append(r)
        print(f"{label:55s} {r['median_ms']:8.1f} ms", file=sys.stderr, flush=True)
    # Accuracy cost of reduced precision: label agreement with fp32 ORT on held-out CamVid images.
    agreement = {}
    if have_data:
        held = [torch.from_numpy(b) for b in camvid_batches(names[-8:], size)]
        ref_run = make_runner(
            model, size, runtime="onnxruntime", optimize="fold-bn", output="argmax", threads=args.threads
        )
        refs = [ref_run(x) for x in held]
        variants = {
            "bf16 (eager autocast)": dict(
                runtime="torch", optimize="fold-bn", output="argmax", precision="bf16"
            )
        }
        if not args.no_int8:
            variants["int8 (ORT static)"] = dict(
                runtime="onnxruntime",
                optimize="fold-bn",
                output="argmax",
                precision="int8",
                calibration=calib,
            )
        for name, kw in variants.items():
            run = make_runner(model, size, threads=args.threads, **kw)
            agree = np.mean([(run(x) == r).float().mean().item() for x, r in zip(held, refs)])
            agreement[name] = round(float(agree), 5)
    env = environment(args.threads)
    by = {r["path"]: r["median_ms"] for r in results}
    eager, naive, best_logits = by[rows[0][0]], by[rows[3][0]], min(by[rows[1][0]], by[rows[4][0]])
    summary = {
        "best_fp32_logits_ms": best_logits,
        "speedup_vs_naive_ort": round(naive / best_logits, 2),
        "speedup_vs_unfused_eager": round(eager / best_logits, 2),
        "full_res_labels_overhead": round(by[rows[5][0]] / by[rows[4][0]] - 1, 3),
        "reduced_precision_label_agreement_with_fp32": agreement,
        "note": "random-init weights (no trained model yet): speed is representative, label agreement is "
        "measured on CamVid test images, mIoU change is pending a trained model",
    }
    cpu = re.sub(r"[^A-Za-z0-9]+", "-", str(env.get("cpu", "cpu"))).strip("-").lower()[:40]
    out = ROOT / "benchmarks" / "results" / f"inference_cpu_{args.model}_{cpu}_{args.threads}t"
    payload = {
        "environment": env,
        "config": vars(args) | {"size": list(size)},
        "summary": summary,
        "results": results,
    }
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    table = format_table(results).replace("| model |", "| model |", 1)
    md = [
        f"# {args.model} CPU inference, {size[0]}x{size[1]}, batch 1, {args.threads} threads",
        "",
        " · ".join(f"{k}: {v}" for k, v in env.items()),
        "",
        table,
        "",
        "```",
        json.dumps(summary, indent=2),
        "```",
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
