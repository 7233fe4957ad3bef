"""`lightseg models` and `lightseg flops`: what is registered, its size and its cost."""

from __future__ import annotations

import argparse


def add_models_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default="*", help="shell-style name filter (default: all)")
    p.add_argument("--kind", choices=["segmentor", "backbone"], default=None)
    p.add_argument("--table", action="store_true", help="params, GMACs (paper/all) and published figures")
    p.add_argument(
        "--format", choices=["text", "markdown"], default=None, help="table format (markdown implies --table)"
    )
    add_size_args(p)


def run_models(args: argparse.Namespace, rest: list[str]) -> int:
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


def add_size_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=int, nargs=2, default=[512, 512], metavar=("H", "W"), help="input size")
    p.add_argument("--num-classes", type=int, default=150, help="classes of a segmentor (default 150)")


def add_flops_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a registered model name (see `lightseg models`)")
    add_size_args(p)
    p.add_argument("--format", choices=["table", "json"], default="table")


def run_flops(args: argparse.Namespace, rest: list[str]) -> int:
    import json

    from lightseg.flops import FLOPS_JSON_KEYS, format_profile, profile_model

    prof = profile_model(args.model, tuple(args.size), args.num_classes)
    if args.format == "json":
        print(json.dumps({k: prof[k] for k in FLOPS_JSON_KEYS}))
    else:
        print(format_profile(args.model, prof))
    return 0
