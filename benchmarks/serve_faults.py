"""Faults on ``lightseg serve``: slow clients, aborted uploads, thousands of idle connections,
malformed requests and a Host-header probe, against a real server on 127.0.0.1 (loopback only).

Starts ``lightseg serve`` (CGRSeg-T, random weights, CamVid's classes; the command's default
limits and access log) as a separate process with its output in a log file, warms it up with real
CamVid uploads (alone and in concurrent bursts, so that batches have run), and records its RSS,
open file descriptors and log size. Then, while a health checker opens a new connection for
``GET /healthz`` every half second:

1. slow clients: heads dripped one byte a second; uploads that stall after 4 KiB; uploads
   trickled at one byte a second; and uploads beyond ``--max-uploads`` while those hold the slots;
2. aborted uploads: closed (FIN) or reset (RST) mid-body, closed mid-head, and uploads whose client
   leaves before the answer;
3. idle connections, ``--idle`` of them at once, held until the server closes them;
4. malformed requests (garbage, bad lengths and encodings, oversized heads, odd targets), each
   kind ``--repeats`` times;
5. a Host-header probe: a foreign Host on every route, a DNS-rebinding style name, the slash
   redirect that used to be built from the Host header.

Then it waits for the server's timers, records RSS, descriptors and log size again, and counts
tracebacks and lines in the log. Every phase is bounded in count and time (``--cap-s``).

Writes ``benchmarks/results/serve_faults_<cpu>_<cores>c.json`` and ``.md``.

    python benchmarks/serve_faults.py
    python benchmarks/serve_faults.py --idle 500 --slow 10 --aborted 60 --repeats 2 --out smoke
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime as dt
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from serve_load import DATA, ROOT, cpu_model, free_port, machine_tag, save_model, write_results

from lightseg.serve import Limits

HOST = "127.0.0.1"
LIMITS = Limits()  # the command's defaults, which this measures
HEAD = f"Host: {HOST}\r\n".encode()


# --------------------------------------------------------------------------------------------------
# The server process
# --------------------------------------------------------------------------------------------------
def process_stats(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kib = int(re.search(r"VmRSS:\s+(\d+) kB", status)[1])
    return {"rss_mib": round(rss_kib / 1024, 1), "fds": len(os.listdir(f"/proc/{pid}/fd"))}


class Sampler:
    """The server's RSS and descriptors every 0.2 s: the peak of each phase."""

    def __init__(self, pid: int):
        self.pid, self.peak = pid, {"rss_mib": 0.0, "fds": 0}

    def reset(self) -> None:
        self.peak = {"rss_mib": 0.0, "fds": 0}

    async def run(self) -> None:
        while True:
            now = process_stats(self.pid)
            self.peak = {k: max(self.peak[k], now[k]) for k in now}
            await asyncio.sleep(0.2)


class HealthChecker:
    """``GET /healthz`` on a new connection every 0.5 s; each answer's time, or why none came."""

    def __init__(self, port: int):
        self.port, self.samples = port, []  # (monotonic time, ok, ms or error)

    async def run(self) -> None:
        request = b"GET /healthz HTTP/1.1\r\n" + HEAD + b"Connection: close\r\n\r\n"
        while True:
            start = time.monotonic()
            try:
                status, _ = await asyncio.wait_for(exchange(self.port, request), 5)
                self.samples.append((start, status == 200, round((time.monotonic() - start) * 1e3, 1)))
            except (OSError, asyncio.TimeoutError) as e:
                self.samples.append((start, False, type(e).__name__))
            await asyncio.sleep(max(0.0, 0.5 - (time.monotonic() - start)))

    def summary(self, since: float, until: float) -> dict:
        window = [s for s in self.samples if since <= s[0] <= until]
        times = [s[2] for s in window if s[1]]
        return {
            "checks": len(window),
            "failed": [s[2] for s in window if not s[1]],
            "median_ms": round(statistics.median(times), 1) if times else None,
            "max_ms": max(times) if times else None,
        }


