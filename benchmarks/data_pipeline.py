"""Images/s of the CGRSeg-ADE20K train pipeline (512×512 crop, SPEC 1.6) on CamVid, 0/1/2 loader workers.

Decode PNG pair → random rescale (2048, 512) × U(0.5, 2) → cat-max-ratio crop → flip → photometric
distortion → normalise → pad, collated into batches of 8, as the training loop consumes them. The
CPU load average is recorded with each figure: on a shared machine other jobs cut the rate, so the
in-process run also reports CPU time per image (the rate one free core would sustain).

    python benchmarks/data_pipeline.py [--data ../shared/data/camvid] [--batches 12] [--workers 0 1 2]

Writes ``benchmarks/results/data_pipeline_<host>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from lightseg.data import build_dataset, build_train_transform

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("LIGHTSEG_DATA", ROOT.parent / "shared" / "data")) / "camvid"


def measure(ds, workers: int, batch_size: int, batches: int) -> dict:
    """Images/s over ``batches`` batches after one warm-up batch (worker start-up excluded)."""
    keys = [(i % len(ds), 10_000 + i) for i in range((batches + 1) * batch_size)]  # (index, seed) pairs
    loader = DataLoader(ds, batch_size=batch_size, sampler=keys, num_workers=workers, drop_last=True)
    it = iter(loader)
    next(it)  # warm-up: starts the workers, fills their prefetch queues
    load_before = os.getloadavg()[0]
    start, cpu_start = time.perf_counter(), time.process_time()
    n = sum(b["image"].shape[0] for b in it)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    row = {
        "workers": workers,
        "images": n,
        "seconds": round(elapsed, 3),
        "img_per_s": round(n / elapsed, 1),
        "loadavg_1min_before": round(load_before, 2),
        "loadavg_1min_after": round(os.getloadavg()[0], 2),
    }
    if workers == 0:
        # CPU time of this process per image: what one uncontended core would sustain, load or not
        row["cpu_ms_per_img"] = round(1000 * cpu / n, 1)
        row["img_per_s_one_free_core"] = round(n / cpu, 1)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CamVid folder")
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args()

    torch.set_num_threads(1)  # the loader's work is per-sample Python/PIL/numpy; keep runs comparable
    ds = build_dataset("camvid", args.data, "train", transform=build_train_transform(crop_size=(512, 512)))
    rows = []
    for w in args.workers:
        row = measure(ds, w, args.batch_size, args.batches)
        print(json.dumps(row))
        rows.append(row)
    host = socket.gethostname()
    result = {
        "benchmark": "CGRSeg-ADE20K train pipeline (scale 2048x512, ratio 0.5-2, crop 512, cat_max 0.75, "
        "flip, photometric, normalise, pad) on CamVid 480x360 train PNGs",
        "host": host,
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "batch_size": args.batch_size,
        "target_img_per_s_one_worker": 40,
        "results": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"data_pipeline_{host}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
