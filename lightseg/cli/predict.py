"""`lightseg predict`: label maps and overlays for images, folders, globs and videos."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lightseg.cli.options import (
    add_model_source_args,
    add_runtime_args,
    model_facts,
    model_source,
    runner_options,
)
from lightseg.errors import ConfigError, InputError


def add_predict_args(p: argparse.ArgumentParser) -> None:
    add_model_source_args(p)
    # "*", not "+": with --weights the model may be left out, and one input is then all there is
    p.add_argument("inputs", nargs="*", help="image files, folders, globs or video files")
    p.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    p.add_argument(
        "--dataset",
        default=None,
        help="take classes/palette (and class count) from this dataset, e.g. camvid",
    )
    p.add_argument("--mode", choices=["whole", "slide"], default="whole")
    p.add_argument("--crop-size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    p.add_argument("--stride", type=int, nargs=2, default=(341, 341), metavar=("H", "W"))
    p.add_argument("--scales", type=float, nargs="+", default=[1.0], help="multi-scale TTA ratios")
    p.add_argument("--flip", action="store_true", help="add horizontally flipped passes")
    add_runtime_args(p)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument(
        "--save-probs", action="store_true", help="also write <name>_probs.npy (K x H x W float16)"
    )
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    p.add_argument(
        "--overlay-format", choices=["jpg", "png"], default="jpg", help="overlay file type (default: jpg)"
    )
    p.add_argument("--no-progress", action="store_true")


def dataset_meta(name: str) -> tuple[list[str], list[list[int]]]:
    """(classes, palette) of a registered dataset (``lightseg.data.DATASETS``)."""
    from lightseg.data import dataset_class

    cls = dataset_class(name, where="--dataset")
    if not hasattr(cls, "CLASSES"):
        raise ConfigError(
            f"--dataset {name}: its classes come from your folder's class file, not from lightseg; a "
            "checkpoint trained on it records them (leave --dataset out)"
        )
    return list(cls.CLASSES), [list(c) for c in cls.PALETTE]


def run_predict(args: argparse.Namespace, rest: list[str]) -> int:
    import torch

    from lightseg.deploy.predict import check_out_dir, predict_paths
    from lightseg.deploy.segmenter import Segmenter

    check_out_dir(args.out)  # before minutes of loading and exporting
    if args.threads:
        torch.set_num_threads(args.threads)
    source, inputs = model_source(args, args.inputs)
    if not inputs:
        raise InputError(f"nothing to predict: give image files, folders, globs or videos after {source}")
    classes = palette = None
    if args.dataset:
        classes, palette = dataset_meta(args.dataset)
        args.num_classes = args.num_classes or len(classes)
    seg = Segmenter(
        source,
        runner_options(args),
        weights=args.weights,
        num_classes=args.num_classes,
        meta=model_facts(args),
        mode=args.mode,
        crop_size=args.crop_size,
        stride=args.stride,
        scales=args.scales,
        flip=args.flip,
        batch_size=args.batch_size,
        classes=classes,
        palette=palette,
    )
    report = predict_paths(
        seg,
        inputs,
        args.out,
        save_probs=args.save_probs,
        alpha=args.alpha,
        overlay_format=args.overlay_format,
        progress=not args.no_progress,
    )
    print(f"wrote {len(report.written)} files to {Path(args.out)} ({seg.runner.describe()})")
    if report.skipped:
        print(f"skipped {len(report.skipped)} unsupported files: " + ", ".join(map(str, report.skipped[:10])))
    if report.failed:
        print(f"{len(report.failed)} inputs failed:", file=sys.stderr)
        for _, msg in report.failed:
            print(f"  {msg}", file=sys.stderr)
        return 1
    return 0