# --------------------------------------------------------------------------------------------------
# Raw HTTP clients
# --------------------------------------------------------------------------------------------------
def status_of(raw: bytes) -> int | None:
    m = re.match(rb"HTTP/1\.[01] (\d{3})", raw)
    return int(m[1]) if m else None


async def read_to_close(reader: asyncio.StreamReader, cap_s: float) -> tuple[bytes, bool]:
    """What the server sends until it closes (True) or ``cap_s`` passes (False)."""
    out, deadline = b"", time.monotonic() + cap_s
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), deadline - time.monotonic()):
            out += chunk
    except asyncio.TimeoutError:
        return out, False
    except ConnectionError:
        pass
    return out, True


async def exchange(port: int, request: bytes) -> tuple[int | None, bytes]:
    """Send ``request`` and read the first answer's head (the connection is then closed)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(request)
        await writer.drain()
        raw = b""
        while b"\r\n\r\n" not in raw and (chunk := await reader.read(65536)):
            raw += chunk
        return status_of(raw), raw
    finally:
        writer.close()


async def held(port: int, first: bytes, drip: bytes = b"", every_s: float = 1.0, cap_s: float = 60) -> dict:
    """Send ``first``, then ``drip`` one byte every ``every_s``; how the server answers and when it
    closes the connection (within ``cap_s``)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    start = time.monotonic()

    async def dripping() -> None:
        try:
            writer.write(first)
            await writer.drain()
            for byte in drip:
                await asyncio.sleep(every_s)
                writer.write(bytes([byte]))
                await writer.drain()
        except ConnectionError:
            pass

    sender = asyncio.create_task(dripping())
    raw, closed = await read_to_close(reader, cap_s)
    sender.cancel()
    writer.close()
    return {"status": status_of(raw), "closed_s": round(time.monotonic() - start, 2) if closed else None}


def upload_head(length: int, path: str = "/v1/segment") -> bytes:
    return f"POST {path} HTTP/1.1\r\n".encode() + HEAD + f"Content-Length: {length}\r\n\r\n".encode()


def closes(results: list[dict]) -> dict:
    done = [r["closed_s"] for r in results if r["closed_s"] is not None]
    return {
        "clients": len(results),
        "statuses": dict(collections.Counter(str(r["status"]) for r in results)),
        "still_open_at_cap": len(results) - len(done),
        "closed_s": {"min": min(done), "median": statistics.median(done), "max": max(done)} if done else None,
    }


# --------------------------------------------------------------------------------------------------
# The phases
# --------------------------------------------------------------------------------------------------
async def slow_clients(port: int, args) -> dict:
    """Slow heads, stalled and trickled uploads (together filling the upload slots), then uploads
    beyond the slots."""
    drip_head = b"GET /healthz HTTP/1.1\r\n" + HEAD + b"X-Slow: " + b"a" * 200 + b"\r\n\r\n"
    slots = LIMITS.max_uploads // 2
    body = os.urandom(4096)
    tasks = {
        "slow_head_1_byte_per_s": [
            held(port, b"G", drip_head[1:], cap_s=args.cap_s) for _ in range(args.slow)
        ],
        "upload_stalled_after_4_KiB": [
            held(port, upload_head(1 << 20) + body, cap_s=args.cap_s) for _ in range(slots)
        ],
        "upload_at_1_byte_per_s": [
            held(port, upload_head(1 << 20), b"\x89PNG" * 100, cap_s=args.cap_s) for _ in range(slots)
        ],
    }
    running = {kind: [asyncio.create_task(c) for c in coros] for kind, coros in tasks.items()}
    await asyncio.sleep(2)  # the upload slots are all taken now
    beyond = [
        asyncio.create_task(held(port, upload_head(1 << 20) + body, cap_s=args.cap_s)) for _ in range(slots)
    ]
    out = {kind: closes(await asyncio.gather(*ts)) for kind, ts in running.items()}
    out["upload_beyond_max_uploads"] = closes(await asyncio.gather(*beyond))
    return out


