"""`lightseg serve`: the segmentation service and its demo page on uvicorn."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path

from lightseg.cli.options import add_scale_args, scale_arg
from lightseg.errors import ConfigError

TOKEN_ENV = "LIGHTSEG_SERVE_TOKEN"


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
        default=None,
        help="default: as predict, the path measured fastest on this machine on the first request of "
        "each image size, cached (an exported file: its own runtime)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="default: the measured path's (with --runtime: fp32; a file: its own)",
    )
    add_scale_args(p, "1.25G")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a Host name or address clients use, besides the bound address and localhost (repeatable; '*': any)",
    )
    p.add_argument(
        "--token-file",
        type=Path,
        default=None,
        help=f"file holding the bearer token every request must carry (else ${TOKEN_ENV}); "
        "required when --host is beyond loopback",
    )
    p.add_argument(
        "--no-auth",
        action="store_true",
        help="serve beyond loopback without a token (e.g. behind a proxy that authenticates)",
    )
    p.add_argument("--threads", type=int, default=None, help="inference threads in all (default: every core)")
    p.add_argument(
        "--streams",
        type=int,
        default=None,
        help="inferences run at once, sharing the threads (OpenVINO streams, ONNX Runtime sessions; "
        "default: one per core up to 4, then one per two cores, at most 8; eager torch: 1)",
    )
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload in MiB (default 20)")
    p.add_argument(
        "--max-pixels",
        type=int,
        default=16 * 1024 * 1024,  # Limits.max_pixels (the serve extra may be absent here)
        help="largest width x height (default 16 Mi: 4096 x 4096, 12 MP phone photos)",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=4,
        help="run up to N waiting same-size requests as one batch (1: no batching)",
    )
    p.add_argument("--max-queue", type=int, default=64, help="waiting requests before answering 503")
    p.add_argument(
        "--max-connections",
        type=int,
        default=512,
        help="open connections; a new one beyond closes the longest-idle one, or gets a 503 (default 512)",
    )
    p.add_argument(
        "--max-uploads", type=int, default=16, help="uploads received at once; more get a 503 (default 16)"
    )
    p.add_argument(
        "--header-timeout", type=float, default=10.0, help="seconds to send a request head (default 10)"
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=10.0,
        help="seconds an upload may pause, and its grace before --min-upload-kib-s applies (default 10)",
    )
    p.add_argument(
        "--min-upload-kib-s",
        type=float,
        default=32.0,
        help="slowest average upload rate accepted after the grace, KiB/s (default 32)",
    )
    p.add_argument(
        "--keep-alive", type=float, default=5.0, help="seconds an idle connection stays open (default 5)"
    )
    p.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True)


def run_serve(args: argparse.Namespace, rest: list[str]) -> int:
    try:
        import uvicorn

        from lightseg.deploy.memory import SERVE_BUDGET, describe
        from lightseg.deploy.options import RunnerOptions
        from lightseg.deploy.scale import describe_scale
        from lightseg.serve import Access, Limits, create_app, load_backend, server_config
        from lightseg.serve.guard import LOOPBACK_HOSTS
        from lightseg.serve.server import ensure_descriptors, limit_malloc_arenas
    except ImportError as e:
        print(f"lightseg serve needs the serve extra: pip install 'lightseg[serve]' ({e})", file=sys.stderr)
        return 2
    try:
        limits = Limits(
            max_bytes=int(args.max_upload_mb * 1024 * 1024),
            max_pixels=args.max_pixels,
            max_connections=args.max_connections,
            max_uploads=args.max_uploads,
            header_timeout=args.header_timeout,
            body_timeout=args.body_timeout,
            min_upload_rate=args.min_upload_kib_s * 1024,
            keep_alive=args.keep_alive,
        )
    except ValueError as e:
        raise ConfigError(
            f"{e}: every limit (--max-*, --*-timeout, --min-upload-kib-s, --keep-alive) is > 0"
        ) from None
    token, source = _token(args.token_file)
    exposed = not _is_loopback(args.host)
    if exposed and token is None and not args.no_auth:
        raise ConfigError(
            f"--host {args.host} is reachable from other machines: give a token (--token-file FILE or "
            f"${TOKEN_ENV}), or serve without one with --no-auth (e.g. behind a proxy that authenticates)"
        )
    try:
        access = Access(hosts=(args.host, *LOOPBACK_HOSTS, *args.allowed_host), token=token)
    except ValueError as e:
        raise ConfigError(f"the token in {source}: {e}") from None
    ensure_descriptors(limits)
    limit_malloc_arenas()  # before the model's and the server's threads start
    if args.streams is not None and args.streams < 1:
        raise ConfigError(f"--streams must be at least 1, got {args.streams}")
    backend = load_backend(
        args.model,
        RunnerOptions(args.runtime, args.precision, threads=args.threads),
        weights=args.weights,
        streams=args.streams,
        scale=scale_arg(args.scale),
        max_memory=args.max_memory or SERVE_BUDGET,
    )
    app = create_app(backend, limits, max_batch=args.max_batch, max_queue=args.max_queue, access=access)
    info, path = backend.info, backend.path()
    running = (
        f"{path['runtime']} {path['precision']}"
        if path["runtime"]
        else "the fastest path, measured on the first request of each image size"
    )
    print(
        f"lightseg serve: {info.name} ({info.num_classes} classes; {running}; "
        f"{backend.workers} inference worker{'s' if backend.workers > 1 else ''})"
    )
    seg = backend.segmenter
    print(
        f"lightseg serve: images seen at scale {describe_scale(seg.bound)}; "
        f"passes within {describe(backend.info.max_memory)} in all"
    )
    auth = "a bearer token" if token else "no authentication"
    where = "reachable from other machines" if exposed else "this machine only"
    print(f"lightseg serve: {where}, {auth}; answers to Host {', '.join(access.hosts)}")
    config = server_config(app, host=args.host, port=args.port, access_log=args.access_log, log_level="info")
    uvicorn.Server(config).run()
    return 0


def _token(path: Path | None) -> tuple[str | None, str]:
    """(the bearer token from ``path`` or the environment, or ``None``; where it came from)."""
    if path is None:
        return os.environ.get(TOKEN_ENV), f"${TOKEN_ENV}"
    try:
        return path.read_text(encoding="utf-8").strip(), str(path)
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--token-file {path} cannot be read ({e})") from e


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
