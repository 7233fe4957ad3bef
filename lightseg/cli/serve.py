"""`lightseg serve`: the segmentation service and its demo page on uvicorn."""

from __future__ import annotations

import argparse
import ipaddress
import sys


def add_serve_args(p: argparse.ArgumentParser) -> None:
    from lightseg.deploy.formats import PRECISIONS, RUNTIMES

    p.add_argument(
        "model",
        metavar="MODEL_OR_FILE",
        help="a lightseg checkpoint, an exported .onnx / .xml file, or a registered model name with --weights",
    )
    p.add_argument(
        "--weights", default=None, help="weights for a registered model name (any layout predict reads)"
    )
    p.add_argument(
        "--runtime",
        choices=list(RUNTIMES),
        default="torch",
        help="default: torch (an exported file: its own)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="default: fp32 (a file: its own)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: the runtime's)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload in MiB (default 20)")
    p.add_argument(
        "--max-pixels", type=int, default=8 * 1024 * 1024, help="largest width x height (default 8 Mi)"
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=4,
        help="run up to N waiting same-size requests as one batch (1: no batching)",
    )
    p.add_argument("--max-queue", type=int, default=64, help="waiting requests before answering 503")
    p.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True)


def run_serve(args: argparse.Namespace, rest: list[str]) -> int:
    try:
        import uvicorn

        from lightseg.deploy.options import RunnerOptions
        from lightseg.serve import Limits, create_app, load_backend
    except ImportError as e:
        print(f"lightseg serve needs the serve extra: pip install 'lightseg[serve]' ({e})", file=sys.stderr)
        return 2
    limits = Limits(max_bytes=int(args.max_upload_mb * 1024 * 1024), max_pixels=args.max_pixels)
    backend = load_backend(
        args.model, RunnerOptions(args.runtime, args.precision, threads=args.threads), weights=args.weights
    )
    app = create_app(backend, limits, max_batch=args.max_batch, max_queue=args.max_queue)
    if not _is_loopback(args.host):
        print(f"lightseg serve: listening on {args.host}: reachable from other machines, no authentication")
    info = backend.info
    print(f"lightseg serve: {info.name} ({info.num_classes} classes, {info.runtime}, {info.precision})")
    uvicorn.run(app, host=args.host, port=args.port, access_log=args.access_log, log_level="info")
    return 0


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
