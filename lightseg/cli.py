"""The ``lightseg`` command line: each verb parses its arguments and calls one plain typed function.

Verbs register themselves in ``_VERBS`` below (name -> (add_arguments, run)); ``run`` returns the
process exit status.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

AddArgs = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace, list[str]], int]


def _add_models_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default="*", help="shell-style name filter (default: all)")
    p.add_argument("--kind", choices=["segmentor", "backbone"], default=None)
    p.add_argument("--table", action="store_true", help="params, GMACs (paper/all) and published figures")
    p.add_argument(
        "--format", choices=["text", "markdown"], default=None, help="table format (markdown implies --table)"
    )
    _add_size_args(p)


def _run_models(args: argparse.Namespace, rest: list[str]) -> int:
    from lightseg.models.registry import list_models

    names = list_models(args.pattern, kind=args.kind)
    if args.table or args.format:
        from lightseg.flops import profile_table, render_table

        rows = profile_table(names, tuple(args.size), args.num_classes)
        print(render_table(rows, args.format or "text"))
        return 0
    for name in names:
        print(name)
    return 0


def _add_size_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=int, nargs=2, default=[512, 512], metavar=("H", "W"), help="input size")
    p.add_argument("--num-classes", type=int, default=150, help="classes of a segmentor (default 150)")


def _add_flops_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a registered model name (see `lightseg models`)")
    _add_size_args(p)
    p.add_argument("--format", choices=["table", "json"], default="table")


def _run_flops(args: argparse.Namespace, rest: list[str]) -> int:
    import json

    from lightseg.flops import FLOPS_JSON_KEYS, format_profile, profile_model

    prof = profile_model(args.model, tuple(args.size), args.num_classes)
    if args.format == "json":
        print(json.dumps({k: prof[k] for k in FLOPS_JSON_KEYS}))
    else:
        print(format_profile(args.model, prof))
    return 0


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="a recipe YAML (recipes/*.yaml); then --section.field value overrides")
    p.add_argument(
        "--resume", default=None, help="checkpoint to continue from (default: <work_dir>/last.pt if any)"
    )


def _run_train(args: argparse.Namespace, rest: list[str]) -> int:
    from lightseg.config import load_config
    from lightseg.engine.train import train

    cfg = load_config(args.recipe, rest)
    if args.resume:
        cfg.run.resume = args.resume
    train(cfg)
    return 0


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "recipe", help="the recipe the model was trained with; then --section.field value overrides"
    )
    p.add_argument("--weights", required=True, help="checkpoint (training .pt, lightseg safetensors, ...)")
    p.add_argument("--split", default=None, help="dataset split (default: the recipe's data.val_split)")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.add_argument(
        "--cityscapes-out", default=None, help="also write test-server labelId PNGs to this folder"
    )


def _run_eval(args: argparse.Namespace, rest: list[str]) -> int:
    from lightseg.config import load_config
    from lightseg.engine.evaluate import run_eval

    run_eval(load_config(args.recipe, rest), args.weights, args.format, args.split, args.cityscapes_out)
    return 0


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["check"], help="check: the dataset doctor")
    p.add_argument(
        "--data.name", dest="data_name", required=True, help="dataset name (ade20k, camvid, folder, ...)"
    )
    p.add_argument("--data.root", dest="data_root", required=True, help="dataset root folder")
    p.add_argument("--split", action="append", default=None, help="split to check (repeatable; default: all)")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.add_argument("--workers", type=int, default=0, help="decoding processes (default: 0 = in this process)")


def _run_data(args: argparse.Namespace, rest: list[str]) -> int:
    from lightseg.data.doctor import run_check

    return run_check(args.data_name, args.data_root, args.split, args.format, args.workers, rest)


def _add_predict_args(p: argparse.ArgumentParser) -> None:
    from lightseg.engine.predict import add_predict_args

    add_predict_args(p)


def _run_predict(args: argparse.Namespace, rest: list[str]) -> int:
    from lightseg.engine.predict import run_predict

    return run_predict(args, rest)


def _add_export_args(p: argparse.ArgumentParser) -> None:
    from lightseg.engine.bench import add_export_args

    add_export_args(p)


def _run_export(args: argparse.Namespace, rest: list[str]) -> int:
    from lightseg.engine.bench import run_export

    return run_export(args, rest)


def _add_bench_args(p: argparse.ArgumentParser) -> None:
    from lightseg.engine.bench import add_bench_args

    add_bench_args(p)


def _run_bench(args: argparse.Namespace, rest: list[str]) -> int:
    from lightseg.engine.bench import run_bench

    return run_bench(args, rest)


# verb -> (help, add_arguments, run, accepts_unknown_args)
_VERBS: dict[str, tuple[str, AddArgs, Run, bool]] = {
    "models": ("list registered models", _add_models_args, _run_models, False),
    "flops": ("params and GMACs (paper/all conventions) of a model", _add_flops_args, _run_flops, False),
    "train": ("train a model from a recipe (runs under torchrun too)", _add_train_args, _run_train, True),
    "eval": ("evaluate weights on a dataset split (mIoU, mAcc, aAcc)", _add_eval_args, _run_eval, True),
    "data": (
        "dataset tools: `data check` reports missing/corrupt/mislabelled files",
        _add_data_args,
        _run_data,
        True,
    ),
    "predict": (
        "segment images, folders, globs and videos: label PNGs + overlays",
        _add_predict_args,
        _run_predict,
        False,
    ),
    "export": (
        "export to ONNX (verified against eager with --check) or torch.export",
        _add_export_args,
        _run_export,
        False,
    ),
    "bench": (
        "latency benchmark: eager / folded / ONNX Runtime, logits or full-res labels",
        _add_bench_args,
        _run_bench,
        False,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lightseg", description="Efficient semantic segmentation toolkit.")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, (help_, add_args, _, _) in _VERBS.items():
        add_args(sub.add_parser(verb, help=help_, description=help_))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    _, _, run, accepts_rest = _VERBS[args.verb]
    if rest and not accepts_rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return run(args, rest)
    except (FileNotFoundError, KeyError, ValueError) as e:
        # User-facing errors (bad names, files, checkpoints, sizes): one clear line, no traceback.
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"lightseg {args.verb}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
