"""How many decoded pixels the service holds at once.

An upload is small while compressed and 3 bytes a pixel once decoded (an 8 Mi-pixel photo: 25 MB,
plus its label map). Every decoded image waits for the inference workers, so without a bound the
memory grows with the number of clients. :class:`PixelGate` lets an upload decode only when the
images decoded before it leave room; the others wait holding their compressed bytes, and beyond
``max_waiting`` the answer is 503.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from lightseg.errors import RequestError

# One slot of the gate: an 8 Mi-pixel image (3840 x 2160); larger images take more than a slot.
SLOT_PIXELS = 8 * 2**20


def decoded_capacity(workers: int, max_batch: int, max_pixels: int) -> int:
    """Decoded pixels in flight: a full batch for every inference worker, in slots of
    :data:`SLOT_PIXELS` (so that raising ``--max-pixels`` does not raise the memory of many smaller
    uploads), and at least one image of ``max_pixels``."""
    return max(workers * max_batch * min(max_pixels, SLOT_PIXELS), max_pixels)


class PixelGate:
    """At most ``capacity`` decoded pixels in flight (an image larger than that runs alone); an
    upload goes in as soon as it fits (waiting ones are woken in the order they came)."""

    def __init__(self, capacity: int, max_waiting: int):
        if capacity < 1 or max_waiting < 0:
            raise ValueError(f"capacity must be >= 1 and max_waiting >= 0, got {capacity}, {max_waiting}")
        self.capacity, self.max_waiting = capacity, max_waiting
        self.held = 0  # pixels of the images decoded and not yet answered
        self.waiting = 0
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def hold(self, pixels: int) -> AsyncIterator[None]:
        """Hold ``pixels`` for the block: wait for room, or a 503 when too many already wait."""
        pixels = min(pixels, self.capacity)
        async with self._changed:
            if self.held + pixels > self.capacity:
                if self.waiting >= self.max_waiting:
                    raise RequestError(
                        503,
                        "busy",
                        f"{self.waiting} uploads are already waiting for the images before them; "
                        "retry shortly (--max-queue)",
                    )
                self.waiting += 1
                try:
                    await self._changed.wait_for(lambda: self.held + pixels <= self.capacity)
                finally:
                    self.waiting -= 1
            self.held += pixels
        try:
            yield
        finally:
            async with self._changed:
                self.held -= pixels
                self._changed.notify_all()
