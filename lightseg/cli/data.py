"""`lightseg data check` (the dataset doctor) and `lightseg data convert` (class-id masks, once)."""

from __future__ import annotations

import argparse

from lightseg.errors import ConfigError


def add_data_args(p: argparse.ArgumentParser) -> None:
    from lightseg.config import fields_help

    p.usage = (
        "lightseg data check --data.root DIR [--data.dataset NAME] [--data.field VALUE ...] [--split S]\n"
        "       lightseg data convert --data.root DIR --out NEW_DIR [--data.field VALUE ...]\n"
        "       lightseg data convert --label-studio EXPORT.json --data.root IMAGES_DIR --out NEW_DIR"
    )
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = fields_help(["data"])
    p.add_argument(
        "action",
        choices=["check", "convert"],
        help="check: the dataset doctor; convert: write your folder once as images/<split> + class-id "
        "masks/<split> + classes.json (colour masks mapped, label options applied)",
    )
    p.add_argument("--split", action="append", default=None, help="split to check (repeatable; default: all)")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.add_argument("--workers", type=int, default=0, help="decoding processes (default: 0 = in this process)")
    p.add_argument("--out", default=None, help="convert: the new folder to write")
    p.add_argument(
        "--label-studio",
        default=None,
        metavar="EXPORT.json",
        help="convert: a Label Studio JSON export (brush and polygon labels); --data.root is its images' folder",
    )


def run_data(args: argparse.Namespace, rest: list[str]) -> int:
    from lightseg.config import Config, apply_overrides, given_fields

    stray = [t for t in rest if t.startswith("--") and not t.startswith("--data.")]
    if stray:
        raise ConfigError(f"data {args.action} takes --data.field options only, got {stray[0]} (see --help)")
    cfg = Config()
    cfg.data.dataset = "folder"  # your own data unless --data.dataset names another
    apply_overrides(cfg, rest)
    if "data.root" not in given_fields(rest):
        raise ConfigError(f"data {args.action} needs --data.root DIR")
    if args.action == "convert":
        return _convert(cfg, args.out, args.label_studio)
    from lightseg.data.doctor import run_check

    return run_check(cfg.data, args.split, args.format, args.workers)


def _convert(cfg: object, out: str | None, label_studio: str | None) -> int:
    from lightseg.data import dataset_options
    from lightseg.data.convert import convert
    from lightseg.data.label_studio import convert_label_studio

    data = cfg.data  # type: ignore[attr-defined]
    if data.dataset != "folder":
        raise ConfigError("data convert works on your own data (--data.dataset folder)")
    if not out:
        raise ConfigError("data convert needs --out NEW_DIR (a folder that does not exist yet, or is empty)")
    if label_studio:
        classes = data.classes if isinstance(data.classes, list) else None
        counts = convert_label_studio(label_studio, data.root, out, classes)
    else:
        counts = convert(data.root, out, **dataset_options(data))
    total = ", ".join(f"{split} {n}" for split, n in counts.items())
    print(
        f"wrote {sum(counts.values())} pairs ({total}) to {out}: images/, masks/ (class ids) and classes.json"
    )
    print(f"train on it with --data.root {out} (no class or label options needed)")
    return 0
