"""One table of the CamVid 480x360 results (issue 5): every ``camvid_*_<hardware>.json`` written by
``benchmarks/train_camvid.py``, with each model's parameters, GMACs and CPU latency at the size the
evaluation feeds it (480x360 padded to 384x480), measured side by side in this run.

    python benchmarks/camvid_table.py [--hardware cpu2-x86_64] [--threads 2] [--runs 20]

Latency: batch 1, random weights (they do not change the time), logits at the output stride; eager
PyTorch with BN folded and ONNX Runtime on the optimised export, all paths timed interleaved in
rotating blocks (``lightseg.deploy.bench.time_interleaved``) so load drift hits every model alike.
A results file's optional ``"note"`` is printed under the table. Writes
benchmarks/results/camvid_table_<hardware>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from lightseg.deploy.bench import environment, make_runner, summarize, time_interleaved
from lightseg.flops import count_all_conventions, count_params
from lightseg.models import create_model

RESULTS = Path(__file__).resolve().parent / "results"
EVAL_SIZE = (384, 480)  # CamVid 480x360 padded to a multiple of 32 by the evaluator
NUM_CLASSES = 11
PATHS = {
    "eager_ms": dict(runtime="torch", optimize="fold-bn"),
    "ort_ms": dict(runtime="onnxruntime", optimize="fold-bn"),
}


def load_results(hardware: str) -> list[dict[str, Any]]:
    """The training results for ``hardware``, best mIoU first."""
    files = sorted(RESULTS.glob(f"camvid_*_{hardware}.json"))
    rows = [json.loads(f.read_text()) | {"file": f.name} for f in files if "table" not in f.name]
    if not rows:
        raise SystemExit(
            f"no benchmarks/results/camvid_*_{hardware}.json: run benchmarks/train_camvid.py first"
        )
    return sorted(rows, key=lambda r: -r["mIoU"])


def initialisation(result: dict[str, Any]) -> str:
    model = result["config"]["model"]
    # Results written before model.pretrained existed recorded it among the constructor kwargs.
    pretrained = model.get("pretrained") or (model.get("kwargs") or {}).get("pretrained")
    if not pretrained:
        return "from scratch"
    return f"ImageNet ({model['name']}, {pretrained if isinstance(pretrained, str) else 'default'} weights)"


def model_costs(name: str) -> dict[str, float]:
    model = create_model(name, num_classes=NUM_CLASSES).eval()
    macs = count_all_conventions(model, EVAL_SIZE)
    return {
        "params_M": round(count_params(model) / 1e6, 2),
        "GMACs_paper": round(macs["paper"] / 1e9, 2),
        "GMACs_all": round(macs["all"] / 1e9, 2),
    }


def latencies(names: list[str], threads: int, runs: int) -> dict[str, dict[str, dict[str, float]]]:
    """Median/min/max ms per model and path, every (model, path) timed interleaved."""
    torch.set_num_threads(threads)
    x = torch.randn(1, 3, *EVAL_SIZE)
    fns = {}
    for name in names:
        model = create_model(name, num_classes=NUM_CLASSES).eval()
        for key, kw in PATHS.items():
            run = make_runner(
                model, EVAL_SIZE, runtime=kw["runtime"], optimize=kw["optimize"], threads=threads
            )
            fns[(name, key)] = lambda run=run: run(x)
    times = time_interleaved(fns, warmup=2, runs=runs)
    out: dict[str, dict[str, dict[str, float]]] = {name: {} for name in names}
    for (name, key), t in times.items():
        out[name][key] = summarize(t, 1)
    return out


def markdown(rows: list[dict[str, Any]], env: dict[str, Any]) -> str:
    lines = [
        "# CamVid 480x360: trained models side by side",
        "",
        "Test mIoU on the 233 CamVid test images (11 classes, 480x360, single scale), each model trained",
        "on this CPU by `benchmarks/train_camvid.py --recipe <recipe>`; costs at the evaluated input",
        f"(480x360 padded to {EVAL_SIZE[0]}x{EVAL_SIZE[1]}); latency batch 1, logits at the output stride,",
        f"{env['threads']} threads, median of {rows[0]['latency']['eager_ms']['runs']} interleaved runs.",
        "",
        " · ".join(f"{k}: {v}" for k, v in env.items()),
        "",
        "`wall` is the training's wall time, `CPU` the CPU time it used (main process and data-loader",
        "workers; runs that shared the two cores have a longer wall time for the same CPU time).",
        "",
        "| model | initialisation | iterations | wall (min) | CPU (min) | mIoU | mAcc | aAcc | params (M) "
        "| GMACs paper | GMACs all | eager fold-bn (ms) | ORT fp32 (ms) | recipe |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lat = r["latency"]
        cpu = f"{r['cpu_time_s'] / 60:.0f}" if r.get("cpu_time_s") else "—"
        lines.append(
            f"| {r['model']} | {r['init']} | {r['iterations']} | {r['wall_time_s'] / 60:.0f} | {cpu} "
            f"| {r['mIoU']:.2f} | {r['mAcc']:.2f} | {r['aAcc']:.2f} | {r['params_M']} | {r['GMACs_paper']} "
            f"| {r['GMACs_all']} | {lat['eager_ms']['median_ms']} | {lat['ort_ms']['median_ms']} | `{r['recipe']}` |"
        )
    notes = [f"- {r['model']}: {r['note']}" for r in rows if r.get("note")]
    if notes:
        lines += ["", "Notes:", *notes]
    classes = list(rows[0]["per_class_IoU"])
    lines += ["", "Per-class IoU (%):", "", "| model | " + " | ".join(classes) + " |"]
    lines.append("|---|" + "---|" * len(classes))
    for r in rows:
        lines.append(
            f"| {r['model']} | " + " | ".join(f"{r['per_class_IoU'][c]:.1f}" for c in classes) + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hardware", default=f"cpu{os.cpu_count()}-x86_64", help="the results files' suffix")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=20)
    args = p.parse_args(argv)
    results = load_results(args.hardware)
    names = list(dict.fromkeys(r["model"] for r in results))  # a model may have several runs
    lat = latencies(names, args.threads, args.runs)
    costs = {name: model_costs(name) for name in names}
    rows = []
    for r in results:
        rows.append(
            {
                "model": r["model"],
                "init": initialisation(r),
                "recipe": r.get("recipe", "recipes/cgrseg-t_camvid-360x480_cpu.yaml"),
                **{k: r[k] for k in ("iterations", "wall_time_s", "mIoU", "mAcc", "aAcc", "per_class_IoU")},
                "cpu_time_s": r.get("cpu_time_s"),
                "note": r.get("note", ""),
                **costs[r["model"]],
                "latency": lat[r["model"]],
            }
        )
    env = environment(args.threads)
    base = RESULTS / f"camvid_table_{args.hardware}"
    base.with_suffix(".json").write_text(json.dumps({"environment": env, "rows": rows}, indent=1))
    base.with_suffix(".md").write_text(markdown(rows, env))
    print(markdown(rows, env))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