async def aborted(port: int, args, image: bytes) -> dict:
    """Uploads closed or reset mid-body, heads closed midway, clients gone before the answer."""

    async def one(kind: str) -> None:
        _, writer = await asyncio.open_connection(HOST, port)
        if kind == "mid_head":
            writer.write(upload_head(1 << 20)[:20])
        elif kind == "before_answer":
            writer.write(upload_head(len(image)) + image)
        else:
            writer.write(upload_head(1 << 20) + os.urandom(16384))
        await writer.drain()
        await asyncio.sleep(0.3)
        if kind == "mid_body_rst":  # SO_LINGER 0: the close resets the connection
            writer.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
        writer.close()

    kinds = ["mid_body_fin", "mid_body_rst", "mid_head"] * (args.aborted // 3) + ["before_answer"] * 10
    gate = asyncio.Semaphore(20)

    async def gated(kind: str) -> None:
        async with gate:
            await one(kind)

    await asyncio.gather(*(gated(k) for k in kinds))
    await asyncio.sleep(3)  # the last inferences finish
    return {"clients": dict(collections.Counter(kinds))}


async def idle_connections(port: int, args) -> dict:
    """``--idle`` connections that never send a byte, opened together; when each is closed."""
    start = time.monotonic()
    closed_at: list[float] = []
    refused = 0

    async def one() -> None:
        nonlocal refused
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            refused += 1
            return
        _, closed = await read_to_close(reader, args.cap_s)
        if closed:
            closed_at.append(time.monotonic() - start)
        writer.close()

    await asyncio.gather(*(one() for _ in range(args.idle)))
    return {
        "connections": args.idle,
        "connect_failed": refused,
        "closed_by_server": len(closed_at),
        "last_closed_s": round(max(closed_at), 2) if closed_at else None,
    }


def malformed_requests() -> dict[str, tuple[bytes, str]]:
    """name -> (request, what a correct server answers)."""
    post = b"POST /v1/segment HTTP/1.1\r\n" + HEAD
    return {
        "random bytes": (os.urandom(64) + b"\r\n\r\n", "400"),
        "bad method token": (b"G@T / HTTP/1.1\r\n" + HEAD + b"\r\n", "400"),
        "HTTP/1.1 without Host": (b"GET /healthz HTTP/1.1\r\n\r\n", "400"),
        "HTTP/1.0 without Host": (b"GET /healthz HTTP/1.0\r\n\r\n", "400"),
        "HTTP/0.9 request line": (b"GET /\r\n\r\n", "400"),
        "Content-Length: abc": (post + b"Content-Length: abc\r\n\r\n", "400"),
        "Content-Length: -1": (post + b"Content-Length: -1\r\n\r\n", "400"),
        "Content-Length: 10^23": (post + b"Content-Length: 99999999999999999999999\r\n\r\n", "4xx"),
        "Content-Length and chunked": (
            post + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
            "400",
        ),
        "bad chunk size": (post + b"Transfer-Encoding: chunked\r\n\r\nZZZ\r\nabc\r\n", "400"),
        "Transfer-Encoding: gzip": (post + b"Transfer-Encoding: gzip\r\n\r\n", "400 or 501"),
        "NUL in a header": (b"GET /healthz HTTP/1.1\r\n" + HEAD + b"X: a\x00b\r\n\r\n", "400"),
        "space before colon": (b"GET /healthz HTTP/1.1\r\nHost : 127.0.0.1\r\n\r\n", "400"),
        "non-ASCII path": (b"GET /\xff\xfe HTTP/1.1\r\n" + HEAD + b"\r\n", "400"),
        "non-ASCII Host": (
            b"GET /healthz HTTP/1.1\r\nHost: \xff\xfe.example\r\nConnection: close\r\n\r\n",
            "400",
        ),
        "HTTP/2 preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "400"),
        # h11 caps a head that is still incomplete at 16 KiB; one that arrives whole in a read is parsed.
        "64 KiB header in one write": (
            b"GET /healthz HTTP/1.1\r\n" + HEAD + b"X-Big: " + b"a" * 65536 + b"\r\n\r\n",
            "200 (whole in one read) or 400",
        ),
        "endless header": (b"GET /healthz HTTP/1.1\r\n" + HEAD + b"X-Big: " + b"a" * 300_000, "400"),
        "16 KiB path": (
            b"GET /" + b"a" * 16000 + b" HTTP/1.1\r\n" + HEAD + b"Connection: close\r\n\r\n",
            "404",
        ),
        "absolute-form target": (
            b"GET http://evil.example/healthz HTTP/1.1\r\n" + HEAD + b"Connection: close\r\n\r\n",
            "404",
        ),
        "CONNECT": (b"CONNECT evil.example:443 HTTP/1.1\r\n" + HEAD + b"Connection: close\r\n\r\n", "404"),
        "multipart without boundary": (
            post + b"Content-Type: multipart/form-data\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
            "400",
        ),
        "truncated multipart": (
            post
            + b"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 10\r\nConnection: close\r\n\r\n--x\r\nabcde",
            "400",
        ),
        "not an image": (post + b"Content-Length: 5\r\nConnection: close\r\n\r\nhello", "415"),
    }


async def malformed(port: int, args) -> dict:
    out = {}
    for name, (request, expected) in malformed_requests().items():
        statuses = collections.Counter()
        for _ in range(args.repeats):
            try:
                status, _ = await asyncio.wait_for(exchange(port, request), 30)
            except (OSError, asyncio.TimeoutError) as e:
                status = type(e).__name__
            statuses[str(status)] += 1
        out[name] = {"expected": expected, "statuses": dict(statuses)}
    return out


async def host_probe(port: int) -> dict:
    def request(method: str, path: str, host: bytes, extra: bytes = b"") -> bytes:
        length = b"Content-Length: 0\r\n" if method == "POST" else b""
        return (
            f"{method} {path} HTTP/1.1\r\n".encode() + b"Host: " + host + b"\r\n" + length + extra + b"\r\n"
        )

    probes = {}
    for method, path in [("GET", "/"), ("GET", "/healthz"), ("GET", "/metrics"), ("GET", "/v1/model"),
                         ("POST", "/v1/segment"), ("POST", "/v1/segment/"), ("GET", "/v1/model/")]:  # fmt: skip
        for host in (
            b"evil.example",
            f"evil.example:{port}".encode(),
            b"127.0.0.1.evil.example",
            HOST.encode(),
        ):
            status, raw = await exchange(port, request(method, path, host))
            location = re.search(rb"\r\nlocation: ([^\r]*)", raw, re.IGNORECASE)
            probes[f"{method} {path} Host: {host.decode()}"] = {
                "status": status,
                "location": location[1].decode() if location else None,
            }
    status, _ = await exchange(
        port, request("GET", "/healthz", HOST.encode(), b"X-Forwarded-Host: evil.example\r\n")
    )
    probes["GET /healthz Host: 127.0.0.1, X-Forwarded-Host: evil.example"] = {
        "status": status,
        "location": None,
    }
    return probes


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------
def log_summary(text: str) -> dict:
    lines = text.splitlines()
    kinds = collections.Counter()
    for line in lines:
        if "the connection closed before the upload was complete" in line:
            kinds["connection closed mid-upload (info)"] += 1
        elif line.startswith("WARNING:"):
            kinds["warning: " + line.split(":", 1)[1].strip()[:60]] += 1
        elif line.startswith(("ERROR:", "CRITICAL:")):
            kinds["error: " + line.split(":", 1)[1].strip()[:60]] += 1
        elif re.match(r'INFO: +\S+ - "', line):
            kinds["access line (info)"] += 1
    return {
        "lines": len(lines),
        "bytes": len(text.encode()),
        "tracebacks": text.count("Traceback (most recent call last)"),
        "exception_in_asgi": text.count("Exception in ASGI application"),
        "by_kind": dict(kinds.most_common()),
    }


async def rejections(port: int) -> dict[str, float]:
    """The server's ``lightseg_rejections_total`` by reason, from ``/metrics``."""
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(b"GET /metrics HTTP/1.1\r\n" + HEAD + b"Connection: close\r\n\r\n")
    raw, _ = await read_to_close(reader, 10)
    writer.close()
    body = raw.split(b"\r\n\r\n", 1)[1].decode()
    found = re.findall(r'lightseg_rejections_total\{reason="(\w+)"\} (\S+)', body)
    return {reason: float(n) for reason, n in found}


async def run(args, proc: subprocess.Popen, port: int, log_path: Path, image: bytes) -> dict:
    deadline = time.monotonic() + 300
    while True:  # the model loads
        if proc.poll() is not None:
            raise SystemExit(f"lightseg serve exited:\n{log_path.read_text()}")
        try:
            if (await exchange(port, b"GET /healthz HTTP/1.1\r\n" + HEAD + b"\r\n"))[0] == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("lightseg serve did not come up")
        await asyncio.sleep(0.5)
    for _ in range(3):  # warm up: real uploads, alone and in batches as concurrent ones run, every route
        assert (await exchange(port, upload_head(len(image)) + image))[0] == 200
        burst = await asyncio.gather(*(exchange(port, upload_head(len(image)) + image) for _ in range(8)))
        assert [status for status, _ in burst] == [200] * 8
    for path in ("/", "/v1/model", "/metrics"):
        await exchange(port, f"GET {path} HTTP/1.1\r\n".encode() + HEAD + b"\r\n")
    await asyncio.sleep(LIMITS.keep_alive + 1)
    before = {**process_stats(proc.pid), "log_bytes": log_path.stat().st_size}

    sampler, health = Sampler(proc.pid), HealthChecker(port)
    background = [asyncio.create_task(sampler.run()), asyncio.create_task(health.run())]
    phases = {}
    for name, phase in [
        ("slow_clients", lambda: slow_clients(port, args)),
        ("aborted_uploads", lambda: aborted(port, args, image)),
        ("idle_connections", lambda: idle_connections(port, args)),
        ("malformed_requests", lambda: malformed(port, args)),
        ("host_probe", lambda: host_probe(port)),
    ]:
        sampler.reset()
        start, log_start, counted = time.monotonic(), log_path.stat().st_size, await rejections(port)
        print(f"phase {name} ...", flush=True)
        result = await phase()
        now = await rejections(port)
        phases[name] = {
            "result": result,
            "rejections": {k: int(v - counted[k]) for k, v in now.items() if v > counted[k]},
            "wall_s": round(time.monotonic() - start, 1),
            "healthz": health.summary(start, time.monotonic()),
            "server_peak": dict(sampler.peak),
            "log_bytes_added": log_path.stat().st_size - log_start,
        }
    settle = max(LIMITS.header_timeout, LIMITS.body_timeout, LIMITS.keep_alive) + 2
    await asyncio.sleep(settle)  # every timer the faults started has fired
    after = {**process_stats(proc.pid), "log_bytes": log_path.stat().st_size}
    for task in background:
        task.cancel()
    served_after = (await exchange(port, upload_head(len(image)) + image))[0]
    return {
        "before": before,
        "after": after,
        "settle_s": settle,
        "phases": phases,
        "healthz_overall": health.summary(0, time.monotonic()),
        "segment_after": served_after,
        "rejections": await rejections(port),
    }


def verdicts(doc: dict) -> dict:
    slow = doc["phases"]["slow_clients"]["result"]
    head_max = slow["slow_head_1_byte_per_s"]["closed_s"]["max"]
    upload_max = max(
        slow[k]["closed_s"]["max"] for k in ("upload_stalled_after_4_KiB", "upload_at_1_byte_per_s")
    )
    slack = 1.0
    before, after = doc["before"], doc["after"]
    return {
        f"slow heads closed within header_timeout {LIMITS.header_timeout:g} s (+{slack:g} s)": head_max
        <= LIMITS.header_timeout + slack,
        f"stalled uploads closed within body_timeout {LIMITS.body_timeout:g} s (+{slack:g} s)": upload_max
        <= LIMITS.body_timeout + slack,
        "no client still open at the cap": all(r["still_open_at_cap"] == 0 for r in slow.values()),
        "healthz answered every check": not doc["healthz_overall"]["failed"],
        "0 tracebacks in the log": doc["log"]["tracebacks"] == 0 and doc["log"]["exception_in_asgi"] == 0,
        "no 5xx answer to a malformed request": all(
            not any(s.startswith("5") for s in r["statuses"])
            for r in doc["phases"]["malformed_requests"]["result"].values()
        ),
        "no redirect built from the Host header": all(
            p["location"] is None for p in doc["phases"]["host_probe"]["result"].values()
        ),
        "RSS back within 10%": after["rss_mib"] <= 1.10 * before["rss_mib"],
        "descriptors back to their start": after["fds"] == before["fds"],
    }


def markdown(doc: dict) -> str:
    b, a = doc["before"], doc["after"]
    lines = [
        f"# lightseg serve under faults: {doc['model']} ({doc['runtime']}), loopback only",
        "",
        f"CPU: {doc['cpu']} ({doc['cores']} cores), {doc['date']}. "
        + "Versions: "
        + ", ".join(f"{k} {v}" for k, v in doc["versions"].items())
        + ".",
        "Server limits (the command's defaults): "
        + ", ".join(f"{k}={v}" for k, v in doc["limits"].items())
        + f". Client: {doc['args']['idle']} idle connections, {doc['args']['slow']} slow heads, "
        f"{doc['args']['aborted']} aborted uploads, malformed requests x{doc['args']['repeats']}.",
    ]
    if doc["note"]:
        lines.append(f"Note: {doc['note']}")
    lines += ["", "## Verdicts", "", "| check | held |", "|---|---|"]
    lines += [f"| {k} | {'yes' if v else '**no**'} |" for k, v in doc["verdicts"].items()]
    lines += [
        "",
        "## Server before and after",
        "",
        "| | RSS (MiB) | open descriptors | log (bytes) |",
        "|---|---|---|---|",
        f"| before (after warm-up) | {b['rss_mib']} | {b['fds']} | {b['log_bytes']} |",
        f"| after ({doc['settle_s']:g} s settle) | {a['rss_mib']} | {a['fds']} | {a['log_bytes']} |",
        "",
        "## Phases",
        "",
        "| phase | wall (s) | healthz checks | healthz failed | healthz max (ms) | peak RSS (MiB) "
        "| peak descriptors | log added (bytes) | refused by the server (/metrics) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, p in doc["phases"].items():
        h, pk = p["healthz"], p["server_peak"]
        lines.append(
            f"| {name} | {p['wall_s']} | {h['checks']} | {len(h['failed'])} | {h['max_ms']} | "
            f"{pk['rss_mib']} | {pk['fds']} | {p['log_bytes_added']} | "
            + (", ".join(f"{k} {v}" for k, v in p["rejections"].items()) or "-")
            + " |"
        )
    lines += [
        "",
        "### Slow clients",
        "",
        "| client | n | answers | closed after (s): min / median / max | open at cap |",
    ]
    lines.append("|---|---|---|---|---|")
    for kind, r in doc["phases"]["slow_clients"]["result"].items():
        c = r["closed_s"]
        lines.append(
            f"| {kind} | {r['clients']} | {r['statuses']} | {c['min']} / {c['median']} / {c['max']} | {r['still_open_at_cap']} |"
        )
    idle, idle_phase = doc["phases"]["idle_connections"]["result"], doc["phases"]["idle_connections"]
    accepted = sum(idle_phase["rejections"].get(k, 0) for k in ("idle_evicted", "header_timeout"))
    lines += [
        "",
        f"### Idle connections: {idle['connections']} opened at once, {idle['closed_by_server']} closed by "
        f"the server (last after {idle['last_closed_s']} s; /metrics: {accepted} accepted, then evicted or "
        f"timed out), {idle['connect_failed']} failed to connect; server peak "
        f"{idle_phase['server_peak']['fds']} descriptors.",
        "",
        "Connections the client still held at --cap-s "
        f"({doc['args']['cap_s']:g} s) had never reached the server process: /metrics counts as many "
        "accepted connections as were closed. Opening thousands at once overflows the server's accept "
        "queue (128), and Linux then drops the last step of a handshake that the client's kernel already "
        "counts as done.",
        "",
        "### Malformed requests",
        "",
        "| request | expected | answers |",
        "|---|---|---|",
    ]
    for name, r in doc["phases"]["malformed_requests"]["result"].items():
        lines.append(f"| {name} | {r['expected']} | {r['statuses']} |")
    lines += ["", "### Host probe", "", "| request | status | Location |", "|---|---|---|"]
    for name, r in doc["phases"]["host_probe"]["result"].items():
        lines.append(f"| {name} | {r['status']} | {r['location'] or '-'} |")
    log = doc["log"]
    lines += [
        "",
        f"### Log: {log['lines']} lines, {log['bytes']} bytes, {log['tracebacks']} tracebacks",
        "",
        "| kind | lines |",
        "|---|---|",
    ]
    lines += [f"| {k} | {n} |" for k, n in log["by_kind"].items()]
    lines += [
        "",
        "Refusals counted by /metrics in all: "
        + ", ".join(f"{k} {v:g}" for k, v in doc["rejections"].items())
        + ".",
    ]
    lines += ["", f"Command: `{doc['command']}`", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cgrseg_t")
    p.add_argument("--runtime", default="torch", choices=["torch", "onnxruntime", "openvino"])
    p.add_argument("--idle", type=int, default=3000, help="idle connections opened at once")
    p.add_argument("--slow", type=int, default=50, help="clients dripping a head one byte a second")
    p.add_argument("--aborted", type=int, default=300, help="aborted uploads (three kinds)")
    p.add_argument("--repeats", type=int, default=10, help="times each malformed request is sent")
    p.add_argument("--cap-s", type=float, default=60.0, help="longest a client waits for the server to close")
    p.add_argument("--keep-log", type=Path, default=None, help="copy the server's log here")
    p.add_argument("--note", default="")
    p.add_argument("--out", default=None, help="result file stem (default: serve_faults_<cpu>)")
    args = p.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # the client holds --idle sockets
    want = args.idle + args.slow + 1000
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, want), hard))
    image = sorted((DATA / "camvid" / "test").glob("*.png"))[0].read_bytes()
    with tempfile.TemporaryDirectory(prefix="serve-faults-") as tmp:
        checkpoint = save_model(Path(tmp), args.model)
        port, log_path = free_port(), Path(tmp) / "server.log"
        cmd = [
            sys.executable,
            "-m",
            "lightseg.cli",
            "serve",
            str(checkpoint),
            "--host",
            HOST,
            "--port",
            str(port),
        ]
        cmd += ["--runtime", args.runtime]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        with log_path.open("wb") as log:
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            doc = asyncio.run(run(args, proc, port, log_path, image))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        doc["log"] = log_summary(log_path.read_text(errors="replace"))
        if args.keep_log:
            shutil.copyfile(log_path, args.keep_log)
    doc = {
        "model": args.model,
        "runtime": args.runtime,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "host": socket.gethostname(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": {
            "python": platform.python_version(),
            **{pkg: version(pkg) for pkg in ("torch", "starlette", "uvicorn", "h11")},
        },
        "limits": {k: v for k, v in vars(LIMITS).items()},
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "note": args.note,
        "command": shlex.join(["python", "benchmarks/serve_faults.py", *sys.argv[1:]]),
        **doc,
    }
    doc["verdicts"] = verdicts(doc)
    stem = args.out or f"serve_faults_{machine_tag()}"
    write_results(stem, doc, markdown(doc))


if __name__ == "__main__":
    main()
