"""`lightseg bench`: latency, throughput and peak memory of the inference paths."""

from __future__ import annotations

import argparse

from lightseg.cli.options import add_calibration_args, add_precision_arg, add_runtime_arg


def add_bench_args(p: argparse.ArgumentParser) -> None:
    from lightseg.deploy.formats import OPTIMIZE, TIMED_OUTPUTS

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
    add_runtime_arg(p, "runtimes to time (default: torch)", nargs="+", default=["torch"])
    p.add_argument("--optimize", choices=OPTIMIZE, nargs="+", default=["fold-bn"])
    p.add_argument(
        "--output",
        choices=list(TIMED_OUTPUTS),
        nargs="+",
        default=["logits"],
        help="what the timed graph returns",
    )
    add_precision_arg(p, "Default: fp32, or an exported file's")
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
        "--auto",
        action="store_true",
        help="print the default path of each model at --size on this machine and the table behind it "
        "(the cached measurement, else measured now); --precision limits it to that precision",
    )
    p.add_argument(
        "--image",
        default=None,
        help="with --auto: the image the labels of reduced precisions are checked on (resized to --size; "
        "default: a synthetic picture, and predict then decides again on its first image)",
    )
    p.add_argument("--remeasure", action="store_true", help="with --auto: measure again, ignoring the cache")
    p.add_argument(
        "--onnx-dir",
        default=None,
        metavar="DIR",
        help="where exported files are written and reused (default: the export cache)",
    )


def run_bench(args: argparse.Namespace, rest: list[str]) -> int:
    import json
    from pathlib import Path

    from lightseg.deploy.bench import bench, bench_isolated, environment, export_path, format_table
    from lightseg.deploy.calibration import check_calibration
    from lightseg.deploy.formats import is_exported
    from lightseg.deploy.options import RunnerOptions
    from lightseg.errors import ConfigError
    from lightseg.meta import model_meta
    from lightseg.models.build import load_model

    if args.runs < 1 or args.rounds < 1:
        raise ConfigError("--runs and --rounds must be at least 1")
    if args.auto:
        return run_auto(args)
    check_calibration(args.precision, args.calibration, "--precision int8")
    base = RunnerOptions(
        precision=args.precision, threads=args.threads, device=args.device, cache_dir=args.onnx_dir,
        calibration=args.calibration if args.precision == "int8" else None,
        calibration_count=args.calibration_count,
    )  # fmt: skip
    paths = [(r, o, x) for r in args.runtime for o in args.optimize for x in args.output]
    # A model given by name without weights is randomly initialised, with 150 classes by default.
    num_classes = args.num_classes or (None if args.weights else 150)
    results, specs = [], {}
    for name in args.models:
        weights = None
        if is_exported(name):
            model: object = name
        else:
            import torch

            torch.manual_seed(0)  # random-init weights equal to the children's
            weights = args.weights or (name if Path(name).is_file() else None)
            classes = num_classes if weights is None else args.num_classes
            model = load_model(None if weights == name else name, weights, classes)
        for runtime, optimize, output in paths:
            if is_exported(model) and runtime == "torch":
                runtime = None  # an exported file runs on its own runtime
            options = base.replace(runtime=runtime, optimize=optimize)
            if not args.isolate:
                results.append(bench(model, args.size, args.batch, output=output, warmup=args.warmup,
                                     runs=args.runs, options=options))  # fmt: skip
                continue
            if not is_exported(model) and runtime != "torch":  # export here: the child only runs
                export_path(model, args.size, args.batch, output=output, options=options)
            label = " ".join(v for v in (runtime, optimize, output) if v)
            specs[f"{name} {label}"] = {
                "model": name if is_exported(model) or weights != name else model_meta(model).name,
                "num_classes": num_classes if weights is None else args.num_classes,
                "weights": weights,
                "size": list(args.size),
                "batch": args.batch,
                "warmup": args.warmup,
                "runs": args.runs,
                "output": output,
                "options": options.to_dict(),
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


def run_auto(args: argparse.Namespace) -> int:
    """``lightseg bench --auto``: the measured default path of each model and its table."""
    import json
    from pathlib import Path

    import torch

    from lightseg.deploy.bench import auto_decision
    from lightseg.deploy.formats import is_exported
    from lightseg.deploy.options import RunnerOptions
    from lightseg.errors import ConfigError
    from lightseg.models.build import load_model

    if args.precision == "int8":
        raise ConfigError(
            "--auto measures the paths that need only the weights; INT8 is chosen with --runtime"
        )
    options = RunnerOptions(
        precision=args.precision, threads=args.threads, device=args.device, cache_dir=args.onnx_dir
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    out = []
    for name in args.models:
        if is_exported(name):
            raise ConfigError(f"{name}: an exported file runs on its own runtime; --auto takes a model")
        torch.manual_seed(0)  # random-init weights are the same in every run, so is the cache key
        weights = args.weights or (name if Path(name).is_file() else None)
        classes = args.num_classes or (None if weights else 150)
        model = load_model(None if weights == name else name, weights, classes)
        decision = auto_decision(model, args.size, options, args.image, args.remeasure)
        if args.format == "json":
            out.append(json.loads(decision.to_json()) | {"cached": decision.cached, "why": decision.why()})
            continue
        print(decision.summary())
        print(decision.table())
        print(f"default: {decision.chosen.label} ({decision.why()})")
        if decision.probe == "synthetic":
            print("the labels were checked on a synthetic picture: predict decides again on its first image")
    if args.format == "json":
        print(json.dumps(out, indent=2))
    return 0
