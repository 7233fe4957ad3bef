"""lightseg serve against a real uvicorn server on a free loopback port, driven by httpx and by
headless Chromium: labels equal to Segmenter's, metadata, health, every kind of bad upload, the page."""

import asyncio
import base64
import contextlib
import io
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

import helpers  # noqa: E402

from lightseg import (  # noqa: E402
    Segmenter,
    load_checkpoint,
    save_weights,
)
from lightseg.deploy.memory import describe, parse_size  # noqa: E402
from lightseg.models import create_model  # noqa: E402
from lightseg.serve import Limits, create_app, load_backend  # noqa: E402
from lightseg.serve.batcher import Batcher  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("LIGHTSEG_CHROMIUM", "/usr/bin/chromium"))
# CamVid classes and palette, typed from shared/data/README.md (independent of lightseg.data).
CAMVID_CLASSES = [
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
]  # fmt: skip
CAMVID_PALETTE = [
    [128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222], [128, 128, 0],
    [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192],
]  # fmt: skip
LIMITS = Limits(max_bytes=600_000, max_pixels=400_000)  # a CamVid image (480 x 360) fits


@contextlib.contextmanager
def serving(app):
    """``app`` served on a free loopback port; yields the base URL."""
    with helpers.serving(app) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("cgrseg_t", num_classes=11).eval()
    path = tmp_path_factory.mktemp("serve") / "cgrseg_t_camvid.safetensors"
    return save_weights(model, path, classes=CAMVID_CLASSES, palette=CAMVID_PALETTE)


@pytest.fixture(scope="module")
def reference(checkpoint):
    """Segmenter on the same weights, as the server runs them (BN folded)."""
    return Segmenter(checkpoint, runtime="torch", optimize="fold-bn")


