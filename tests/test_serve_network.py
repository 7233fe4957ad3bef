"""lightseg serve facing a network: timeouts, connection and upload caps, Host allow-list, token,
security headers, /metrics, and what a client that goes away leaves in the log.

A stand-in backend (labels = pixel sum mod 3) keeps these quick; the real model's answers are
tested in test_serve.py. Raw sockets play the clients a library would not be: a head that never
ends, an upload that stalls or trickles, a connection that never sends anything.
"""

import dataclasses
import io
import logging
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from helpers import serving  # noqa: E402

from lightseg.cli import main as cli_main  # noqa: E402
from lightseg.serve import Access, Limits, create_app  # noqa: E402
from lightseg.serve.backend import Backend, ModelInfo  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
INFO = ModelInfo("stand-in", ("a", "b", "c"), ((0, 0, 0), (255, 0, 0), (0, 255, 0)), "torch", "fp32", 32)
# Small and quick, each limit in its own range so a test can tell which one acted.
QUICK = Limits(
    max_bytes=200_000,
    max_pixels=100_000,
    max_connections=8,
    max_uploads=2,
    header_timeout=0.6,
    body_timeout=0.6,
    min_upload_rate=4000,
    keep_alive=0.6,
)
SLACK = 3.0  # seconds a close may come after its deadline on a busy 2-core machine


class StandIn(Backend):
    def __init__(self):
        super().__init__(None, INFO)

    def segment(self, images):
        if any(im[0, 0, 0] == 13 for im in images):
            raise RuntimeError("a bug in the model")  # the 500 path
        return [im.astype(np.int64).sum(axis=2) % 3 for im in images]


