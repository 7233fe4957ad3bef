"""The HTTP application: routes, uploads in, label maps out, every refusal a JSON error.

Routes: ``GET /`` (the demo page), ``GET /healthz``, ``GET /metrics``, ``GET /v1/model``,
``POST /v1/segment``. Errors are ``{"status": 4xx, "error": "<code>", "message": "<what is wrong and
what to do>"}``. Decoding and encoding run in the thread pool, inference on the :class:`Batcher`'s
workers, so the event loop (and ``/healthz``) stays responsive under load. The application runs
behind :class:`~lightseg.serve.guard.Guard` (hosts, token, security headers, request metrics).
"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import time
from importlib import resources

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from lightseg.errors import InputError, MemoryBudgetError, RequestError
from lightseg.serve.backend import Backend, ModelInfo
from lightseg.serve.batcher import Batcher, Result
from lightseg.serve.gate import PixelGate, decoded_capacity
from lightseg.serve.guard import Access, Guard, json_error
from lightseg.serve.limits import Limits
from lightseg.serve.metrics import CLIENT_CLOSED, CONTENT_TYPE, REJECTIONS, Metrics
from lightseg.serve.server import short_path
from lightseg.serve.uploads import decode_upload, open_upload, read_body, too_large
from lightseg.visualize import class_counts, colorize, overlay

MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the file in a form upload
# The page is self-contained: the policy forbids loading anything from elsewhere, and framing.
PAGE_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src data: blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
ROUTES_HELP = "GET /, GET /healthz, GET /metrics, GET /v1/model, POST /v1/segment"
_BOOL = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
log = logging.getLogger("lightseg.serve")


def create_app(
    backend: Backend,
    limits: Limits | None = None,
    max_batch: int = 4,
    max_queue: int = 64,
    access: Access | None = None,
) -> Guard:
    """The ASGI application serving ``backend``; run it with
    :func:`~lightseg.serve.server.server_config` (see :mod:`lightseg.cli.serve`). ``access``:
    the Host names it answers to and its token (default: loopback names, no token)."""
    limits = limits or Limits()
    batcher = Batcher(backend, max_batch=max_batch, max_queue=max_queue)
    metrics = Metrics()
    info = backend.info
    page = resources.files("lightseg.serve").joinpath("static/index.html").read_text(encoding="utf-8")
    uploading = 0  # uploads being received
    # Decoded images in flight: what the workers can take next (a batch each) and no more.
    decoded_pixels = PixelGate(
        decoded_capacity(batcher.workers, max_batch, limits.max_pixels), max_waiting=max_queue
    )
    metrics.reading(
        "queue_depth", "Decoded images waiting for the inference worker.", lambda: batcher.waiting
    )
    metrics.reading("uploads_in_progress", "Uploads being received.", lambda: uploading)
    metrics.reading("decoded_pixels", "Pixels of the decoded images in flight.", lambda: decoded_pixels.held)
    metrics.reading(
        "uploads_waiting_to_decode",
        "Uploads waiting for decoded images to leave room.",
        lambda: decoded_pixels.waiting,
    )
    metrics.reading("images_segmented_total", "Images the model has segmented.", lambda: batcher.served)

    async def index(request: Request) -> Response:
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_POLICY})

    async def healthz(request: Request) -> Response:
        ok = batcher.alive
        return JSONResponse(
            {
                "status": "ok" if ok else "inference worker stopped",
                "waiting": batcher.waiting,
                "served": batcher.served,
            },
            status_code=200 if ok else 503,
        )

    async def metrics_text(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    async def model(request: Request) -> Response:
        path = backend.path()
        return JSONResponse(
            {
                "name": info.name,
                "num_classes": info.num_classes,
                "classes": list(info.classes),
                "palette": [list(c) for c in info.palette],
                "input_size": None if info.input_size is None else list(info.input_size),
                "size_divisor": info.size_divisor,
                "runtime": path["runtime"],
                "precision": path["precision"],
                "why": path["why"],
                "workers": batcher.workers,
                "max_batch": max_batch,
                "scale": None if info.scale is None else list(info.scale),
                "limits": {
                    "max_upload_bytes": limits.max_bytes,
                    "max_pixels": limits.max_pixels,
                    "max_memory_bytes": info.max_memory,
                },
            }
        )

    async def segment(request: Request) -> Response:
        nonlocal uploading
        start = time.perf_counter()
        fmt, with_overlay, alpha = _options(request)
        if uploading >= limits.max_uploads:  # refused before a byte of the body is read
            raise RequestError(
                503,
                "uploads_busy",
                f"{limits.max_uploads} uploads are already being received; retry shortly (--max-uploads)",
            )
        uploading += 1
        try:
            data = await _read_upload(request, limits)
            upload = await run_in_threadpool(open_upload, data, limits)  # the header: size checked
        finally:
            uploading -= 1
        async with decoded_pixels.hold(upload.width * upload.height):
            image = await run_in_threadpool(decode_upload, upload)
            del data, upload  # the compressed bytes, and Pillow's own copy of the pixels
            return await _answer(image, start, fmt, with_overlay, alpha)

    async def _answer(
        image: np.ndarray, start: float, fmt: str, with_overlay: bool, alpha: float
    ) -> Response:
        await run_in_threadpool(_admit, backend, image)
        decoded = time.perf_counter()
        result = await batcher.segment(image)
        if fmt == "png":
            body = await run_in_threadpool(_label_png, result.labels, info.palette)
            timing = _timing(start, decoded, result)
            server_timing = ", ".join(f"{k};dur={v}" for k, v in timing.items())
            return Response(body, media_type="image/png", headers={"Server-Timing": server_timing})
        payload = await run_in_threadpool(_summary, info, image, result, with_overlay, alpha)
        payload["latency_ms"] = _timing(start, decoded, result)
        payload["batch_size"] = result.batch_size
        return JSONResponse(payload)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        try:
            yield
        finally:
            await run_in_threadpool(batcher.close)

    app = Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics_text, methods=["GET"]),
            Route("/v1/model", model, methods=["GET"]),
            Route("/v1/segment", segment, methods=["POST"]),
        ],
        exception_handlers={
            RequestError: _request_error,
            ClientDisconnect: _client_left,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False  # its redirect would be built from the client's Host header
    app.state.batcher = batcher
    app.state.metrics = metrics
    return Guard(app, access or Access(), limits, metrics)


# --------------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------------
def _options(request: Request) -> tuple[str, bool, float]:
    """(format, overlay, alpha) from the query string; anything unknown or malformed is a 400."""
    q = request.query_params
    unknown = sorted(set(q) - {"format", "overlay", "alpha"})
    if unknown:
        raise RequestError(
            400, "bad_option", f"unknown query parameter(s) {unknown}; known: format, overlay, alpha"
        )
    fmt = q.get("format", "png")
    if fmt not in ("png", "json"):
        raise RequestError(400, "bad_option", f"format={fmt!r}: use format=png (label map) or format=json")
    flag = q.get("overlay", "false").lower()
    if flag not in _BOOL:
        raise RequestError(400, "bad_option", f"overlay={flag!r}: use overlay=true or overlay=false")
    if _BOOL[flag] and fmt != "json":
        raise RequestError(
            400, "bad_option", "overlay=true needs format=json (the overlay travels inside the JSON)"
        )
    try:
        alpha = float(q.get("alpha", "0.5"))
    except ValueError:
        alpha = -1.0
    if not 0.0 <= alpha <= 1.0:
        raise RequestError(
            400, "bad_option", f"alpha={q.get('alpha')!r}: the overlay opacity is a number in 0..1"
        )
    return fmt, _BOOL[flag], alpha


async def _read_upload(request: Request, limits: Limits) -> bytes:
    """The image bytes: the whole body, or the file field ``image`` of a multipart form."""
    multipart = request.headers.get("content-type", "").startswith("multipart/form-data")
    cap = limits.max_bytes + (MULTIPART_OVERHEAD if multipart else 0)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise too_large(int(declared), limits)  # refused before reading a byte
    body = await read_body(request.stream(), cap, limits)
    return await _form_image(request, body) if multipart else body


async def _form_image(request: Request, body: bytes) -> bytes:
    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=16)
    except HTTPException as e:
        raise RequestError(400, "bad_multipart", f"the multipart form cannot be parsed ({e.detail})") from e
    try:
        field = form.get("image")
        if field is None or isinstance(field, str):
            raise RequestError(
                400,
                "no_image_field",
                f"the multipart form has no file field 'image' (it has: {sorted(form.keys()) or 'nothing'}); "
                "send e.g. curl -F image=@photo.jpg",
            )
        return await field.read()
    finally:
        await form.close()


# --------------------------------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------------------------------
def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def _label_png(labels: np.ndarray, palette) -> bytes:
    """The label map as a palette PNG: pixel values are class ids, the palette the model's colours."""
    return _png(colorize(labels, palette))