@pytest.fixture(scope="module")
def url(checkpoint):
    """The checkpoint served on eager torch (the reference's path; the default is measured, below)."""
    with serving(create_app(load_backend(checkpoint, runtime="torch"), LIMITS, max_batch=4)) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    with httpx.Client(base_url=url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def camvid_image(shared_data) -> Path:
    return sorted((shared_data / "camvid" / "val").glob("*.png"))[0]


def encode(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def rgb(image_bytes: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(image_bytes)).convert("RGB"))


def expected_overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    colour = np.asarray(CAMVID_PALETTE, dtype=np.float64)[labels]
    return np.floor((1 - alpha) * image + alpha * colour + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# The API
# --------------------------------------------------------------------------------------------------
def test_health_and_model_metadata(client):
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    meta = client.get("/v1/model").json()
    assert meta["name"] == "cgrseg_t"
    assert meta["classes"] == CAMVID_CLASSES and meta["palette"] == CAMVID_PALETTE
    assert (meta["num_classes"], meta["runtime"], meta["precision"]) == (11, "torch", "fp32")
    assert (meta["why"], meta["workers"]) == ("asked for", 1)  # eager torch: one call at a time
    assert meta["input_size"] is None and meta["size_divisor"] == 32
    assert meta["limits"] == {
        "max_upload_bytes": 600_000,
        "max_pixels": 400_000,
        "max_memory_bytes": 1_342_177_280,
    }
    assert meta["scale"] == [2048, 512]  # the model records no scale of its own: the papers' ADE20K one


def test_segment_png_equals_segmenter_on_camvid(client, reference, camvid_image):
    data = camvid_image.read_bytes()
    r = client.post("/v1/segment", content=data)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert "inference;dur=" in r.headers["server-timing"]
    out = Image.open(io.BytesIO(r.content))
    assert out.mode == "P" and out.size == (480, 360)
    np.testing.assert_array_equal(np.asarray(out), reference(rgb(data)))
    assert np.asarray(out.getpalette()[:33]).reshape(11, 3).tolist() == CAMVID_PALETTE


def test_segment_json_areas_and_overlay(client, reference):
    image = np.random.default_rng(1).integers(0, 256, (37, 50, 3), dtype=np.uint8)  # odd size
    files = {"image": ("photo.jpg", encode(image), "image/jpeg")}  # a PNG named .jpg: sniffed
    r = client.post("/v1/segment", params={"format": "json", "overlay": "true", "alpha": "0.5"}, files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    labels = reference(image)
    counts = np.bincount(labels.ravel(), minlength=11)
    assert (body["width"], body["height"]) == (50, 37)
    assert [c["pixels"] for c in body["classes"]] == counts.tolist()
    assert [c["name"] for c in body["classes"]] == CAMVID_CLASSES
    assert sum(c["fraction"] for c in body["classes"]) == pytest.approx(1.0)
    assert set(body["latency_ms"]) == {"decode", "queue", "inference", "total"}
    head, b64 = body["overlay"].split(",", 1)
    assert head == "data:image/png;base64"
    got = rgb(base64.b64decode(b64)).astype(int)
    assert np.abs(got - expected_overlay(image, labels)).max() <= 1


def test_concurrent_mixed_sizes_each_get_their_own_labels(url, reference):
    """16 requests at once, two sizes: same-size requests may share a batch, none gets another's labels."""
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (64, 96) if i % 2 else (96, 64), dtype=np.uint8) for i in range(16)]
    images = [np.repeat(im[..., None], 3, axis=2) for im in images]

    async def run() -> list:
        async with httpx.AsyncClient(base_url=url, timeout=120) as c:
            return await asyncio.gather(*(c.post("/v1/segment", content=encode(im)) for im in images))

    responses = asyncio.run(run())
    for im, r in zip(images, responses):
        assert r.status_code == 200
        # A batch may round differently from a single image (a near-tie may flip); another image's
        # labels would differ almost everywhere.
        assert np.mean(np.asarray(Image.open(io.BytesIO(r.content))) != reference(im)) < 1e-3


def test_batcher_workers_run_batches_side_by_side():
    """With two workers, two batches are in the backend at once (one worker would deadlock the
    barrier and time out)."""
    both = threading.Barrier(2, timeout=10)

    class Pair:
        workers = 2

        def segment(self, images):
            both.wait()
            return [np.zeros(im.shape[:2], np.int64) for im in images]

    async def run():
        batcher = Batcher(Pair(), max_batch=1)
        batcher.start()
        results = await asyncio.gather(*(batcher.segment(np.zeros((4, 4, 3), np.uint8)) for _ in range(4)))
        batcher.close()
        return results, batcher

    results, batcher = asyncio.run(run())
    assert batcher.workers == 2 and len(results) == 4 and not both.broken


def test_serve_runs_the_measured_default_path_and_reports_it(tmp_path, monkeypatch):
    """Without --runtime the server runs the path predict would (measured on the first request,
    timings stubbed here), reports it and why in /v1/model, with one worker per stream."""
    from lightseg.deploy import autoselect
    from lightseg.deploy.cpu import serve_streams

    monkeypatch.setenv("LIGHTSEG_CACHE", str(tmp_path))
    monkeypatch.delenv(autoselect.ENV, raising=False)
    ms = {"onnxruntime fp32": 9.0, "openvino fp32": 5.0, "openvino bf16": 7.0, "torch fp32": 30.0}
    monkeypatch.setattr(autoselect, "_wall_clock", lambda c, call: ms.get(c.label, 50.0) / 1e3)
    torch.manual_seed(0)
    model = helpers.TinySeg(num_classes=3)
    backend = load_backend(model, scale="native")  # the image as it is: the path, not the scale, is tested
    assert backend.workers == serve_streams() and backend.info.runtime is None
    image = np.random.default_rng(4).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    with serving(create_app(backend, LIMITS)) as base, httpx.Client(base_url=base, timeout=120) as client:
        before = client.get("/v1/model").json()
        assert before["runtime"] is None and "first input" in before["why"]
        r = client.post("/v1/segment", content=encode(image))
        assert r.status_code == 200, r.text
        after = client.get("/v1/model").json()
    want = min((c for c in autoselect.candidates()), key=lambda c: ms.get(c.label, 50.0))
    assert (after["runtime"], after["precision"]) == (want.runtime, want.precision)
    assert f"{ms[want.label]:.1f} ms" in after["why"] and after["workers"] == backend.workers
    reference = Segmenter(model, runtime=want.runtime, precision=want.precision, scale="native")(image)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(r.content))), reference)


