"""What the server has done, for ``GET /metrics`` in the Prometheus text format (version 0.0.4).

Requests by route and status, their latency as a histogram, refusals by reason, and gauges read
when scraped (queue depth, uploads in progress, open connections). Every update runs on the event
loop, so nothing here needs a lock. Route labels come from a fixed list, so no client can grow the
set of series.
"""

from __future__ import annotations

import bisect
import collections
from collections.abc import Callable

ROUTES = ("/", "/healthz", "/metrics", "/v1/model", "/v1/segment")
# Seconds: from a health check (milliseconds) to a large image on a busy CPU (tens of seconds).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Requests and connections refused for capacity or policy (the ``error`` codes of the JSON answers,
# and what the connection layer does); listed so that each series exists from the start.
REJECTIONS = (
    "bad_host",
    "unauthorized",
    "busy",
    "uploads_busy",
    "upload_too_slow",
    "connections_full",
    "idle_evicted",
    "header_timeout",
    "body_timeout",
)
CLIENT_CLOSED = 499  # the status recorded for a request whose client left before the answer
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self.requests: collections.Counter[tuple[str, int]] = collections.Counter()
        self.rejections: collections.Counter[str] = collections.Counter(dict.fromkeys(REJECTIONS, 0))
        self._buckets = {route: [0] * (len(BUCKETS) + 1) for route in (*ROUTES, "other")}
        self._sums = dict.fromkeys(self._buckets, 0.0)
        self._gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    def observe(self, path: str, status: int, seconds: float) -> None:
        route = path if path in ROUTES else "other"
        self.requests[route, status] += 1
        self._buckets[route][bisect.bisect_left(BUCKETS, seconds)] += 1
        self._sums[route] += seconds

    def reject(self, reason: str) -> None:
        self.rejections[reason] += 1

    def reading(self, name: str, help_: str, read: Callable[[], float]) -> None:
        """Report ``read()`` as ``lightseg_<name>`` at every scrape (a counter if the name ends in
        ``_total``, else a gauge)."""
        self._gauges[name] = (help_, read)

    def render(self) -> str:
        out = [
            "# HELP lightseg_http_requests_total HTTP requests answered, by route and status "
            f"({CLIENT_CLOSED}: the client left before the answer).",
            "# TYPE lightseg_http_requests_total counter",
        ]
        for (route, status), n in sorted(self.requests.items()):
            out.append(f'lightseg_http_requests_total{{route="{route}",status="{status}"}} {n}')
        out += [
            "# HELP lightseg_http_request_duration_seconds Time from the request head to the end of the answer.",
            "# TYPE lightseg_http_request_duration_seconds histogram",
        ]
        for route, counts in self._buckets.items():
            cumulative = 0
            for le, n in zip((*(f"{b:g}" for b in BUCKETS), "+Inf"), counts):
                cumulative += n
                out.append(
                    f'lightseg_http_request_duration_seconds_bucket{{route="{route}",le="{le}"}} {cumulative}'
                )
            out.append(
                f'lightseg_http_request_duration_seconds_sum{{route="{route}"}} {self._sums[route]:.6f}'
            )
            out.append(f'lightseg_http_request_duration_seconds_count{{route="{route}"}} {cumulative}')
        out += [
            "# HELP lightseg_rejections_total Requests and connections refused, by reason.",
            "# TYPE lightseg_rejections_total counter",
        ]
        out += [f'lightseg_rejections_total{{reason="{r}"}} {n}' for r, n in sorted(self.rejections.items())]
        for name, (help_, read) in sorted(self._gauges.items()):
            kind = "counter" if name.endswith("_total") else "gauge"
            out += [
                f"# HELP lightseg_{name} {help_}",
                f"# TYPE lightseg_{name} {kind}",
                f"lightseg_{name} {_number(read())}",
            ]
        return "\n".join(out) + "\n"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
