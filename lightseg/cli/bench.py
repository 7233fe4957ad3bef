"""`lightseg bench`: latency, throughput and peak memory of the inference paths."""

from __future__ import annotations

import argparse

from lightseg.cli.options import add_calibration_args


def add_bench_args(p: argparse.ArgumentParser) -> None:
    from lightseg.engine.backends import OPTIMIZE, RUNTIMES
    from lightseg.engine.bench import OUTPUTS

    p.add_argument(
        "models", nargs="+", help="registered model names, checkpoints or exported .onnx/.xml files"
    )
    p.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="classes of a model given by name (default: the weights', else 150)",
    )
    p.add_argument("--weights", default=None, help="weights to load (default: random init; speed only)")
    p.add_argument("--runtime", choices=RUNTIMES, nargs="+", default=["torch"])
    p.add_argument("--optimize", choices=OPTIMIZE, nargs="+", default=["fold-bn"])
    p.add_argument(
        "--output", choices=list(OUTPUTS), nargs="+", default=["logits"], help="what the timed graph returns"
    )
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16", "int8"],
        default=None,
        help="bf16: torch, openvino; int8: onnxruntime, openvino (needs --calibration). Default: fp32, "
        "or an exported file's",
    )
    add_calibration_args(p)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.add_argument(
        "--no-isolate",
        dest="isolate",
        action="store_false",
        help="time every path in this process, one after another (default: each path in its own "
        "fresh process, so no thread pool or memory of one path affects another)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="processes per path, each doing its share of --runs, in alternating order (isolated mode)",
    )
    p.add_argument(
        "--onnx-dir",
        default=None,
        metavar="DIR",
        help="where exported files are written and reused (default: the export cache)",
    )


def run_bench(args: argparse.Namespace, rest: list[str]) -> int:
    import json
    from pathlib import Path

    from lightseg.engine.backends import (
        calibration_for,
        is_exported,
        load_model,
    )
    from lightseg.engine.bench import bench, bench_isolated, environment, export_path, format_table
    from lightseg.errors import ConfigError, InputError
    from lightseg.meta import model_meta

    if args.runs < 1 or args.rounds < 1:
        raise ConfigError("--runs and --rounds must be at least 1")
    if args.precision == "int8" and not args.calibration:
        raise InputError("--precision int8 needs --calibration IMAGES (real images to calibrate on)")
    paths = [
        {"runtime": r, "optimize": o, "output": x}
        for r in args.runtime
        for o in args.optimize
        for x in args.output
    ]
    common = {"threads": args.threads, "device": args.device, "onnx_path": args.onnx_dir}
    results, specs = [], {}
    for name in args.models:
        if is_exported(name):
            model, calib, weights = name, None, None
            file_paths = [dict(p, runtime=p["runtime"] if p["runtime"] != "torch" else None) for p in paths]
        else:
            import torch

            torch.manual_seed(0)  # random-init weights equal to the children's
            weights = args.weights or (name if Path(name).is_file() else None)
            model = load_model(None if weights == name else name, weights, args.num_classes)
            calib = None
            if args.precision == "int8":
                calib = calibration_for(
                    args.calibration, args.size, model_meta(model), args.calibration_count
                )
            file_paths = paths
        for path in file_paths:
            path = {k: v for k, v in path.items() if v is not None}
            kw = {**common, **path, "precision": args.precision}
            if not args.isolate:
                results.append(
                    bench(
                        model,
                        args.size,
                        args.batch,
                        warmup=args.warmup,
                        runs=args.runs,
                        calibration=calib,
                        **kw,
                    )
                )
                continue
            if not is_exported(model) and path["runtime"] != "torch":  # export here: the child only runs
                export_path(
                    model, args.size, args.batch, **path, precision=args.precision or "fp32",
                    calibration=calib, onnx_path=args.onnx_dir,
                )  # fmt: skip
            specs[f"{name} {' '.join(path.values())}"] = {
                "model": name if is_exported(model) or weights != name else model_meta(model).name,
                "num_classes": args.num_classes,
                "weights": weights,
                "size": list(args.size),
                "batch": args.batch,
                "threads": args.threads,
                "device": args.device,
                "warmup": args.warmup,
                "runs": args.runs,
                "calibration": {"inputs": args.calibration, "count": args.calibration_count}
                if calib
                else None,
                "runner": {**path, "precision": args.precision, "onnx_path": args.onnx_dir},
            }
    if specs:
        results = list(bench_isolated(specs, args.rounds).values())
    env = environment(args.threads, args.device)
    env["paths_timed"] = "each in its own process" if args.isolate else "in one process, one after another"
    if args.format == "json":
        print(json.dumps({"environment": env, "results": results}, indent=2))
    else:
        print(" · ".join(f"{k}: {v}" for k, v in env.items()))
        print(format_table(results))
    return 0
