"""`lightseg predict`: label maps and overlays for images, folders, globs and videos."""

from __future__ import annotations

import argparse


def add_predict_args(p: argparse.ArgumentParser) -> None:
    from lightseg.engine.predict import add_predict_args

    add_predict_args(p)


def run_predict(args: argparse.Namespace, rest: list[str]) -> int:
    from lightseg.engine.predict import run_predict

    return run_predict(args, rest)