def test_batcher_groups_waiting_same_size_requests_in_order():
    """While the worker is busy, waiting requests of the first one's size are run as one batch
    (at most max_batch), the others after it, each answered with its own result."""
    release, calls = threading.Event(), []

    class Slow:
        def segment(self, images):
            calls.append([int(im[0, 0, 0]) for im in images])
            release.wait(10)
            return [np.full(im.shape[:2], im[0, 0, 0]) for im in images]

    def img(value: int, size: int) -> np.ndarray:
        return np.full((size, size, 3), value, dtype=np.uint8)

    async def run():
        batcher = Batcher(Slow(), max_batch=3)
        batcher.start()
        first = asyncio.ensure_future(batcher.segment(img(0, 8)))
        while not calls:  # the worker holds request 0
            await asyncio.sleep(0.01)
        rest = [
            asyncio.ensure_future(batcher.segment(img(v, s)))
            for v, s in [(1, 8), (2, 4), (3, 8), (4, 8), (5, 8)]
        ]
        while batcher.waiting < 5:
            await asyncio.sleep(0.01)
        release.set()
        results = await asyncio.gather(first, *rest)
        batcher.close()
        return results

    results = asyncio.run(run())
    assert calls == [[0], [1, 3, 4], [2], [5]]
    assert [int(r.labels[0, 0]) for r in results] == [0, 1, 2, 3, 4, 5]
    assert [r.batch_size for r in results] == [1, 3, 1, 3, 3, 1]


# --------------------------------------------------------------------------------------------------
# Bad input: each refused with its 4xx and a JSON error; the server stays healthy
# --------------------------------------------------------------------------------------------------
def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int) -> bytes:
    """A PNG of side x side grey pixels whose first rows compress to a few kilobytes."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (side + 1) * 64, 9)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )


def oversized_chunks():
    yield b"\0" * 400_000
    yield b"\0" * 400_000


def bad_requests(camvid: bytes):
    """(what, method, path, request kwargs, status, error code)."""
    small = encode(np.zeros((8, 8, 3), dtype=np.uint8))
    return [
        ("empty body", "POST", "/v1/segment", {}, 400, "empty_body"),
        ("empty file field", "POST", "/v1/segment", {"files": {"image": ("a.png", b"", "image/png")}}, 400, "empty_body"),
        ("text named .png", "POST", "/v1/segment", {"files": {"image": ("a.png", b"hello", "image/png")}}, 415, "not_an_image"),
        ("random bytes", "POST", "/v1/segment", {"content": os.urandom(2000)}, 415, "not_an_image"),
        ("truncated PNG", "POST", "/v1/segment", {"content": camvid[: len(camvid) // 2]}, 422, "corrupt_image"),
        ("PNG header, garbage", "POST", "/v1/segment", {"content": camvid[:8] + b"\x00garbage" * 50}, 422, "corrupt_image"),
        ("JPEG header, garbage", "POST", "/v1/segment", {"content": b"\xff\xd8\xff\xe0" + b"\x13" * 500}, 422, "corrupt_image"),
        ("too many pixels", "POST", "/v1/segment", {"content": bomb_png(1000)}, 413, "too_many_pixels"),
        ("decompression bomb", "POST", "/v1/segment", {"content": bomb_png(20000)}, 413, "too_many_pixels"),
        ("upload too large", "POST", "/v1/segment", {"content": b"\x89PNG" + b"\0" * 600_000}, 413, "upload_too_large"),
        ("chunked, too large", "POST", "/v1/segment", {"content": oversized_chunks()}, 413, "upload_too_large"),
        ("no image field", "POST", "/v1/segment", {"files": {"file": ("a.png", small, "image/png")}}, 400, "no_image_field"),
        ("two files", "POST", "/v1/segment", {"files": [("image", ("a.png", small)), ("image", ("b.png", small))]}, 400, "bad_multipart"),
        ("bad format", "POST", "/v1/segment?format=xml", {"content": small}, 400, "bad_option"),
        ("overlay as png", "POST", "/v1/segment?overlay=true", {"content": small}, 400, "bad_option"),
        ("alpha out of range", "POST", "/v1/segment?format=json&alpha=2", {"content": small}, 400, "bad_option"),
        ("unknown option", "POST", "/v1/segment?size=9", {"content": small}, 400, "bad_option"),
        ("GET segment", "GET", "/v1/segment", {}, 405, "method_not_allowed"),
        ("POST model", "POST", "/v1/model", {"content": small}, 405, "method_not_allowed"),
        ("DELETE healthz", "DELETE", "/healthz", {}, 405, "method_not_allowed"),
        ("unknown path", "GET", "/v2/segment", {}, 404, "not_found"),
    ]  # fmt: skip


def test_bad_input_battery_each_a_4xx_json_error_and_server_stays_healthy(client, camvid_image):
    camvid = camvid_image.read_bytes()
    for what, method, path, kwargs, status, code in bad_requests(camvid):
        r = client.request(method, path, **kwargs)
        assert r.status_code == status, (what, r.status_code, r.text)
        body = r.json()
        assert (body["status"], body["error"]) == (status, code), what
        assert len(body["message"]) > 20, what
        assert client.get("/healthz").json()["status"] == "ok", what
    # Wrong methods name the right one; and the server still segments.
    assert "use POST" in client.get("/v1/segment").json()["message"]
    assert client.post("/v1/segment", content=camvid).status_code == 200


# --------------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------------
def test_cli_serves_on_loopback(checkpoint):
    """Bound to loopback by default, answering to loopback names, with the token from the environment."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = "cli-test-token-0123"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "LIGHTSEG_SERVE_TOKEN": token}
    cmd = [
        sys.executable,
        "-m",
        "lightseg.cli",
        "serve",
        str(checkpoint),
        "--port",
        str(port),
        "--no-access-log",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            assert time.monotonic() < deadline, "lightseg serve did not come up"
            time.sleep(0.2)
        model = f"http://127.0.0.1:{port}/v1/model"
        assert (
            httpx.get(model, headers={"authorization": f"Bearer {token}"}).json()["classes"] == CAMVID_CLASSES
        )
        assert httpx.get(model).status_code == 401
        evil = httpx.get(model, headers={"authorization": f"Bearer {token}", "host": "evil.example"})
        assert evil.status_code == 400 and evil.json()["error"] == "bad_host"
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}" in out  # bound to loopback by default
    from lightseg.deploy.cpu import serve_streams

    workers = f"{serve_streams()} inference worker"
    assert (
        f"cgrseg_t (11 classes; the fastest path, measured on the first request of each image size; {workers}"
        in out
    )
    assert "this machine only, a bearer token; answers to Host 127.0.0.1, localhost, ::1" in out
    assert "Traceback" not in out


