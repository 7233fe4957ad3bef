"""Load on ``lightseg serve``: latency percentiles, throughput and errors at several concurrencies.

Starts ``lightseg serve`` (CGRSeg-T with CamVid's 11 classes) as a separate process bound to
127.0.0.1 for each ``--runtime`` (``auto``: no ``--runtime``, the default path measured on the
first request), then, for each concurrency c, keeps c requests in flight until its share of
``--requests`` has been answered: ``POST /v1/segment`` with a real CamVid image (480 x 360 PNG,
cycling through the test split), the palette PNG label map back. The requests are split into
``--rounds`` rounds that visit every server and every level in turn (the servers' order reversed
every other round), so a change of machine load hits all alike. The first request of each server
is timed on its own: for the default path it includes the export and the measurement, in a cache
of this run (``--cache``).
Client-side latency is from sending the request to the last byte of the answer; the server's own
breakdown (decode, queue, inference) comes from its ``Server-Timing`` header. The client runs on
the same machine (one asyncio process), so it competes with the server for the CPU.

The weights are random: the network does the same work as a trained one, but its labels change
almost everywhere, which sends the full-resolution label step down its slowest path
(see ``upsample_argmax``); a trained model's answers are somewhat faster.

Writes ``benchmarks/results/serve_load_<model>_<runtimes>_<cpu>_<cores>c.json`` and ``.md``, with the
CPU, core count, versions, the 1-minute load average before and after, and a free-text note.

    python benchmarks/serve_load.py                      # 500 requests at c = 1, 4, 16, the default path
    python benchmarks/serve_load.py --runtime torch auto --concurrency 8 --requests 200 --note "shared CPU"
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import re
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
DATA = Path(os.environ.get("LIGHTSEG_DATA", ROOT.parent / "shared" / "data"))


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown-cpu"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def machine_tag() -> str:
    """``intel-xeon_2c`` from "Intel(R) Xeon(R) Processor" on 2 cores."""
    name = re.sub(r"\((r|tm)\)|\bprocessor\b|\bcpu\b", "", cpu_model(), flags=re.IGNORECASE)
    return f"{_slug(name)}_{os.cpu_count()}c"


def write_results(stem: str, doc: dict, markdown: str) -> None:
    """``results/<stem>.json`` and ``.md``; the markdown is printed too."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown)
    print(markdown)


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_model(folder: Path, name: str) -> Path:
    """Random-weight ``name`` with CamVid's classes and palette, as a lightseg checkpoint."""
    import torch

    from lightseg import create_model, save_weights
    from lightseg.data.camvid import CamVid

    torch.manual_seed(0)
    model = create_model(name, num_classes=len(CamVid.CLASSES))
    return save_weights(model, folder / f"{name}.safetensors", classes=CamVid.CLASSES, palette=CamVid.PALETTE)


def start_server(
    checkpoint: Path, port: int, runtime: str, args: argparse.Namespace, cache: Path
) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "lightseg.cli", "serve", str(checkpoint), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--max-batch", str(args.max_batch), "--no-access-log"]
    if runtime != "auto":
        cmd += ["--runtime", runtime]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LIGHTSEG_CACHE": str(cache)}
    env.pop("LIGHTSEG_RUNTIME", None)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def server_timing(header: str) -> dict[str, float]:
    """``decode;dur=1.2, queue;dur=0.1`` -> {"decode": 1.2, "queue": 0.1}."""
    out = {}
    for part in header.split(","):
        name, _, dur = part.strip().partition(";dur=")
        if dur:
            out[name] = float(dur)
    return out


