"""`lightseg train` and `lightseg eval`."""

from __future__ import annotations

import argparse


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="a recipe YAML (recipes/*.yaml); then --section.field value overrides")
    p.add_argument(
        "--resume", default=None, help="checkpoint to continue from (default: <work_dir>/last.pt if any)"
    )


def run_train(args: argparse.Namespace, rest: list[str]) -> int:
    from lightseg.config import load_config
    from lightseg.engine.train import train

    cfg = load_config(args.recipe, rest)
    if args.resume:
        cfg.run.resume = args.resume
    train(cfg)
    return 0


def add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "recipe", help="the recipe the model was trained with; then --section.field value overrides"
    )
    p.add_argument(
        "--weights",
        required=True,
        help="checkpoint (training .pt, lightseg safetensors, ...) or exported .onnx / .xml file",
    )
    p.add_argument(
        "--runtime",
        choices=["torch", "onnxruntime", "openvino"],
        default=None,
        help="default: torch for checkpoints, an exported file's own runtime",
    )
    p.add_argument(
        "--precision", choices=["fp32", "bf16", "int8"], default=None, help="default: fp32 / the file's"
    )
    p.add_argument(
        "--meta", default=None, metavar="JSON", help="model facts for a file exported by another tool"
    )
    p.add_argument("--split", default=None, help="dataset split (default: the recipe's data.val_split)")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.add_argument(
        "--cityscapes-out", default=None, help="also write test-server labelId PNGs to this folder"
    )


def run_eval(args: argparse.Namespace, rest: list[str]) -> int:
    from lightseg.config import load_config
    from lightseg.engine.evaluate import run_eval

    run_eval(
        load_config(args.recipe, rest), args.weights, args.format, args.split, args.cityscapes_out,
        runtime=args.runtime, precision=args.precision, meta_file=args.meta,
    )  # fmt: skip
    return 0
