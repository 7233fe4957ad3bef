"""Uploads: read a request body under a size limit and turn it into an RGB image, or refuse it.

The format is sniffed from the first bytes (a file name or content type is never trusted), the
pixel count is checked from the header before anything is decoded (so a small file that expands
to gigabytes is refused unread), and every refusal is a :class:`RequestError` naming the problem.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from lightseg.data.base import upright_rgb
from lightseg.errors import RequestError

# First bytes of the accepted formats -> Pillow format name.
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"BM", "BMP"),
)
FORMATS = ("PNG", "JPEG", "WEBP", "BMP")


@dataclass(frozen=True)
class Limits:
    """``max_bytes``: largest upload; ``max_pixels``: largest width x height (default 8 MP, which
    holds 3840 x 2160)."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 8 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_pixels < 1:
            raise ValueError(f"limits must be positive, got {self}")


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


def decode_image(data: bytes, limits: Limits) -> np.ndarray:
    """Upload bytes -> H x W x 3 uint8 RGB, or a :class:`RequestError` (400/413/415/422)."""
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
    try:
        rgb = upright_rgb(im)  # decodes; a truncated or corrupt stream fails here
    except Exception as e:
        raise _corrupt(fmt, e) from e
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
