"""Training throughput of a segmentor: images/s and peak memory of full optimizer steps.

One step = ``forward_train`` + the training loss (CE, plus the contrastive term for heads that
provide embeddings) + backward + AdamW with the SPEC 1.6 parameter groups — exactly what
``lightseg.training`` does per iteration, minus data loading (measured separately by
``benchmarks/data_pipeline.py``). Inputs are random normalised images with random labels.

    python benchmarks/train_throughput.py --model cgrseg_t --size 512 512 --batch 2 --threads 2
    python benchmarks/train_throughput.py --device cuda --batch 16 --amp bf16 --channels-last

Writes benchmarks/results/train_throughput_<model>_<device>.json (appending one entry per setting).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from lightseg.deploy.bench import environment, peak_rss_mb, summarize, time_fn
from lightseg.losses import build_seg_loss
from lightseg.models import create_model
from lightseg.training import optim as optim_lib

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="cgrseg_t")
    p.add_argument("--num-classes", type=int, default=150)
    p.add_argument("--size", type=int, nargs=2, default=(512, 512))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    return p.parse_args(argv)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return peak_rss_mb()


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = create_model(args.model, num_classes=args.num_classes).to(device).train()
    loss_fn = build_seg_loss(model).to(device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = optim_lib.build_optimizer(model, 1.2e-4, (0.9, 0.999), 0.01)
    for group in optim_lib.build_param_groups(loss_fn, 1.2e-4, 0.01):
        optimizer.add_param_group(group)
    dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    h, w = args.size
    images = torch.randn(args.batch, 3, h, w, device=device).contiguous(memory_format=memory_format)
    labels = torch.randint(0, args.num_classes, (args.batch, h, w), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss, _ = loss_fn(model.forward_train(images), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    sync = torch.cuda.synchronize if device.type == "cuda" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = time_fn(step, warmup=args.warmup, runs=args.steps, sync=sync)
    result = {
        "model": args.model,
        "num_classes": args.num_classes,
        "size": f"{h}x{w}",
        "batch": args.batch,
        "amp": args.amp,
        "channels_last": args.channels_last,
        "what": "forward_train + loss + backward + AdamW step, random inputs, no data loading",
        **summarize(times, args.batch),
        "peak_memory_mb": peak_memory_mb(device),
        "peak_memory_kind": "CUDA max allocated" if device.type == "cuda" else "process peak RSS",
        "environment": environment(args.threads, device.type),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"train_throughput_{args.model}_{device.type}.json"
    entries = json.loads(path.read_text()) if path.exists() else []
    entries.append(result)
    path.write_text(json.dumps(entries, indent=1) + "\n")
    print(
        json.dumps(
            {
                k: result[k]
                for k in ("model", "size", "batch", "amp", "median_ms", "images_per_s", "peak_memory_mb")
            }
        )
    )
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
