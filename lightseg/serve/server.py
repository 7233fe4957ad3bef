"""The connection layer: uvicorn's HTTP/1.1 protocol (h11) with the limits uvicorn lacks.

uvicorn closes a connection that stays silent after an answer (``timeout_keep_alive``) and caps the
request head at 16 KiB (h11), but it waits without end for a head that never completes, and keeps
every connection it accepts. Its ``limit_concurrency`` counts idle connections as load: a flood of
idle connections would turn ``/healthz`` into 503s and still not be closed. :class:`GuardedProtocol`
adds, from :class:`~lightseg.serve.limits.Limits`:

- a cap on open connections: one beyond ``max_connections`` closes the connection that has been
  idle longest (no request in flight) or, when every one is busy, is answered 503 and closed;
- a deadline for the request head (``header_timeout``), from connecting or, on a kept-alive
  connection, from the first byte of the next request (until then uvicorn's keep-alive timeout
  applies): a client that stalls or trickles its head is answered 408 and closed;
- a deadline (``body_timeout``) for the unread rest of a body that was refused before it was read.

The upload itself is timed where it is read (:func:`lightseg.serve.uploads.read_body`), so that
its answer can say what was too slow.
"""

from __future__ import annotations

import copy
import ctypes
import logging
import os

import h11
import uvicorn
from uvicorn.config import LOGGING_CONFIG
from uvicorn.protocols.http.h11_impl import H11Protocol

from lightseg.errors import ConfigError, RequestError
from lightseg.serve.guard import Guard, raw_error
from lightseg.serve.limits import Limits
from lightseg.serve.metrics import Metrics

BACKLOG = 128  # connections the kernel queues; also the most accepted at once beyond the cap
DESCRIPTORS_RESERVED = 128  # model files, runtime threads, logs: what the process opens besides sockets
LINGER_S = 1.0  # a refused connection is read (and ignored) this long so that its 503 is not lost
LOGGED_PATH_CHARS = 200  # of a request's path in a log line: a path may be 16 KiB long


