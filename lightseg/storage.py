"""Writing files so that a full, read-only or vanished disk costs one clear line and no partial file.

Every file lightseg writes goes through here: :func:`atomic_file` (written beside the destination,
synced, then renamed over it), :func:`staging` (a folder beside the destination, for writers that
want a path or make several files) and :func:`append_record` (a log line, whole or not at all). A
failure becomes a :class:`~lightseg.errors.StorageError` naming the path, the cause and what to do.

Libraries do not always say why a write failed: torch's zip writer turns ``ENOSPC`` into
``RuntimeError: [enforce fail at inline_container.cc] unexpected pos`` (raised while handling the
``OSError``), OpenVINO into ``basic_ios::clear: iostream error`` (no errno at all), numpy into
``OSError: N requested and M written``. The cause is the ``OSError`` behind the exception when there
is one, else what the folder itself answers to a small write.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from lightseg.errors import LightsegError, StorageError

_CAUSES = {
    errno.ENOSPC: ("the disk is full", "Free some space"),
    errno.EDQUOT: ("the disk quota is used up", "Free some space"),
    errno.EROFS: ("the file system is read-only", "Make it writable"),
    errno.EACCES: ("permission denied", "Make the folder writable"),
    errno.EPERM: ("permission denied", "Make the folder writable"),
    errno.EIO: ("an input/output error (a failing disk or a lost network mount)", "Check the disk"),
    errno.EFBIG: ("the file is too large for this file system", "Write it to another file system"),
}
_GONE = (errno.ENOENT, errno.ENOTDIR, errno.ESTALE)
_PROBE_BYTES = 64 << 10


def os_error(e: BaseException | None) -> OSError | None:
    """The ``OSError`` behind ``e``: ``e`` itself, or one it was raised from or while handling."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError) and not isinstance(e, LightsegError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def storage_error(
    e: BaseException, path: Path, what: str, then: str, kept: str = "", probe: Path | None = None
) -> StorageError | None:
    """The one-line :class:`StorageError` for a write of ``what`` to ``path`` that failed with ``e``;
    ``None`` when ``e`` is no storage failure. ``kept`` says what is intact, ``then`` how to go on
    once fixed. Without an errno, ``probe`` (a folder on the same disk) is asked to take 64 KiB."""
    path = Path(path)
    if isinstance(e, LightsegError) or not isinstance(e, Exception):
        return None  # a user error or an interrupt: not about the disk
    cause = os_error(e)
    if (cause is None or not cause.errno) and isinstance(e, (OSError, RuntimeError)):
        cause = _probe(probe or path.parent) or cause
    if cause is None:
        return None
    code = cause.errno
    reason, fix = _CAUSES.get(code, (cause.strerror or str(cause) or type(cause).__name__, "Fix the folder"))
    if code in _GONE and not path.parent.is_dir():
        reason, fix = (
            f"the folder {_missing_folder(path)} no longer exists (deleted or unmounted)",
            "Recreate it",
        )
    kept = f"; {kept}" if kept else "; no partial file was left behind"
    error = StorageError(f"cannot write {what} {path}: {reason}{kept}. {fix}, then {then}.")
    error.errno = code
    return error


def _missing_folder(path: Path) -> Path:
    """The outermost missing folder on the way to ``path``."""
    missing = path.parent
    for folder in path.parent.parents:
        if folder.is_dir():
            break
        missing = folder
    return missing


def _probe(folder: Path) -> OSError | None:
    """What ``folder`` answers to a 64 KiB file written, synced and removed (``None``: it took it)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".lightseg-probe-", dir=folder)
    except OSError as e:
        return e
    try:
        data = memoryview(bytes(_PROBE_BYTES))
        while data:
            data = data[os.write(fd, data) :]
        os.fsync(fd)
        return None
    except OSError as e:
        return e
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name)


@contextlib.contextmanager
def atomic_file(
    path: str | os.PathLike, what: str, then: str, kept: str = "", durable: bool = True
) -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through: ``<path>.tmp``, closed (and with ``durable`` synced to
    the disk) and renamed over ``path`` when the block ends, so that ``path`` is always either its
    previous complete content or the new one. A failure removes the temporary file and raises a
    :class:`StorageError` (see :func:`storage_error`). Without ``durable`` (outputs that are cheap to
    make again) a power cut may still lose a file written just before it; a sync took ~10 ms per
    file on an ext4 VM disk."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        failure = storage_error(e, path, what, then, kept)  # before the removal frees the space
        with contextlib.suppress(OSError):
            tmp.unlink()
        if failure is None:
            raise
        raise failure from e
    if durable:
        sync_folder(path.parent)


def write_text(path: str | os.PathLike, text: str, what: str, then: str) -> Path:
    """``path`` holds ``text`` (UTF-8), written through :func:`atomic_file`."""
    with atomic_file(path, what, then) as f:
        f.write(text.encode())
    return Path(path)


@contextlib.contextmanager
def staging(path: str | os.PathLike, what: str, then: str) -> Iterator[Path]:
    """A fresh folder beside ``path`` (created with its parents) for writers that want a path or make
    several files; move the finished ones into place with :func:`publish` inside the block. The
    folder and whatever is left in it go in any case; a failure raises a :class:`StorageError`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=".partial-", dir=path.parent))
    except OSError as e:
        raise storage_error(e, path, what, then) from e
    try:
        yield folder
    except BaseException as e:
        failure = storage_error(e, path, what, then, probe=folder)
        shutil.rmtree(folder, ignore_errors=True)
        if failure is None:
            raise
        raise failure from e
    shutil.rmtree(folder, ignore_errors=True)


def publish(made: Path, path: Path) -> Path:
    """Move a finished file from a :func:`staging` folder over ``path`` (atomic: the same disk)."""
    os.replace(made, path)
    sync_folder(path.parent)
    return path


def append_record(fd: int, data: bytes, path: Path, what: str, then: str) -> None:
    """Append ``data`` to the file open as ``fd`` (``O_APPEND``) whole or not at all: a failed write
    is cut off again, so the file keeps only complete records."""
    start = os.lseek(fd, 0, os.SEEK_END)
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError as e:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, start)
        raise storage_error(e, path, what, then, "it keeps its complete records") from e


def sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every file system allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