# --------------------------------------------------------------------------------------------------
# The page, in headless Chromium
# --------------------------------------------------------------------------------------------------
@pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"Chromium not installed at {CHROMIUM} (apt-get install chromium)"
)
def test_page_in_chromium_shows_overlay_and_legend(url, reference, camvid_image, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    image = rgb(camvid_image.read_bytes())
    labels = reference(image)
    counts = np.bincount(labels.ravel(), minlength=11)
    present = [i for i in np.argsort(-counts, kind="stable") if counts[i] > 0]
    foreign, errors = [], []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
            own = (url, "blob:" + url, "data:")  # the page may fetch only from its server
            page.on("request", lambda r: None if r.url.startswith(own) else foreign.append(r.url))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(url + "/")
            sync_api.expect(page.locator("#model")).to_contain_text("cgrseg_t · 11 classes · torch · fp32")
            page.set_input_files("#file", str(camvid_image))
            page.wait_for_selector("#legend li[data-class-id]", timeout=60_000)
            page.wait_for_function(
                "() => { const o = document.getElementById('overlay'); return o.complete && o.naturalWidth > 0; }"
            )
            legend = page.eval_on_selector_all(
                "#legend li",
                "els => els.map(e => [+e.dataset.classId, e.children[1].textContent, e.children[2].textContent])",
            )
            latency = page.text_content("#latency")
            shot = Path(os.environ.get("LIGHTSEG_SCREENSHOT_DIR", tmp_path)) / "serve_page.png"
            page.screenshot(path=str(shot))
            box = page.locator("#overlay").bounding_box()
        finally:
            browser.close()
    assert foreign == [] and errors == []
    assert [c for c, _, _ in legend] == present
    assert [n for _, n, _ in legend] == [CAMVID_CLASSES[i] for i in present]
    fractions = [counts[i] / labels.size for i in present]
    assert [pct for _, _, pct in legend] == [
        f"{100 * f:.1f} %" if f >= 0.0005 else "< 0.1 %" for f in fractions
    ]
    assert "480 × 360 px" in latency and "inference" in latency
    # The overlay is shown pixel for pixel (at a whole-pixel position next to its layout box); the
    # legend's swatches in their palette colours.
    screen = rgb(shot.read_bytes()).astype(int)
    assert (round(box["width"]), round(box["height"])) == (480, 360)
    want = expected_overlay(image, labels)
    match = max(
        np.mean(np.abs(screen[y : y + 360, x : x + 480] - want).max(axis=2) <= 2)
        for y in (int(box["y"]), int(box["y"]) + 1)
        for x in (int(box["x"]), int(box["x"]) + 1)
    )
    assert match > 0.99
    colours = {tuple(c) for c in screen.reshape(-1, 3).tolist()}
    assert all(tuple(CAMVID_PALETTE[i]) in colours for i in present)


def test_an_exported_openvino_file_is_served_with_its_own_facts(checkpoint, tmp_path):
    """The file `lightseg export` wrote is served as it is: its runtime, its fixed input size, its
    classes and palette; labels equal the Segmenter's on the same file."""
    pytest.importorskip("openvino")
    from lightseg.deploy.export import export_model

    xml = export_model(load_checkpoint(checkpoint).eval(), tmp_path / "m.xml", (64, 96), "openvino")
    backend = load_backend(xml)
    info = backend.info
    assert (info.runtime, info.precision, info.input_size) == ("openvino", "fp32", (64, 96))
    assert list(info.classes) == CAMVID_CLASSES and [list(c) for c in info.palette] == CAMVID_PALETTE
    image = np.random.default_rng(3).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    with serving(create_app(backend, LIMITS, max_batch=1)) as base, httpx.Client(base_url=base) as client:
        r = client.post("/v1/segment", content=encode(image))
        assert r.status_code == 200, r.text
        assert client.get("/v1/model").json()["runtime"] == "openvino"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(r.content))), Segmenter(xml)(image))