class GuardedProtocol(H11Protocol):
    """Made per server by :func:`protocol_class`, which sets the class attributes below."""

    limits: Limits
    metrics: Metrics
    open: set  # every connection of this server
    idle: dict  # the connections with no request in flight, longest idle first

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        # "head": waiting for a request; "drain": for the rest of a refused body; "refused": over the cap
        self._phase: str | None = None
        self._timer = None
        self._head_bytes = 0
        self._answered = False  # a request was answered: the keep-alive timeout applies between requests
        if len(self.open) >= self.limits.max_connections and not self._evict_idlest():
            self.metrics.reject("connections_full")
            message = (
                f"all {self.limits.max_connections} connections are busy; retry shortly (--max-connections)"
            )
            self._refuse(raw_error(RequestError(503, "connections_full", message)))
            return
        self.open.add(self)
        self._watch()

    def connection_lost(self, exc) -> None:
        self._set_phase(None)
        self.open.discard(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._phase == "refused":
            return
        if self._phase == "head":
            if self._answered and not self._head_bytes:  # the next request on a kept-alive connection
                self._arm(self.limits.header_timeout)
            self._head_bytes += len(data)
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        self._answered = True
        super().on_response_complete()
        self._watch()

    def _watch(self) -> None:
        """Arm the deadline of the connection's new phase (none while a request is in flight)."""
        busy = self.cycle is not None and not self.cycle.response_complete
        phase = None
        if not busy and not self.transport.is_closing():
            phase = {h11.IDLE: "head", h11.SEND_BODY: "drain"}.get(self.conn.their_state)
        if phase != self._phase:
            self._set_phase(phase)

    def _set_phase(self, phase: str | None) -> None:
        self._phase, self._head_bytes = phase, 0
        self.idle.pop(self, None)
        if phase is None:
            self._arm(None)
            return
        self.idle[self] = None
        if phase == "drain":
            self._arm(self.limits.body_timeout)
        else:  # a kept-alive connection's next head has its header_timeout from its first byte
            self._arm(self.limits.keep_alive if self._answered else self.limits.header_timeout)

    def _arm(self, timeout: float | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None if timeout is None else self.loop.call_later(timeout, self._expire)

    def _refuse(self, answer: bytes) -> None:
        """Answer and close, reading what the client sends meanwhile: closing with unread data
        would reset the connection, and the client could lose the answer."""
        self._phase = "refused"
        self.transport.write(answer)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._arm(LINGER_S)

    def _expire(self) -> None:
        self._timer = None
        if self._phase == "refused":
            self.transport.close()
        elif self._phase == "head" and self._answered and not self._head_bytes:
            self._close(None)  # kept alive long enough (uvicorn's own timer may have done it already)
        elif self._phase == "head":
            if self._head_bytes:  # a client that started a request hears why
                message = f"the request head did not arrive within {self.limits.header_timeout:g} s (--header-timeout)"
                self.transport.write(raw_error(RequestError(408, "header_timeout", message)))
            self._close("header_timeout")
        else:
            self._close("body_timeout")

    def _evict_idlest(self) -> bool:
        if not self.idle:
            return False
        next(iter(self.idle))._close("idle_evicted")
        return True

    def _close(self, reason: str | None) -> None:
        if reason is not None:
            self.metrics.reject(reason)
        self._set_phase(None)
        self.open.discard(self)
        self.transport.close()


def short_path(path: str) -> str:
    """``path`` cut for a log line, so that a flood of long paths cannot grow the log 16 KiB a line."""
    return path if len(path) <= LOGGED_PATH_CHARS else f"{path[:LOGGED_PATH_CHARS]}...({len(path)} chars)"


class ShortAccessLines(logging.Filter):
    """Cuts the path in uvicorn's access lines (``client - "METHOD path HTTP/v" status``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        # Once per record: each configuration of the logging (one per server) adds a filter.
        if (
            isinstance(args, tuple)
            and len(args) == 5
            and isinstance(args[2], str)
            and not hasattr(record, "cut")
        ):
            record.args, record.cut = (*args[:2], short_path(args[2]), *args[3:]), True
        return True


def protocol_class(limits: Limits, metrics: Metrics) -> type[GuardedProtocol]:
    """A :class:`GuardedProtocol` for one server, its open connections reported in ``metrics``."""
    cls = type(
        "ServerProtocol",
        (GuardedProtocol,),
        {"limits": limits, "metrics": metrics, "open": set(), "idle": {}},
    )
    metrics.reading("open_connections", "Open client connections.", lambda: len(cls.open))
    return cls


def server_config(app: Guard, host: str = "127.0.0.1", port: int = 8000, **options) -> uvicorn.Config:
    """The uvicorn configuration serving ``app`` (from :func:`lightseg.serve.create_app`) with its
    limits; ``options`` go to :class:`uvicorn.Config` (e.g. ``access_log=False``)."""
    log_config = copy.deepcopy(LOGGING_CONFIG)
    level = str(options.get("log_level", "info")).upper()
    log_config["loggers"]["lightseg.serve"] = {"handlers": ["default"], "level": level, "propagate": False}
    log_config.setdefault("filters", {})["short_paths"] = {"()": ShortAccessLines}
    log_config["loggers"]["uvicorn.access"]["filters"] = ["short_paths"]
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol_class(app.limits, app.metrics),
        ws="none",  # no WebSocket routes: an upgrade request is served as plain HTTP
        timeout_keep_alive=app.limits.keep_alive,
        backlog=BACKLOG,
        server_header=False,
        log_config=log_config,
        **options,
    )


def ensure_descriptors(limits: Limits) -> None:
    """Raise this process's open-file limit to what ``max_connections`` needs (up to the hard
    limit), or say which option to lower: running out makes the server fail to accept anyone."""
    try:
        import resource
    except ImportError:  # Windows: no such limit to raise
        return
    need = limits.max_connections + BACKLOG + DESCRIPTORS_RESERVED
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    raised = need if hard == resource.RLIM_INFINITY else min(hard, need)
    resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
    if raised < need:
        raise ConfigError(
            f"--max-connections {limits.max_connections} needs about {need} open files, but this process "
            f"may open at most {hard} (ulimit -Hn); lower --max-connections or raise the limit"
        )
    logging.getLogger("lightseg.serve").debug("open-file limit raised from %d to %d", soft, raised)


# glibc gives every thread that allocates at once an arena of its own (up to 8 per core) and keeps
# what a freed image leaves there, so the request threads' decoded uploads stay resident. Measured
# with 16 clients sending 8 MP uploads (benchmarks/inputs_memory.py, CGRSeg-T, 2-core AMD EPYC):
# peak 2173 MB with glibc's default, 1550 MB with 4 arenas, 1465 MB with 2, 1305 MB with 1, at the
# same throughput (4.3-4.4 requests/s: inference is the bottleneck).
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt's parameter number (malloc.h)


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas for this process (before the server's threads start); whether it
    took effect. ``MALLOC_ARENA_MAX`` in the environment wins; other C libraries are left alone."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        return False
    return bool(mallopt(_M_ARENA_MAX, arenas))
