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
    from lightseg.deploy.formats import OPTIMIZE

    add_runtime_arg(
        p,
        "default: an exported file's own runtime, else $LIGHTSEG_RUNTIME (RUNTIME[:PRECISION]), else "
        "the path measured fastest on this machine on the first input of each size (once, cached; "
        "`lightseg bench --auto MODEL` shows the table)",
    )
    add_precision_arg(
        p,
        "Default: the file's; with --runtime, fp32; else the measured path's (given alone, the fastest of its paths)",
    )
    p.add_argument("--optimize", choices=OPTIMIZE, default="fold-bn", help="torch: BN folding / compile")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: the runtime's default)")
    add_calibration_args(p)


def add_runtime_arg(p: argparse.ArgumentParser, default_help: str, **kw: Any) -> None:
    """``--runtime``, its choices from the runtime table (``kw``: e.g. ``nargs``, ``default``)."""
    from lightseg.deploy.formats import RUNTIMES

    p.add_argument(
        "--runtime", choices=list(RUNTIMES), default=kw.pop("default", None), help=default_help, **kw
    )


def add_precision_arg(p: argparse.ArgumentParser, default_help: str) -> None:
    """``--precision``: its choices and which runtime runs each, from the runtime table."""
    from lightseg.deploy.formats import PRECISIONS, RUNTIMES

    where = [
        f"{x}: {', '.join(r.name for r in RUNTIMES.values() if x in r.precisions)}"
        for x in PRECISIONS
        if x != "fp32"
    ]
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="; ".join(where) + " (int8 needs --calibration unless the file is int8). " + default_help,
    )


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
    from lightseg.deploy.media import input_kind

    rest = list(inputs or [])
    first = Path(args.model)
    if args.weights and (first.is_dir() or input_kind(first)):
        source, args.weights = args.weights, None
        return source, [args.model, *rest]
    return args.model, rest


def runner_options(args: argparse.Namespace) -> Any:
    """The :class:`~lightseg.deploy.options.RunnerOptions` the command line asks for."""
    from lightseg.deploy.options import RunnerOptions

    return RunnerOptions(
        runtime=args.runtime,
        precision=args.precision,
        optimize=args.optimize,
        threads=args.threads,
        calibration=args.calibration,
        calibration_count=args.calibration_count,
    )


def model_facts(args: argparse.Namespace) -> Any:
    """``--meta``: the facts of a file exported by another tool (``None`` when not given)."""
    from lightseg.deploy.metadata import read_meta_file

    return read_meta_file(args.meta) if args.meta else None
