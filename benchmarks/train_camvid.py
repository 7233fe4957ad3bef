"""Train a model on CamVid 480x360 with one of the recipes/*_camvid-360x480_cpu.yaml recipes, evaluate
on the 233 test images, and write a results JSON (mIoU, per-class IoU, wall time, images/s, hardware).

    python benchmarks/train_camvid.py [--recipe recipes/X.yaml] [--section.field value ...]

The default recipe is CGRSeg-T from scratch: 53.7% mIoU in 74 min with one torch thread on a 2-core AMD
EPYC VM (OMP_NUM_THREADS=1). Output: benchmarks/results/camvid_<recipe model>_<hardware>.json;
benchmarks/camvid_table.py gathers every such file into one comparison table.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import torch

from lightseg.config import load_config
from lightseg.training import train

ROOT = Path(__file__).resolve().parents[1]


def hardware() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0).replace(" ", "-")
    return f"cpu{os.cpu_count()}-{platform.machine()}"


DEFAULT_RECIPE = ROOT / "recipes" / "cgrseg-t_camvid-360x480_cpu.yaml"


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the data-loader workers): the compute
    budget a run used, comparable between runs that shared the cores (wall time is not)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def split_recipe_arg(argv: list[str]) -> tuple[Path, list[str]]:
    """Take ``--recipe PATH`` out of ``argv``; the rest are config overrides."""
    if "--recipe" not in argv:
        return DEFAULT_RECIPE, argv
    i = argv.index("--recipe")
    if i + 1 >= len(argv):
        raise SystemExit("--recipe needs a path")
    return Path(argv[i + 1]), argv[:i] + argv[i + 2 :]


def main(argv: list[str]) -> int:
    recipe, overrides = split_recipe_arg(argv)
    cfg = load_config(recipe, overrides)
    if not Path(cfg.data.root).is_absolute():
        cfg.data.root = str((ROOT / cfg.data.root).resolve())
    cfg.run.work_dir = str(ROOT / cfg.run.work_dir)
    t0 = time.perf_counter()
    result = train(cfg)
    wall = time.perf_counter() - t0
    metrics = result["metrics"]
    out = {
        "dataset": "CamVid 480x360 (train 367 / test 233)",
        "model": cfg.model.name,
        "recipe": os.path.relpath(recipe.resolve(), ROOT),
        "iterations": result["iteration"],
        "batch_size": cfg.train.batch_size,
        "crop_size": cfg.data.crop_size,
        "mIoU": metrics["mIoU"],
        "mAcc": metrics["mAcc"],
        "aAcc": metrics["aAcc"],
        "per_class_IoU": {k: v["IoU"] for k, v in metrics["per_class"].items()},
        "wall_time_s": wall,
        "cpu_time_s": cpu_seconds(),
        "train_images_per_s": result["iteration"] * cfg.train.batch_size / wall,
        "hardware": {"device": hardware(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "config": cfg.to_dict(),
    }
    path = ROOT / "benchmarks" / "results" / f"camvid_{recipe.stem.split('_')[0]}_{hardware()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"mIoU {metrics['mIoU']:.2f} in {wall / 60:.1f} min -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
