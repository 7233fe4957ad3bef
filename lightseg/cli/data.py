"""`lightseg data check`: the dataset doctor."""

from __future__ import annotations

import argparse

from lightseg.errors import ConfigError


def add_data_args(p: argparse.ArgumentParser) -> None:
    from lightseg.config import fields_help

    p.usage = "lightseg data check --data.root DIR [--data.dataset NAME] [--data.field VALUE ...] [--split S]"
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = fields_help(["data"])
    p.add_argument("action", choices=["check"], help="check: the dataset doctor")
    p.add_argument("--split", action="append", default=None, help="split to check (repeatable; default: all)")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.add_argument("--workers", type=int, default=0, help="decoding processes (default: 0 = in this process)")


def run_data(args: argparse.Namespace, rest: list[str]) -> int:
    from lightseg.config import Config, apply_overrides, given_fields
    from lightseg.data.doctor import run_check

    stray = [t for t in rest if t.startswith("--") and not t.startswith("--data.")]
    if stray:
        raise ConfigError(f"data check takes --data.field options only, got {stray[0]} (see --help)")
    cfg = Config()
    cfg.data.dataset = "folder"  # your own data unless --data.dataset names another
    apply_overrides(cfg, rest)
    if "data.root" not in given_fields(rest):
        raise ConfigError("data check needs --data.root DIR")
    return run_check(cfg.data, args.split, args.format, args.workers)
