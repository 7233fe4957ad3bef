"""Options shared by the verbs that run a model (predict, export, bench, eval): what to run and how."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_model_source_args(p: argparse.ArgumentParser, positional: bool = True) -> None:
    if positional:
        p.add_argument(
            "model",
            metavar="MODEL",
            help="a checkpoint (its metadata names the model), an exported .onnx / .xml file, or a "
            "registered model name (see `lightseg models`) with --weights",
        )
    p.add_argument(
        "--weights",
        default=None,
        help="checkpoint for a model given by name (lightseg safetensors, training or mmseg)",
    )
    p.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="classes of the weights (default: from the file, else the dataset, else 150)",
    )
    p.add_argument(
        "--meta",
        default=None,
        metavar="JSON",
        help="model facts for an .onnx/.xml exported by another tool: a JSON file with name, "
        "num_classes, mean, std, size_divisor, output_stride (classes, palette optional)",
    )


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    from lightseg.engine.backends import OPTIMIZE, RUNTIMES

    p.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default=None,
        help="default: an exported file's own runtime, else openvino bf16 on a CPU with AMX, else "
        "onnxruntime fp32 when installed (else torch)",
    )
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16", "int8"],
        default=None,
        help="bf16: torch, openvino; int8: onnxruntime, openvino (needs --calibration). "
        "Default: the file's, else fp32",
    )
    p.add_argument("--optimize", choices=OPTIMIZE, default="fold-bn", help="torch: BN folding / compile")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: the runtime's default)")
    add_calibration_args(p)


def add_calibration_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--calibration",
        nargs="+",
        default=None,
        metavar="IMAGES",
        help="images (files, folders, globs) to calibrate int8 on; use real images of the domain",
    )
    p.add_argument(
        "--calibration-count", type=int, default=32, help="at most this many calibration images (default 32)"
    )


def model_source(args: argparse.Namespace, inputs: list[str] | None = None) -> tuple[Any, list[str]]:
    """(what to load, remaining inputs). ``lightseg predict --weights CKPT img.png`` omits the model
    name: then the first positional is an input and the checkpoint is the source."""
    from lightseg.engine.media import input_kind

    rest = list(inputs or [])
    first = Path(args.model)
    if args.weights and (first.is_dir() or input_kind(first)):
        source, args.weights = args.weights, None
        return source, [args.model, *rest]
    return args.model, rest


def runner_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keywords for :func:`lightseg.engine.backends.build_runner` / ``Segmenter`` from the options."""
    from lightseg.engine.backends import read_meta_file

    return dict(
        runtime=args.runtime,
        precision=args.precision,
        weights=args.weights,
        num_classes=args.num_classes,
        optimize=args.optimize,
        threads=args.threads,
        meta=read_meta_file(args.meta) if args.meta else None,
        calibration=args.calibration,
        calibration_count=args.calibration_count,
    )
