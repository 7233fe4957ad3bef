"""`lightseg export`: ONNX, OpenVINO IR or torch.export files that carry the model's metadata."""

from __future__ import annotations

import argparse
from pathlib import Path

from lightseg.cli.options import add_calibration_args, add_model_source_args


def add_export_args(p: argparse.ArgumentParser) -> None:
    from lightseg.deploy.formats import FORMATS, PRECISIONS

    add_model_source_args(p)
    p.add_argument("--format", choices=list(FORMATS), default="onnx")
    holds = "; ".join(f"{f.name}: {', '.join(f.precisions)}" for f in FORMATS.values())
    p.add_argument(
        "--precision", choices=PRECISIONS, default="fp32", help=f"{holds}. int8 needs --calibration"
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

    from lightseg.deploy.calibration import calibration_for, check_calibration
    from lightseg.deploy.export import export_model
    from lightseg.deploy.formats import FORMATS, check_format
    from lightseg.deploy.metadata import is_openvino_ir
    from lightseg.deploy.verify import check_export
    from lightseg.errors import ConfigError
    from lightseg.meta import model_meta
    from lightseg.models.build import load_model

    if args.output_argmax and args.output_full:
        raise ConfigError("choose one of --output-argmax and --output-full")
    if args.meta:
        raise ConfigError("--meta describes files exported by other tools; export reads the checkpoint's")
    check_format(args.format, args.precision)  # before loading anything
    check_calibration(args.precision, args.calibration, "--precision int8")
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
    out = args.output or f"{meta.name}_{h}x{w}_{args.precision}{FORMATS[args.format].suffix}"
    path = export_model(model, out, args.size, args.format, precision=args.precision, calibration=calib, **kw)
    files = [path, path.with_suffix(".bin")] if is_openvino_ir(path) else [path]  # an IR is two files
    size_mb = sum(f.stat().st_size for f in files) / 2**20
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
