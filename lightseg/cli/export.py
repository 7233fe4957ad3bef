"""`lightseg export`: ONNX or torch.export graphs, checked against eager."""

from __future__ import annotations

import argparse


def add_export_args(p: argparse.ArgumentParser) -> None:
    from lightseg.engine.bench import add_export_args

    add_export_args(p)


def run_export(args: argparse.Namespace, rest: list[str]) -> int:
    from lightseg.engine.bench import run_export

    return run_export(args, rest)
