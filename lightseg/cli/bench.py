"""`lightseg bench`: latency, throughput and peak memory of the inference paths."""

from __future__ import annotations

import argparse


def add_bench_args(p: argparse.ArgumentParser) -> None:
    from lightseg.engine.bench import add_bench_args

    add_bench_args(p)


def run_bench(args: argparse.Namespace, rest: list[str]) -> int:
    from lightseg.engine.bench import run_bench

    return run_bench(args, rest)
