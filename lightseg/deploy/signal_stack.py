"""Keep the calling thread's alternate signal stack across OpenVINO calls.

OpenVINO's CPU plugin installs an alternate signal stack (``sigaltstack``) on the thread that
compiles or runs a model, in memory it later frees. The next signal delivered to a handler that
runs on the alternate stack (every Python-level handler does: CPython installs them with
``SA_ONSTACK``; torch's DataLoader installs one for SIGCHLD) then cannot be delivered, and the
kernel kills the process with SIGSEGV: a test run died that way while waiting for a child
process, long after the OpenVINO model was gone. Restoring the thread's own setting after each
OpenVINO call removes the dangling stack. Linux only; elsewhere this does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from collections.abc import Iterator


class _StackT(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover - a libc without a symbol table
        return None


_LIBC = _libc()
_SS_ONSTACK = 1


def current() -> tuple[int, int, int] | None:
    """The calling thread's (address, flags, size) of its alternate signal stack."""
    if _LIBC is None:
        return None
    st = _StackT()
    if _LIBC.sigaltstack(None, ctypes.byref(st)) != 0:
        return None
    return int(st.ss_sp or 0), int(st.ss_flags), int(st.ss_size)


@contextlib.contextmanager
def kept() -> Iterator[None]:
    """Run the body, then give the calling thread back the alternate signal stack it had."""
    before = current()
    try:
        yield
    finally:
        after = current()
        if before is not None and after != before and not (after[1] & _SS_ONSTACK):
            sp, flags, size = before
            st = _StackT(sp or None, flags, size)
            _LIBC.sigaltstack(ctypes.byref(st), None)
