"""Files that cannot lie: every checkpoint and safetensors file lightseg writes carries the SHA-256 of
its own bytes, and every read checks it.

The digest is the SHA-256 of the whole file with the digest's own 64 hexadecimal characters read as
``0``, so every byte is covered (tensor data, pickle, zip records, safetensors header, the digest).

- A training checkpoint (``torch.save``'s zip archive) ends in the archive comment
  ``lightseg-sha256:<hex>`` (zip readers, ``torch.load`` included, skip comments) and its dict says
  ``"digest": "sha256"``.
- A safetensors file holds ``"lightseg_sha256": "<hex>"`` and ``"lightseg_digest": "sha256"`` in its
  header metadata.

Each file says twice that it carries a digest: the digest itself and a marker that the digest covers.
A change that hits the digest's own bytes is caught by the marker, one that hits the marker by the
digest. Files with neither (from other tools, or written by lightseg before the digest existed) are
read as they are.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any, BinaryIO

from lightseg.errors import CheckpointError

ALGORITHM = "sha256"
MARKER_KEY = "digest"  # a training checkpoint's dict: {"digest": "sha256"}
ZIP_COMMENT = b"lightseg-sha256:"  # + 64 hex digits: the comment that ends a sealed torch.save archive
SAFETENSORS_DIGEST = "lightseg_sha256"  # safetensors header metadata: the digest ...
SAFETENSORS_MARKER = "lightseg_digest"  # ... and the marker
HEX_DIGITS = 64
_ZEROS = b"0" * HEX_DIGITS
_END_RECORD = b"PK\x05\x06"  # zip's end of central directory record: 22 bytes + its comment
_END_RECORD_SIZE = 22
_MAX_SAFETENSORS_HEADER = 100 << 20  # the safetensors library's own limit
_CHUNK = 1 << 20


class SealingWriter:
    """The file object ``torch.save`` writes into: passes its bytes on to ``f`` while hashing them,
    holding back the archive's end record (its last 22 bytes) until :meth:`seal` gives the archive
    its digest as a comment."""

    def __init__(self, f: BinaryIO):
        self.f, self.sha, self.tail = f, hashlib.sha256(), b""

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        if view.nbytes >= _END_RECORD_SIZE:
            self._emit(self.tail)
            self._emit(view[:-_END_RECORD_SIZE])
            self.tail = bytes(view[-_END_RECORD_SIZE:])
        else:
            joined = self.tail + bytes(view)
            self._emit(joined[:-_END_RECORD_SIZE])
            self.tail = joined[-_END_RECORD_SIZE:]
        return view.nbytes

    def flush(self) -> None:
        self.f.flush()

    def seal(self) -> str:
        """Write the end record with a comment of the digest; returns the digest."""
        end = self.tail
        if len(end) != _END_RECORD_SIZE or end[:4] != _END_RECORD or end[20:] != b"\0\0":
            raise RuntimeError("torch.save did not end its archive with a zip end record without comment")
        self.tail = b""
        self._emit(end[:20] + struct.pack("<H", len(ZIP_COMMENT) + HEX_DIGITS))
        self.sha.update(ZIP_COMMENT + _ZEROS)
        digest = self.sha.hexdigest()
        self.f.write(ZIP_COMMENT + digest.encode())
        return digest

    def _emit(self, data) -> None:
        if len(data):
            self.sha.update(data)
            self.f.write(data)


def seal_safetensors(data: bytes, f: BinaryIO) -> str:
    """Write ``data`` (a safetensors file whose metadata holds :func:`safetensors_header` entries)
    to ``f`` with its digest filled in; returns the digest."""
    (n,) = struct.unpack("<Q", data[:8])
    at = _safetensors_digest_at(data[8 : 8 + n])
    if at is None or data[8 + at : 8 + at + HEX_DIGITS] != _ZEROS:
        raise RuntimeError("the safetensors header does not hold the digest placeholder")
    digest = hashlib.sha256(data).hexdigest()
    view = memoryview(data)
    f.write(view[: 8 + at])
    f.write(digest.encode())
    f.write(view[8 + at + HEX_DIGITS :])
    return digest


def safetensors_header() -> dict[str, str]:
    """The metadata entries a safetensors file is written with; :func:`seal_safetensors` fills in
    the digest."""
    return {SAFETENSORS_MARKER: ALGORITHM, SAFETENSORS_DIGEST: _ZEROS.decode()}


def without_digest(metadata: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in metadata.items() if k not in (SAFETENSORS_DIGEST, SAFETENSORS_MARKER)}


def verify(path: str | os.PathLike) -> bool:
    """Whether ``path`` carries a lightseg digest (``False``: written by another tool or an older
    lightseg); a :class:`CheckpointError` naming the file when the digest does not match its bytes
    or a safetensors marker has lost its digest. Reads the whole file only when it has a digest."""
    path = Path(path)
    found = _find_digest(path)
    if found is None:
        return False
    offset, stored = found
    if stored != file_sha256_zeroed(path, offset):
        raise damaged(path, "its bytes do not match the SHA-256 digest written into it")
    return True


def check_declared(path: str | os.PathLike, obj: Any, verified: bool) -> None:
    """A training checkpoint whose dict says it was sealed (``"digest"``) must have been verified."""
    if not verified and isinstance(obj, dict) and obj.get(MARKER_KEY) is not None:
        raise damaged(Path(path), "it was written with a SHA-256 digest, which is missing or unreadable")


def damaged(path: Path, why: str) -> CheckpointError:
    return CheckpointError(
        f"{path}: damaged ({why}): the file changed after lightseg wrote it (bit rot, a failing disk, "
        "an incomplete copy) and was not used; use an intact copy"
    )


def file_sha256_zeroed(path: Path, offset: int) -> bytes:
    """The hex SHA-256 of ``path`` with the 64 bytes at ``offset`` read as ``0``."""
    sha = hashlib.sha256()
    pos = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            lo, hi = max(offset - pos, 0), min(offset + HEX_DIGITS - pos, len(chunk))
            if lo < hi:
                chunk = chunk[:lo] + b"0" * (hi - lo) + chunk[hi:]
            sha.update(chunk)
            pos += len(chunk)
    return sha.hexdigest().encode()


def _find_digest(path: Path) -> tuple[int, bytes] | None:
    """(offset, stored hex) of the file's digest, or ``None`` for a file without one."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
        if head[:4] == b"PK\x03\x04":  # a zip archive: torch.save
            trailer = len(ZIP_COMMENT) + HEX_DIGITS
            if size < trailer:
                return None
            f.seek(size - trailer)
            tail = f.read(trailer)
            return (size - HEX_DIGITS, tail[-HEX_DIGITS:]) if tail.startswith(ZIP_COMMENT) else None
        if len(head) < 9 or head[8:9] != b"{":
            return None  # neither: a legacy pickle or something else; its reader decides
        (n,) = struct.unpack("<Q", head[:8])
        if n > min(size - 8, _MAX_SAFETENSORS_HEADER):
            return None  # an impossible header: the safetensors reader names the file
        f.seek(8)
        header = f.read(n)
    return _safetensors_digest(path, header)


def _safetensors_digest(path: Path, header: bytes) -> tuple[int, bytes] | None:
    try:
        metadata = json.loads(header).get("__metadata__") or {}
    except (ValueError, AttributeError):
        return None  # not JSON: the safetensors reader names the file
    if not isinstance(metadata, dict) or (
        SAFETENSORS_DIGEST not in metadata and SAFETENSORS_MARKER not in metadata
    ):
        return None
    at = _safetensors_digest_at(header)
    if SAFETENSORS_DIGEST not in metadata or at is None:
        raise damaged(path, "it was written with a SHA-256 digest, which is missing or unreadable")
    return 8 + at, header[at : at + HEX_DIGITS]


def _safetensors_digest_at(header: bytes) -> int | None:
    """Where the digest's hex digits start in a safetensors header (JSON as the safetensors library
    writes it: ``"key":"value"``, no spaces; inside a string the quotes would be escaped)."""
    key = f'"{SAFETENSORS_DIGEST}":"'.encode()
    at = header.find(key)
    if at < 0 or header.find(key, at + 1) >= 0:
        return None
    return at + len(key)
