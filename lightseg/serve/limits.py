"""What the server takes on: upload sizes, how long a client may take, how many at once.

Sizes bound memory per request; the counts bound requests and descriptors in total; the timeouts
make sure a client that stalls, or trickles bytes, gives its connection back.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Limits:
    """The server's limits (the command-line option of each in brackets).

    - ``max_bytes``: largest upload (``--max-upload-mb``); ``max_pixels``: largest width x height
      (``--max-pixels``; 16 Mi holds 4096 x 4096 and 12 MP phone photos), read from the image header
      before decoding.
    - ``max_connections``: open connections (``--max-connections``); a new one beyond it closes the
      longest-idle one (no request in flight), or is answered 503 when every one is busy.
    - ``max_uploads``: uploads received at once (``--max-uploads``); beyond it a 503 before
      the body is read.
    - ``header_timeout``: seconds from connecting (or from the previous answer) to a complete
      request head (``--header-timeout``).
    - ``body_timeout``: seconds an upload may pause, and its grace before ``min_upload_rate``
      applies (``--body-timeout``); also how long the unread rest of a refused body may take.
    - ``min_upload_rate``: bytes per second an upload must average after its grace
      (``--min-upload-kib-s``): after t seconds it must have sent ``(t - body_timeout) * rate`` bytes.
    - ``keep_alive``: seconds an idle connection is kept open between requests (``--keep-alive``).
    """

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 16 * 1024 * 1024
    max_connections: int = 512
    max_uploads: int = 16
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    min_upload_rate: float = 32 * 1024
    keep_alive: float = 5.0

    def __post_init__(self) -> None:
        bad = [f.name for f in fields(self) if not getattr(self, f.name) > 0]
        if bad:
            raise ValueError(f"limits must be positive: {', '.join(f'{n}={getattr(self, n)}' for n in bad)}")

    def upload_deadline(self, start: float, last: float, received: int) -> float:
        """When an upload that began at ``start``, last sent bytes at ``last`` and has sent
        ``received`` bytes is too slow: a pause of ``body_timeout``, or falling behind the rate."""
        return min(last, start + received / self.min_upload_rate) + self.body_timeout
