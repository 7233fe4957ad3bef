"""Who may use the server, and what every answer carries.

:class:`Guard` wraps the application: a request whose ``Host`` is not one the server answers to is
refused (a web page the user opens cannot reach a service on their machine through DNS rebinding),
so is one without the bearer token when a token is set, and every answer, refusals and errors
included, carries the security headers. Refusals are JSON errors like the application's own.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
import time
from dataclasses import dataclass
from http import HTTPStatus

from starlette.responses import JSONResponse

from lightseg.errors import RequestError
from lightseg.serve.limits import Limits
from lightseg.serve.metrics import CLIENT_CLOSED, Metrics

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
# Open without a token: the page (it asks for the token) and the health check (it says nothing).
OPEN_PATHS = ("/", "/healthz")
# On every answer unless the answer sets its own (the page sets its own policy): no content-type
# guessing, no framing, no referrer, no stored copies of anyone's results.
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
)
_HOST = re.compile(r"\[(?P<ipv6>[0-9A-Fa-f:.]+)\](?::\d*)?|(?P<name>[^:\[\]/@\s]+)(?::\d*)?")


@dataclass(frozen=True)
class Access:
    """``hosts``: the names and addresses the server answers to (``*``: any); ``token``: the bearer
    token every request but the page and ``/healthz`` must carry (``None``: no authentication)."""

    hosts: tuple[str, ...] = LOOPBACK_HOSTS
    token: str | None = None

    def __post_init__(self) -> None:
        hosts = tuple(dict.fromkeys("*" if h == "*" else canonical_host(h.strip("[]")) for h in self.hosts))
        object.__setattr__(self, "hosts", hosts)
        token = self.token
        if token is not None and not (token and token.isascii() and token.isprintable() and " " not in token):
            raise ValueError(
                "a token is non-empty printable ASCII without spaces; make one with "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )

    def refusal(self, scope: dict) -> RequestError | None:
        """Why the request in ``scope`` is refused, or ``None``."""
        values = [v.decode("latin-1") for k, v in scope["headers"] if k == b"host"]
        if "*" not in self.hosts:
            host = request_host(values[0]) if len(values) == 1 else None
            if host not in self.hosts:
                return RequestError(
                    400,
                    "bad_host",
                    f"this server does not answer to Host {', '.join(map(repr, values)) or '(none)'}; "
                    f"it answers to {', '.join(self.hosts)} (the server's --allowed-host adds names)",
                )
        if self.token is not None and scope["path"] not in OPEN_PATHS and not self._bears_token(scope):
            return RequestError(
                401,
                "unauthorized",
                "this server needs its access token: send the header 'Authorization: Bearer <token>'",
            )
        return None

    def _bears_token(self, scope: dict) -> bool:
        given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        scheme, _, credential = given.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(credential.strip(), self.token.encode())


def canonical_host(name: str) -> str:
    """``name`` as the allow-list compares it: an IP address in its short form, a name in lower
    case without a trailing dot."""
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name.lower().rstrip(".")


def request_host(value: str) -> str | None:
    """The host of a ``Host`` header (``name``, ``name:port``, ``[v6]:port``), or ``None``."""
    match = _HOST.fullmatch(value.strip())
    if match is None:
        return None
    return canonical_host(match["ipv6"] or match["name"])


class Guard:
    """The ASGI application :mod:`lightseg.serve` runs: ``app`` behind the :class:`Access` checks,
    security headers on every answer, every request counted in ``metrics``. ``limits`` and
    ``metrics`` travel with it to the connection layer (:func:`lightseg.serve.server.server_config`)."""

    def __init__(self, app, access: Access, limits: Limits, metrics: Metrics):
        self.app, self.access, self.limits, self.metrics = app, access, limits, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":  # lifespan
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), CLIENT_CLOSED

        async def send_secured(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": with_security_headers(message.get("headers", []))}
            await send(message)

        try:
            refusal = self.access.refusal(scope)
            if refusal is None:
                await self.app(scope, receive, send_secured)
            else:
                self.metrics.reject(refusal.code)
                await json_error(refusal)(scope, receive, send_secured)
        finally:
            self.metrics.observe(scope["path"], status, time.perf_counter() - start)


def with_security_headers(headers) -> list:
    present = {name.lower() for name, _ in headers}
    return [*headers, *((name, value) for name, value in SECURITY_HEADERS if name not in present)]


def _error_headers(status: int) -> dict[str, str]:
    return {
        401: {"WWW-Authenticate": 'Bearer realm="lightseg"'},
        408: {"Connection": "close"},  # the rest of a stalled upload is not waited for
        503: {"Retry-After": "1"},
    }.get(status, {})


def json_error(exc: RequestError, headers: dict | None = None) -> JSONResponse:
    """``{"status", "error", "message"}`` with the status's own headers (and ``headers``)."""
    return JSONResponse(
        {"status": exc.status, "error": exc.code, "message": str(exc)},
        status_code=exc.status,
        headers={**_error_headers(exc.status), **(headers or {})},
    )


def raw_error(exc: RequestError) -> bytes:
    """:func:`json_error` as the bytes of an HTTP/1.1 answer that closes the connection, for the
    connection layer, which answers outside any request."""
    body = json.dumps({"status": exc.status, "error": exc.code, "message": str(exc)}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *(
            (k.lower().encode(), v.encode())
            for k, v in _error_headers(exc.status).items()
            if k != "Connection"
        ),
    ]
    head = [f"HTTP/1.1 {exc.status} {HTTPStatus(exc.status).phrase}".encode()]
    head += [name + b": " + value for name, value in with_security_headers(headers)]
    return b"\r\n".join(head) + b"\r\n\r\n" + body
