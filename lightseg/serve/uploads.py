"""Uploads: read a request body under a size limit and a minimum rate, and turn it into an RGB
image, or refuse it.

The format is sniffed from the first bytes (a file name or content type is never trusted), the
pixel count is checked from the header before anything is decoded (so a small file that expands
to gigabytes is refused unread), and every refusal is a :class:`RequestError` naming the problem.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator

import numpy as np
from PIL import Image

from lightseg.data.base import upright_rgb
from lightseg.errors import RequestError
from lightseg.serve.limits import Limits

# First bytes of the accepted formats -> Pillow format name.
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"BM", "BMP"),
)
FORMATS = ("PNG", "JPEG", "WEBP", "BMP")


def sniff(data: bytes) -> str | None:
    """The image format of ``data`` from its first bytes, or ``None``."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((fmt for magic, fmt in _SIGNATURES if data.startswith(magic)), None)


def too_large(size: int, limits: Limits) -> RequestError:
    return RequestError(
        413,
        "upload_too_large",
        f"the upload is {size} bytes or more; this server accepts at most {limits.max_bytes} bytes "
        "(--max-upload-mb)",
    )


async def read_body(chunks: AsyncIterator[bytes], cap: int, limits: Limits) -> bytes:
    """The body from ``chunks``: at most ``cap`` bytes (else a 413), arriving without a pause of
    ``body_timeout`` and at ``min_upload_rate`` after that grace (else a 408 that closes the
    connection, so that a stalled or trickling client gives its slot back)."""
    loop = asyncio.get_running_loop()
    start = last = loop.time()
    parts, size = [], 0
    while True:
        wait = limits.upload_deadline(start, last, size) - loop.time()
        try:
            chunk = await asyncio.wait_for(anext(chunks), wait)
        except StopAsyncIteration:
            return b"".join(parts)
        except asyncio.TimeoutError:
            raise too_slow(size, loop.time() - start, limits) from None
        last = loop.time()
        size += len(chunk)
        if size > cap:  # a chunked upload with no (or a false) length
            raise too_large(size, limits)
        parts.append(chunk)


def too_slow(size: int, seconds: float, limits: Limits) -> RequestError:
    return RequestError(
        408,
        "upload_too_slow",
        f"the upload stalled: {size} bytes in {seconds:.1f} s; this server waits at most "
        f"{limits.body_timeout:g} s for the next bytes and, after that, needs at least "
        f"{limits.min_upload_rate / 1024:g} KiB/s on average (--body-timeout, --min-upload-kib-s)",
    )


def decode_image(data: bytes, limits: Limits) -> np.ndarray:
    """Upload bytes -> H x W x 3 uint8 RGB, or a :class:`RequestError` (400/413/415/422)."""
    return decode_upload(open_upload(data, limits))


def open_upload(data: bytes, limits: Limits) -> Image.Image:
    """The upload as an image whose header is read and whose size is within ``limits``, not yet
    decoded (a :class:`RequestError` otherwise: 400/413/415/422)."""
    if not data:
        raise RequestError(
            400,
            "empty_body",
            "the request carries no image: send the image file as the body or as the multipart field 'image'",
        )
    if len(data) > limits.max_bytes:
        raise too_large(len(data), limits)
    fmt = sniff(data)
    if fmt is None:
        raise RequestError(
            415,
            "not_an_image",
            f"the upload is not a {', '.join(FORMATS)} image (its first bytes are {data[:8]!r})",
        )
    try:
        im = Image.open(io.BytesIO(data), formats=[fmt])  # reads the header only
    except Image.DecompressionBombError as e:
        raise _too_many_pixels(
            f"the image header claims a size Pillow refuses ({str(e).rstrip('.')})", limits
        ) from e
    except Exception as e:  # Pillow raises many types for a broken header
        raise _corrupt(fmt, e) from e
    w, h = im.size
    if w * h > limits.max_pixels:
        raise _too_many_pixels(f"the image is {w} x {h} = {w * h} pixels", limits)
    return im


def decode_upload(im: Image.Image) -> np.ndarray:
    """An image from :func:`open_upload` -> H x W x 3 uint8 RGB (422 when its data is corrupt)."""
    try:
        rgb = upright_rgb(im)  # decodes; a truncated or corrupt stream fails here
    except Exception as e:
        raise _corrupt(im.format or "image", e) from e
    return np.asarray(rgb)


def _too_many_pixels(what: str, limits: Limits) -> RequestError:
    return RequestError(
        413, "too_many_pixels", f"{what}; this server accepts at most {limits.max_pixels} (--max-pixels)"
    )


def _corrupt(fmt: str, e: Exception) -> RequestError:
    return RequestError(
        422,
        "corrupt_image",
        f"the upload starts like a {fmt} file but cannot be decoded ({type(e).__name__}: {e})",
    )