def test_large_and_elongated_uploads_at_the_models_scale(checkpoint):
    """An 8 MP upload is seen at the model's scale (2896 x 2896 -> 512 x 512) and answered at its own
    size; one too elongated to be seen at that scale is a 4xx naming the scale, not a 500."""
    rng = np.random.default_rng(5)
    square = np.repeat(np.repeat(rng.integers(0, 256, (362, 362, 3), dtype=np.uint8), 8, 0), 8, 1)
    backend = load_backend(checkpoint)
    with (
        serving(create_app(backend, Limits(), max_batch=4)) as base,
        httpx.Client(base_url=base, timeout=300) as c,
    ):
        assert c.get("/v1/model").json()["limits"]["max_pixels"] >= 2896 * 2896
        r = c.post("/v1/segment", content=encode(square))
        assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (2896, 2896)
        elongated = c.post("/v1/segment", content=encode(np.zeros((32, 262144, 3), np.uint8)))
        assert elongated.status_code == 422 and elongated.json()["error"] == "image_not_segmentable"
        assert "too elongated" in elongated.json()["message"] and "2048x512" in elongated.json()["message"]
        assert c.get("/healthz").json()["status"] == "ok"


def test_an_upload_over_the_memory_budget_is_a_413_naming_the_budget(checkpoint):
    backend = load_backend(checkpoint, scale="native", max_memory="300M")
    with (
        serving(create_app(backend, Limits(), max_batch=4)) as base,
        httpx.Client(base_url=base, timeout=300) as c,
    ):
        r = c.post("/v1/segment", content=encode(np.zeros((2048, 2048, 3), np.uint8)))
        assert r.status_code == 413 and r.json()["error"] == "over_memory_budget"
        message, share = r.json()["message"], describe(parse_size("300M") // backend.workers)
        assert f"the memory budget is {share}" in message
        assert (
            backend.workers == 1 or f"a share of the service's 300 MB ({backend.workers} inference" in message
        )
        assert c.post("/v1/segment", content=encode(np.zeros((64, 64, 3), np.uint8))).status_code == 200
