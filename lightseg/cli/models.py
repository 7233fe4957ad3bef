"""`lightseg models` and `lightseg flops`: what is registered, its size and its cost."""

from __future__ import annotations

import argparse


def add_models_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default="*", help="shell-style name filter (default: all)")
    p.add_argument("--kind", choices=["segmentor", "backbone"], default=None)
    p.add_argument("--table", action="store_true", help="params, GMACs (paper/all) and published figures")
    p.add_argument(
        "--weights",
        action="store_true",
        help="published ImageNet weights of the models' backbones (pretrained=TAG)",
    )
    p.add_argument(
        "--format", choices=["text", "markdown"], default=None, help="table format (markdown implies --table)"
    )
    add_size_args(p)


def run_models(args: argparse.Namespace, rest: list[str]) -> int:
    from lightseg.models.registry import list_models

    names = list_models(args.pattern, kind=args.kind)
    if args.weights:
        print(render_weights(names, args.format or "text"))
        return 0
    if args.table or args.format:
        from lightseg.flops import profile_table, render_table

        rows = profile_table(names, tuple(args.size), args.num_classes)
        print(render_table(rows, args.format or "text"))
        return 0
    for name in names:
        print(name)
    return 0


def render_weights(names: list[str], fmt: str = "text") -> str:
    """The weights entries of the backbones of ``names``, the default tag of each first (``*``)."""
    from lightseg.models.registry import get_entry
    from lightseg.weights import list_weights

    users: dict[str, list[str]] = {}
    for name in names:
        users.setdefault(get_entry(name).weights_name, []).append(name)
    header = ["weights", "default", "top-1", "mean / std", "licence", "layout", "sha256", "from"]
    rows = []
    for backbone in sorted(users):
        for i, w in enumerate(list_weights(backbone)):
            where = w.urls[0] if w.urls else f"pip package {w.package}"
            if len(w.urls) > 1:
                where += f" (+{len(w.urls) - 1} more, tried in order)"
            top1 = "-" if w.imagenet_top1 is None else str(w.imagenet_top1)
            sha = "-" if w.sha256 is None else w.sha256[:12]
            license = w.license.split(" (")[0]
            rows.append(
                [w.name, "*" if i == 0 else "", top1, _norm(w.mean, w.std), license, w.layout, sha, where]
            )
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    fmt_row = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    used = "\n".join(
        f"  {b}: {', '.join(n for n in users[b] if n != b) or '(the backbone itself)'}" for b in sorted(users)
    )
    return "\n".join([fmt_row.format(*header), *(fmt_row.format(*r) for r in rows), "", "used by:", used])


def _norm(mean: tuple[float, ...], std: tuple[float, ...]) -> str:
    """``imagenet`` for the ImageNet statistics, else the values (one when all channels agree)."""
    from lightseg.meta import IMAGENET_MEAN, IMAGENET_STD

    if (tuple(mean), tuple(std)) == (IMAGENET_MEAN, IMAGENET_STD):
        return "imagenet"
    return " / ".join(f"{v[0]:g}" if len(set(v)) == 1 else ",".join(f"{x:g}" for x in v) for v in (mean, std))


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