def png(value: int = 0, size: tuple[int, int] = (8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((*size, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def app(limits: Limits = QUICK, **access):
    return create_app(StandIn(), limits, access=Access(**access) if access else None)


def connect(port: int, data: bytes = b"") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    if data:
        s.sendall(data)
    return s


def read_until_closed(s: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    start, out = time.monotonic(), b""
    with s:
        while chunk := s.recv(65536):
            out += chunk
    return out, time.monotonic() - start


def read_response(s: socket.socket) -> bytes:
    """One whole answer (head and Content-Length body) from ``s``, which stays open."""
    raw = b""
    while b"\r\n\r\n" not in raw:
        raw += s.recv(65536)
    length = int(re.search(rb"content-length: (\d+)", raw, re.IGNORECASE)[1])
    while len(raw.split(b"\r\n\r\n", 1)[1]) < length:
        raw += s.recv(65536)
    return raw


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") else 0


def head(method: str, path: str, length: int | None = None, host: str = "127.0.0.1") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def metrics(client) -> dict[str, float]:
    """``/metrics`` parsed by the text format's grammar: ``name{labels} value`` -> value."""
    text = client.get("/metrics").text
    sample = re.compile(r'([a-z_]+)(\{(?:[a-z_]+="[^"]*",?)*\})? (\S+)')
    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.fullmatch(r"# (HELP|TYPE) lightseg_[a-z_]+ .+", line), line
            continue
        m = sample.fullmatch(line)
        assert m, f"not a sample line: {line!r}"
        out[m[1] + (m[2] or "")] = float(m[3])
    return out


# --------------------------------------------------------------------------------------------------
# Timeouts: a client that stalls gives its connection back
# --------------------------------------------------------------------------------------------------
def test_stalled_head_is_answered_408_and_closed_at_the_header_timeout():
    with serving(app()) as port:
        raw, took = read_until_closed(connect(port, b"GET /healthz HTTP/1.1\r\nHo"))
        assert status_of(raw) == 408 and b'"error": "header_timeout"' in raw
        assert QUICK.header_timeout - 0.1 <= took <= QUICK.header_timeout + SLACK
        # A connection that never sends a byte is closed at the same deadline, without an answer.
        raw, took = read_until_closed(connect(port))
        assert raw == b"" and QUICK.header_timeout - 0.1 <= took <= QUICK.header_timeout + SLACK


def test_a_kept_alive_connection_closes_after_keep_alive_and_times_its_next_head():
    with serving(app()) as port:
        s = connect(port, head("GET", "/healthz"))
        assert status_of(read_response(s)) == 200
        raw, took = read_until_closed(s)  # silent after the answer
        assert raw == b"" and QUICK.keep_alive - 0.1 <= took <= QUICK.keep_alive + SLACK
        s = connect(port, head("GET", "/healthz"))
        assert status_of(read_response(s)) == 200
        time.sleep(QUICK.keep_alive / 2)
        s.sendall(b"GET /hea")  # the next head starts, then stalls: its deadline runs from here
        raw, took = read_until_closed(s)
        assert status_of(raw) == 408
        assert QUICK.header_timeout - 0.1 <= took <= QUICK.header_timeout + SLACK


def test_stalled_upload_is_answered_408_and_closed_at_the_body_timeout():
    with serving(app()) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        raw, took = read_until_closed(connect(port, head("POST", "/v1/segment", 5000) + png()[:20]))
        assert status_of(raw) == 408 and b"upload_too_slow" in raw and b"connection: close" in raw
        assert QUICK.body_timeout - 0.1 <= took <= QUICK.body_timeout + SLACK
        assert metrics(client)['lightseg_rejections_total{reason="upload_too_slow"}'] == 1


def test_upload_slower_than_the_minimum_rate_is_refused_one_above_it_is_served():
    """Both send for longer than body_timeout without ever pausing that long: only the average
    rate after the grace tells them apart (4000 B/s needed)."""
    noise = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")
    data = buf.getvalue()
    assert 40_000 < len(data) < QUICK.max_bytes

    def upload(port: int, piece: int, pause: float) -> tuple[bytes, float]:
        s = connect(port, head("POST", "/v1/segment", len(data)))
        start = time.monotonic()
        with s:
            try:
                for i in range(0, len(data), piece):
                    s.sendall(data[i : i + piece])
                    time.sleep(pause)
            except OSError:  # closed under us: read what it said
                pass
            raw = b""
            while (chunk := s.recv(65536)) and b"\r\n\r\n" not in raw:
                raw += chunk
        return raw, time.monotonic() - start

    with serving(app()) as port:
        raw, took = upload(port, 200, 0.1)  # 2000 B/s
        assert status_of(raw) == 408 and b"upload_too_slow" in raw
        # After t seconds it has sent about 2000 t bytes and needs 4000 (t - 0.6): it falls behind near 1.2 s.
        assert 1.0 <= took <= 1.2 + SLACK
        raw, took = upload(port, 4000, 0.1)  # 40 kB/s: about 1.2 s in all, longer than body_timeout
        assert status_of(raw) == 200, raw[:300]
        assert took > QUICK.body_timeout


def test_a_refused_body_is_drained_then_the_connection_closed_at_the_body_timeout():
    with serving(app()) as port:
        s = connect(port, head("POST", "/v1/model", 100_000) + b"x" * 10)
        raw, took = read_until_closed(s)  # the 405 at once, then the rest of the body never comes
        assert status_of(raw) == 405
        assert QUICK.body_timeout - 0.1 <= took <= QUICK.body_timeout + SLACK


# --------------------------------------------------------------------------------------------------
# Caps: connections and uploads; /healthz answers throughout
# --------------------------------------------------------------------------------------------------
def test_idle_connections_beyond_the_cap_close_the_longest_idle_and_healthz_answers():
    limits = dataclasses.replace(QUICK, header_timeout=30.0)  # only the cap closes them here
    with serving(app(limits)) as port:
        idle = [connect(port) for _ in range(3 * limits.max_connections)]
        time.sleep(0.3)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            assert client.get("/healthz").json()["status"] == "ok"
            m = metrics(client)
        assert m["lightseg_open_connections"] <= limits.max_connections
        assert m['lightseg_rejections_total{reason="idle_evicted"}'] >= 2 * limits.max_connections
        for s in idle[: limits.max_connections]:  # the oldest were closed
            s.settimeout(5)
            assert s.recv(1) == b""
        for s in idle:
            s.close()


def test_connections_beyond_the_cap_all_busy_get_a_fast_503():
    limits = dataclasses.replace(QUICK, max_connections=2, body_timeout=20.0)
    with serving(app(limits)) as port:
        busy = [connect(port, head("POST", "/v1/segment", 5000) + b"\x89PNG") for _ in range(2)]
        time.sleep(0.3)  # both uploads in flight: nothing idle to close
        raw, took = read_until_closed(connect(port, head("GET", "/healthz")))
        assert status_of(raw) == 503 and b"connections_full" in raw and took < SLACK
        for s in busy:
            s.close()
        time.sleep(0.3)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200


def test_uploads_beyond_the_cap_get_a_fast_503_and_healthz_answers():
    limits = dataclasses.replace(QUICK, max_uploads=1, body_timeout=20.0)
    with serving(app(limits)) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        slow = connect(port, head("POST", "/v1/segment", 5000) + b"\x89PNG")
        time.sleep(0.3)
        start = time.monotonic()
        r = client.post("/v1/segment", content=png())
        assert (
            r.status_code == 503 and r.json()["error"] == "uploads_busy" and time.monotonic() - start < SLACK
        )
        assert r.headers["retry-after"] == "1"
        assert client.get("/healthz").json()["status"] == "ok"
        assert metrics(client)["lightseg_uploads_in_progress"] == 1
        slow.close()
        time.sleep(0.3)
        assert client.post("/v1/segment", content=png()).status_code == 200


# --------------------------------------------------------------------------------------------------
# A client that goes away: one line at info, never a traceback
# --------------------------------------------------------------------------------------------------
class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def test_an_aborted_upload_is_one_info_line_and_no_traceback():
    records = Records()
    # uvicorn's loggers and ours do not propagate; the root logger gets asyncio's.
    loggers = [logging.getLogger(name) for name in ("uvicorn", "lightseg.serve", "")]
    with serving(app(), log_level="info") as port:  # logging is configured by now
        for lg in loggers:
            lg.addHandler(records)
        try:
            s = connect(port, head("POST", "/v1/segment", 50_000) + png()[:30])
            time.sleep(0.2)
            s.close()
            time.sleep(0.5)
            assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        finally:
            for lg in loggers:
                lg.removeHandler(records)
    left = [r for r in records.records if "the connection closed before the upload" in r.getMessage()]
    assert len(left) == 1 and left[0].levelno == logging.INFO and left[0].name == "lightseg.serve"
    assert '"POST /v1/segment"' in left[0].getMessage()
    assert not [r for r in records.records if r.levelno >= logging.WARNING or r.exc_info]


def test_a_long_path_is_cut_in_the_access_log():
    records = Records()
    access = logging.getLogger("uvicorn.access")
    with serving(app(), log_level="info", access_log=True) as port:
        access.addHandler(records)
        try:
            assert httpx.get(f"http://127.0.0.1:{port}/{'a' * 12000}").status_code == 404
        finally:
            access.removeHandler(records)
    (line,) = [r.getMessage() for r in records.records]
    assert '"GET /aaa' in line and "...(12001 chars) HTTP/1.1" in line and len(line) < 300


# --------------------------------------------------------------------------------------------------
# Host allow-list, no redirects built from Host, token
# --------------------------------------------------------------------------------------------------
def test_only_allowed_hosts_are_answered_and_no_redirect_is_built_from_host():
    with serving(app(hosts=("localhost", "127.0.0.1", "::1", "Lab-Box.example."))) as port:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", follow_redirects=False) as client:
            for host in ("127.0.0.1", f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "[0:0::1]"):
                assert client.get("/healthz", headers={"host": host}).status_code == 200, host
            assert client.get("/healthz", headers={"host": "lab-box.EXAMPLE"}).status_code == 200
            for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "[::2]", "a b"):
                r = client.get("/healthz", headers={"host": host})
                assert r.status_code == 400 and r.json()["error"] == "bad_host", host
                assert "--allowed-host" in r.json()["message"]
            # A trailing slash is not redirected to the client's Host: a 404 naming the routes.
            for host in ("evil.example", "127.0.0.1"):
                r = client.post("/v1/segment/", headers={"host": host}, content=png())
                assert r.status_code in (400, 404) and "location" not in r.headers, host
            assert client.post("/v1/segment/", content=png()).json()["error"] == "not_found"
        # HTTP/1.0 without a Host header, and two Host headers: refused.
        raw, _ = read_until_closed(connect(port, b"GET /healthz HTTP/1.0\r\n\r\n"))
        assert status_of(raw) == 400 and b"bad_host" in raw
        two = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
        assert status_of(read_until_closed(connect(port, two))[0]) == 400
    with serving(app(hosts=("*",))) as port:
        assert (
            httpx.get(f"http://127.0.0.1:{port}/healthz", headers={"host": "any.example"}).status_code == 200
        )


def test_a_token_is_needed_everywhere_but_the_page_and_healthz():
    token = "tOk3n_for-tests.0123456789"
    with serving(app(token=token)) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        for path in ("/v1/model", "/metrics", "/nowhere"):
            for auth in (None, "Bearer wrong", f"Basic {token}", f"Bearer {token}x", token):
                r = client.get(path, headers={"authorization": auth} if auth else {})
                assert r.status_code == 401 and r.json()["error"] == "unauthorized", (path, auth)
                assert r.headers["www-authenticate"].startswith("Bearer")
        assert client.post("/v1/segment", content=png()).status_code == 401
        good = {"authorization": f"Bearer {token}"}
        assert client.get("/v1/model", headers=good).json()["name"] == "stand-in"
        assert (
            client.post(
                "/v1/segment", content=png(), headers={"authorization": f"bearer {token}"}
            ).status_code
            == 200
        )
        assert client.get("/healthz").status_code == 200 and client.get("/").status_code == 200
        client.headers.update(good)
        assert metrics(client)['lightseg_rejections_total{reason="unauthorized"}'] == 3 * 5 + 1


# --------------------------------------------------------------------------------------------------
# Security headers on every answer
# --------------------------------------------------------------------------------------------------
def test_every_answer_carries_the_security_headers():
    with serving(app(token="t0ken")) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        good = {"authorization": "Bearer t0ken"}
        answers = {
            "page": client.get("/"),
            "health": client.get("/healthz"),
            "model": client.get("/v1/model", headers=good),
            "metrics": client.get("/metrics", headers=good),
            "labels": client.post("/v1/segment", content=png(), headers=good),
            "json": client.post("/v1/segment?format=json&overlay=true", content=png(), headers=good),
            "bad image": client.post("/v1/segment", content=b"hello", headers=good),
            "too large": client.post("/v1/segment", content=b"\0" * 300_000, headers=good),
            "405": client.get("/v1/segment", headers=good),
            "404": client.get("/nowhere", headers=good),
            "no token": client.get("/v1/model"),
            "bad host": client.get("/healthz", headers={"host": "evil.example"}),
            "500": client.post("/v1/segment", content=png(13), headers=good),
        }
        raw, _ = read_until_closed(
            connect(port, b"GET /healthz HTTP/1.1\r\nHost")
        )  # 408, outside any request
    assert [r.status_code for r in answers.values()] == [
        200,
        200,
        200,
        200,
        200,
        200,
        415,
        413,
        405,
        404,
        401,
        400,
        500,
    ]
    raw_headers = {
        k.lower(): v
        for k, v in (line.split(b": ", 1) for line in raw.split(b"\r\n\r\n")[0].split(b"\r\n")[1:])
    }
    headers = {what: {k: v for k, v in r.headers.items()} for what, r in answers.items()}
    headers["408"] = {k.decode(): v.decode() for k, v in raw_headers.items()}
    for what, h in headers.items():
        assert h["x-content-type-options"] == "nosniff", what
        assert "frame-ancestors 'none'" in h["content-security-policy"], what
        assert h["x-frame-options"] == "DENY", what
        assert h["referrer-policy"] == "no-referrer", what
        assert h["cache-control"] == "no-store", what
    assert "script-src 'unsafe-inline'" in headers["page"]["content-security-policy"]  # the page's own
    assert headers["labels"]["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"


# --------------------------------------------------------------------------------------------------
# /metrics
# --------------------------------------------------------------------------------------------------
def test_metrics_count_requests_by_status_latency_and_rejections():
    with serving(app()) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        for _ in range(3):
            assert client.post("/v1/segment", content=png()).status_code == 200
        assert client.post("/v1/segment", content=b"nope").status_code == 415
        assert client.get("/healthz", headers={"host": "evil.example"}).status_code == 400
        assert client.get("/v2/anything").status_code == 404
        m = metrics(client)
    assert m['lightseg_http_requests_total{route="/v1/segment",status="200"}'] == 3
    assert m['lightseg_http_requests_total{route="/v1/segment",status="415"}'] == 1
    assert m['lightseg_http_requests_total{route="/healthz",status="400"}'] == 1
    assert m['lightseg_http_requests_total{route="other",status="404"}'] == 1  # no series per unknown path
    assert m['lightseg_rejections_total{reason="bad_host"}'] == 1
    assert m['lightseg_rejections_total{reason="busy"}'] == 0
    assert m["lightseg_images_segmented_total"] == 3 and m["lightseg_queue_depth"] == 0
    # The histogram: cumulative buckets, +Inf equal to the count, the count equal to the requests.
    seg = 'route="/v1/segment"'
    buckets = [
        v for k, v in m.items() if k.startswith(f"lightseg_http_request_duration_seconds_bucket{{{seg}")
    ]
    assert buckets == sorted(buckets) and buckets[-1] == 4
    assert m[f'lightseg_http_request_duration_seconds_bucket{{{seg},le="+Inf"}}'] == 4
    assert m[f"lightseg_http_request_duration_seconds_count{{{seg}}}"] == 4
    assert 0 < m[f"lightseg_http_request_duration_seconds_sum{{{seg}}}"] < 4 * 30


# --------------------------------------------------------------------------------------------------
# The command line: no token beyond loopback without saying so; a process that can hold its connections
# --------------------------------------------------------------------------------------------------
def test_cli_refuses_to_serve_beyond_loopback_without_a_token(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LIGHTSEG_SERVE_TOKEN", raising=False)
    missing = str(tmp_path / "never-loaded.safetensors")  # refused before the model is loaded
    assert cli_main(["serve", missing, "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert (
        "--host 0.0.0.0 is reachable from other machines" in err
        and "--token-file" in err
        and "--no-auth" in err
    )
    (tmp_path / "empty").write_text("\n")
    assert cli_main(["serve", missing, "--host", "0.0.0.0", "--token-file", str(tmp_path / "empty")]) == 2
    assert "the token in" in capsys.readouterr().err
    assert cli_main(["serve", missing, "--header-timeout", "0"]) == 2
    assert "header_timeout=0" in capsys.readouterr().err
    # A token (or --no-auth) gets past the check: the next error is the missing model file.
    monkeypatch.setenv("LIGHTSEG_SERVE_TOKEN", "from-the-environment")
    assert cli_main(["serve", missing, "--host", "0.0.0.0"]) == 2
    assert "no such checkpoint" in capsys.readouterr().err


def test_open_file_limit_is_raised_for_max_connections_or_the_option_named():
    code = """
import resource
from lightseg.errors import ConfigError
from lightseg.serve.limits import Limits
from lightseg.serve.server import ensure_descriptors
for hard in (4096, 300):  # the hard limit can only go down
    resource.setrlimit(resource.RLIMIT_NOFILE, (100, hard))
    try:
        ensure_descriptors(Limits(max_connections=512))
    except ConfigError as e:
        print(e)
    print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    raised, msg, soft = out.stdout.splitlines()
    assert raised == "768"  # 512 connections + 128 queued + 128 for the rest of the process
    assert "--max-connections 512 needs about 768 open files" in msg and "ulimit" in msg and soft == "300"
