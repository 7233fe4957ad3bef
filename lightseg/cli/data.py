"""`lightseg data check`: the dataset doctor."""

from __future__ import annotations

import argparse


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["check"], help="check: the dataset doctor")
    p.add_argument(
        "--data.name", dest="data_name", required=True, help="dataset name (ade20k, camvid, folder, ...)"
    )
    p.add_argument("--data.root", dest="data_root", required=True, help="dataset root folder")
    p.add_argument("--split", action="append", default=None, help="split to check (repeatable; default: all)")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.add_argument("--workers", type=int, default=0, help="decoding processes (default: 0 = in this process)")


def run_data(args: argparse.Namespace, rest: list[str]) -> int:
    from lightseg.data.doctor import run_check

    return run_check(args.data_name, args.data_root, args.split, args.format, args.workers, rest)
