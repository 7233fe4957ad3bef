"""`lightseg export`: ONNX, OpenVINO IR or torch.export files that carry the model's metadata."""

from __future__ import annotations

import argparse
from pathlib import Path

from lightseg.cli.options import add_calibration_args, add_model_source_args


def add_export_args(p: argparse.ArgumentParser) -> None:
    add_model_source_args(p)
    p.add_argument("--format", choices=["onnx", "openvino", "pt2"], default="onnx")
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16", "int8"],
        default="fp32",
        help="onnx: fp32, int8; openvino: fp32, bf16, int8; pt2: fp32. int8 needs --calibration",
    )
    add_calibration_args(p)
    p.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=(512, 512),
        metavar=("H", "W"),
        help="static input size, a multiple of the model's size divisor (default 512 512); export at "
        "your images' padded size for results equal to the checkpoint's",
    )
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dynamic-batch", action="store_true")
    p.add_argument(
        "--output-argmax", action="store_true", help="graph returns uint8 labels at full resolution"
    )
    p.add_argument(
        "--output-full", action="store_true", help="graph returns logits upsampled to the input size"
    )
    p.add_argument("--no-fold", action="store_true", help="keep BatchNorm and dynamic attention biases")
    p.add_argument(
        "-o", "--output", default=None, help="file to write (default: <model>_<H>x<W>_<precision>.<suffix>)"
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="run the exported file and compare with eager (fp32: max |logit diff| <= 1e-4, argmax "
        "equal on >= 99.9%% of pixels; bf16/int8: argmax equal on >= 97%%, int8 on a calibration image)",
    )


def run_export(args: argparse.Namespace, rest: list[str]) -> int:
    import torch

    from lightseg.engine.backends import calibration_for, load_model
    from lightseg.engine.export import FORMAT_SUFFIX, check_export, check_precision, export_model
    from lightseg.errors import ConfigError, InputError
    from lightseg.meta import model_meta

    if args.output_argmax and args.output_full:
        raise ConfigError("choose one of --output-argmax and --output-full")
    if args.meta:
        raise ConfigError("--meta describes files exported by other tools; export reads the checkpoint's")
    check_precision(args.format, args.precision)  # before loading anything
    if args.precision == "int8" and not args.calibration:
        raise InputError(
            "--precision int8 needs --calibration IMAGES: a folder (or files, globs) of real images "
            "of the domain the model will see, e.g. its training images"
        )
    if args.weights is None and not Path(args.model).is_file():
        raise ConfigError(
            f"{args.model}: export needs trained weights: give a checkpoint file, or the model name "
            "with --weights FILE"
        )
    model = load_model(args.model if args.weights else None, args.weights or args.model, args.num_classes)
    meta = model_meta(model)
    h, w = args.size
    calib = (
        calibration_for(args.calibration, args.size, meta, args.calibration_count)
        if args.calibration
        else None
    )
    output = "argmax" if args.output_argmax else "logits-full" if args.output_full else "logits"
    kw = dict(batch=args.batch, dynamic_batch=args.dynamic_batch, output=output)
    kw["optimize"] = "none" if args.no_fold else "fold-bn"
    out = args.output or f"{meta.name}_{h}x{w}_{args.precision}{FORMAT_SUFFIX[args.format]}"
    path = export_model(model, out, args.size, args.format, precision=args.precision, calibration=calib, **kw)
    size_mb = sum(f.stat().st_size for f in (path, path.with_suffix(".bin")) if f.is_file()) / 2**20
    batch = "N" if args.dynamic_batch else args.batch
    print(
        f"wrote {path} ({size_mb:.1f} MiB, {args.format} {args.precision}, input {batch}x3x{h}x{w}, "
        f"output {output}, {meta.num_classes} classes)"
    )
    if args.check and args.format != "pt2":
        x = torch.from_numpy(next(iter(calib))) if calib is not None else None  # a real image for int8
        report = check_export(model, path, inputs=x)
        print(" · ".join(f"{k}: {v}" for k, v in report.items()))
        return 0 if report["ok"] else 1
    return 0