async def wait_healthy(client, proc: subprocess.Popen, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"lightseg serve exited:\n{proc.stdout.read()}")
        try:
            if (await client.get("/healthz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.5)
    raise SystemExit("lightseg serve did not become healthy")


@dataclass
class Samples:
    """Raw measurements of one concurrency level, accumulated over rounds."""

    concurrency: int
    latencies: list[float] = field(default_factory=list)
    timings: list[dict[str, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    sent: int = 0

    def summary(self) -> dict:
        q = statistics.quantiles(self.latencies, n=100, method="inclusive")

        def median_of(key: str) -> float:
            return round(statistics.median(t[key] for t in self.timings), 1)

        return {
            "concurrency": self.concurrency,
            "requests": self.sent,
            "errors": len(self.errors),
            "error_samples": self.errors[:5],
            "throughput_rps": round(self.sent / self.wall_s, 2),
            "wall_s": round(self.wall_s, 2),
            "p50_ms": round(q[49], 1),
            "p90_ms": round(q[89], 1),
            "p99_ms": round(q[98], 1),
            "max_ms": round(max(self.latencies), 1),
            "server_median_ms": {k: median_of(k) for k in ("decode", "queue", "inference", "total")},
        }


async def load(client, images: list[bytes], requests: int, samples: Samples) -> None:
    """``requests`` POSTs with ``samples.concurrency`` in flight, recorded into ``samples``."""
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < requests:
            i = next_index
            next_index += 1
            samples.sent += 1
            start = time.perf_counter()
            try:
                r = await client.post("/v1/segment", content=images[i % len(images)])
            except Exception as e:  # a refused or dropped connection counts as an error
                samples.errors.append(f"{type(e).__name__}: {e}")
                continue
            samples.latencies.append((time.perf_counter() - start) * 1e3)
            if r.status_code != 200:
                samples.errors.append(f"{r.status_code}: {r.text[:200]}")
            else:
                samples.timings.append(server_timing(r.headers.get("server-timing", "")))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(samples.concurrency)))
    samples.wall_s += time.perf_counter() - start


@dataclass
class Server:
    runtime: str  # as asked for: torch, onnxruntime, openvino or auto (no --runtime)
    proc: subprocess.Popen
    port: int
    client: object = None
    first_request_s: float = 0.0
    path: dict = field(default_factory=dict)  # GET /v1/model: runtime, precision, why, workers
    levels: list = field(default_factory=list)


async def run(args: argparse.Namespace, images: list[bytes], servers: list[Server]) -> None:
    """Warm up every server (its first request timed on its own), then ``--rounds`` rounds; each
    round runs every server (order reversed every other round) at every concurrency level with its
    share of the requests, so that a change of machine load hits every server and level alike."""
    import httpx

    limits = httpx.Limits(
        max_connections=max(args.concurrency), max_keepalive_connections=max(args.concurrency)
    )
    for s in servers:
        s.client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{s.port}", timeout=900, limits=limits)
        await wait_healthy(s.client, s.proc)
        start = time.perf_counter()
        (await s.client.post("/v1/segment", content=images[0])).raise_for_status()
        s.first_request_s = round(time.perf_counter() - start, 2)
        for i in range(1, args.warmup):
            (await s.client.post("/v1/segment", content=images[i % len(images)])).raise_for_status()
        s.path = {k: v for k, v in (await s.client.get("/v1/model")).json().items() if k in PATH_KEYS}
        s.levels = [Samples(c) for c in args.concurrency]
    try:
        for r in range(args.rounds):
            share = args.requests * (r + 1) // args.rounds - args.requests * r // args.rounds
            for s in servers if r % 2 == 0 else servers[::-1]:
                for samples in s.levels:
                    await load(s.client, images, share, samples)
        for s in servers:
            assert (await s.client.get("/healthz")).status_code == 200
    finally:
        for s in servers:
            await s.client.aclose()


PATH_KEYS = ("runtime", "precision", "why", "workers")


def markdown(doc: dict) -> str:
    levels = ", ".join(str(c) for c in doc["concurrency"])
    lines = [
        f"# lightseg serve under load: {doc['model']} at {doc['image_size']}, {' vs '.join(doc['runtimes'])}",
        "",
        f"CPU: {doc['cpu']} ({doc['cores']} cores), {doc['date']}; server threads: {doc['threads'] or 'runtime default'}, "
        f"max batch {doc['max_batch']}; {doc['warmup']} warm-up requests, then {doc['requests']} requests per "
        f"server and concurrency in {doc['rounds']} interleaved rounds (every server at {levels}, the servers' "
        "order reversed every other round).",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in doc["versions"].items()) + ".",
        f"Load average (1 min) before/after: {doc['load_before']} / {doc['load_after']}.",
        "Random weights: labels change almost everywhere, the slowest case of the label upsampling; "
        "the client shares the CPU with the server.",
    ]
    if doc["note"]:
        lines.append(f"Note: {doc['note']}")
    lines += [
        "",
        "| server (--runtime) | runs | workers | first request (s) | concurrency | requests | errors | throughput (req/s) | p50 (ms) | p90 (ms) | p99 (ms) | server inference p50 (ms) | server queue p50 (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for srv in doc["servers"]:
        path = srv["path"]
        for r in srv["results"]:
            s = r["server_median_ms"]
            lines.append(
                f"| {srv['runtime']} | {path.get('runtime')} {path.get('precision')} | {path.get('workers')} | "
                f"{srv['first_request_s']} | {r['concurrency']} | {r['requests']} | {r['errors']} | "
                f"{r['throughput_rps']} | {r['p50_ms']} | {r['p90_ms']} | {r['p99_ms']} | {s['inference']} | {s['queue']} |"
            )
    lines += [""] + [f"- `{srv['runtime']}`: {srv['path'].get('why')}" for srv in doc["servers"]]
    lines += ["", f"Command: `{doc['command']}`", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cgrseg_t")
    p.add_argument(
        "--runtime",
        nargs="+",
        default=["auto"],
        choices=["auto", "torch", "onnxruntime", "openvino"],
        help="one server per runtime, timed in alternating rounds (auto: no --runtime, the default path)",
    )
    p.add_argument("--requests", type=int, default=500, help="requests per server and concurrency level")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds the requests are split into")
    p.add_argument("--max-batch", type=int, default=4)
    p.add_argument(
        "--threads", type=int, default=None, help="server inference threads (default: the runtime's)"
    )
    p.add_argument("--images", type=int, default=20, help="distinct CamVid test images to cycle through")
    p.add_argument("--note", default="")
    p.add_argument(
        "--out", default=None, help="result file stem (default: serve_load_<model>_<runtimes>_<cpu>)"
    )
    args = p.parse_args()

    files = sorted((DATA / "camvid" / "test").glob("*.png"))[: args.images]
    if not files:
        raise SystemExit(f"no CamVid test images under {DATA / 'camvid' / 'test'} (set LIGHTSEG_DATA)")
    images = [f.read_bytes() for f in files]
    load_before = _load()
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        checkpoint = save_model(Path(tmp), args.model)
        servers = []
        try:
            for runtime in args.runtime:
                port = free_port()
                servers.append(
                    Server(runtime, start_server(checkpoint, port, runtime, args, Path(tmp) / "cache"), port)
                )
            asyncio.run(run(args, images, servers))
        finally:
            for srv in servers:
                srv.proc.terminate()
                srv.proc.wait(30)
    from PIL import Image

    w, h = Image.open(files[0]).size
    doc = {
        "model": args.model,
        "runtimes": args.runtime,
        "image_size": f"{w}x{h}",
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "host": socket.gethostname(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "threads": args.threads,
        "max_batch": args.max_batch,
        "warmup": args.warmup,
        "requests": args.requests,
        "rounds": args.rounds,
        "concurrency": args.concurrency,
        "versions": {
            "python": platform.python_version(),
            **{
                pkg: version(pkg)
                for pkg in ("torch", "onnxruntime", "openvino", "starlette", "uvicorn", "httpx", "pillow")
            },
        },
        "load_before": load_before,
        "load_after": _load(),
        "note": args.note,
        "command": shlex.join(["python", "benchmarks/serve_load.py", *sys.argv[1:]]),
        "servers": [
            {
                "runtime": srv.runtime,
                "path": srv.path,
                "first_request_s": srv.first_request_s,
                "results": [samples.summary() for samples in srv.levels],
            }
            for srv in servers
        ],
    }
    stem = args.out or f"serve_load_{args.model}_{'-vs-'.join(args.runtime)}_{machine_tag()}"
    write_results(stem, doc, markdown(doc))


if __name__ == "__main__":
    main()