def _summary(info: ModelInfo, image: np.ndarray, result: Result, with_overlay: bool, alpha: float) -> dict:
    """Per-class pixel counts and fractions, and the overlay as a data URL when asked for."""
    labels = result.labels
    counts = class_counts(labels, info.num_classes)
    total = labels.size
    payload = {
        "model": info.name,
        "width": int(labels.shape[1]),
        "height": int(labels.shape[0]),
        "classes": [
            {"id": i, "name": name, "colour": list(info.palette[i]), "pixels": int(n), "fraction": n / total}
            for i, (name, n) in enumerate(zip(info.classes, counts.tolist()))
        ],
    }
    if with_overlay:
        png = _png(overlay(image, labels, info.palette, alpha))
        payload["overlay"] = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return payload


def _admit(backend: Backend, image: np.ndarray) -> None:
    """Refuse now what the model cannot run: an image too elongated for its scale (422) or one
    whose pass would not fit the memory budget (413)."""
    try:
        backend.admit(*image.shape[:2])
    except MemoryBudgetError as e:
        raise RequestError(413, "over_memory_budget", str(e)) from None
    except InputError as e:
        raise RequestError(422, "image_not_segmentable", str(e)) from None


def _timing(start: float, decoded: float, result: Result) -> dict[str, float]:
    """Server-side milliseconds: decode (reading and decoding the upload), queue (waiting for the worker), inference (of the batch the
    request ran in), total (to the response, encoding included)."""
    return {
        "decode": round((decoded - start) * 1e3, 2),
        "queue": round(result.queue_ms, 2),
        "inference": round(result.inference_ms, 2),
        "total": round((time.perf_counter() - start) * 1e3, 2),
    }


def _error(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return json_error(RequestError(status, code, message), headers)


async def _request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)
    if exc.code in REJECTIONS:
        request.app.state.metrics.reject(exc.code)
    return json_error(exc)


async def _client_left(request: Request, exc: Exception) -> Response:
    """A client that closes its connection mid-upload: one line, no traceback; nobody reads the answer."""
    client = request.client
    who = f"{client.host}:{client.port}" if client else "a client"
    log.info(
        '%s - "%s %s" the connection closed before the upload was complete',
        who,
        request.method,
        short_path(request.url.path),
    )
    return Response(status_code=CLIENT_CLOSED)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    path = request.url.path
    if exc.status_code == 404:
        return _error(404, "not_found", f"no route {path}; this server has {ROUTES_HELP}")
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        return _error(
            405, "method_not_allowed", f"{request.method} {path} is not allowed; use {allowed}", exc.headers
        )
    return _error(exc.status_code, "http_error", str(exc.detail), exc.headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    # Starlette re-raises after this response, so the server's log gets the traceback.
    return _error(
        500,
        "internal_error",
        f"the server failed on this request ({type(exc).__name__}: {exc}); it keeps serving, the log has details",
    )
