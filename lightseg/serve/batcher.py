"""The inference workers: as many as the runtime runs inferences at once (``workers``: its
OpenVINO streams or ONNX Runtime sessions, sized to the cores; one for eager torch).

Requests queue up; a free worker takes the oldest and, with it, up to ``max_batch - 1`` more waiting
requests of the same image size (micro-batching: no request is held back to wait for company, so a
lone request pays nothing). While one worker's batch runs on its share of the cores, another's runs
on the rest, or computes its labels. Decoding and encoding run outside, in the server's thread pool.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from lightseg.errors import RequestError
from lightseg.serve.backend import Backend


@dataclass
class Result:
    labels: np.ndarray
    queue_ms: float  # waiting for the worker
    inference_ms: float  # the batch this request ran in
    batch_size: int


@dataclass(eq=False)  # identity: the queue removes jobs by identity, never by comparing images
class _Job:
    image: np.ndarray
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    queued_at: float = field(default_factory=time.perf_counter)


class Batcher:
    """``await batcher.segment(image)`` -> :class:`Result`; at most ``max_queue`` requests wait
    (more are refused with 503 so that a flood cannot exhaust memory). ``workers`` (default: the
    backend's) threads run batches side by side."""

    def __init__(self, backend: Backend, max_batch: int = 4, max_queue: int = 64, workers: int | None = None):
        workers = getattr(backend, "workers", 1) if workers is None else workers
        if max_batch < 1 or max_queue < 1 or workers < 1:
            raise ValueError(
                f"max_batch, max_queue and workers must be >= 1, got {max_batch}, {max_queue}, {workers}"
            )
        self.backend = backend
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.served = 0
        self._queue: collections.deque[_Job] = collections.deque()
        self._cv = threading.Condition()
        self._closed = False
        self._stopped = False  # a worker has ended: no job is accepted any more
        self._threads = [
            threading.Thread(target=self._work, name=f"lightseg-inference-{i}", daemon=True)
            for i in range(workers)
        ]

    @property
    def workers(self) -> int:
        return len(self._threads)

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        for t in self._threads:
            t.join()

    @property
    def alive(self) -> bool:
        return all(t.is_alive() for t in self._threads) and not self._stopped

    @property
    def waiting(self) -> int:
        return len(self._queue)

    async def segment(self, image: np.ndarray) -> Result:
        loop = asyncio.get_running_loop()
        job = _Job(image, loop.create_future(), loop)
        with self._cv:
            if self._stopped:
                raise RuntimeError("the inference worker has stopped")
            if len(self._queue) >= self.max_queue:
                raise RequestError(
                    503, "busy", f"{self.max_queue} requests are already waiting; retry shortly (--max-queue)"
                )
            self._queue.append(job)
            self._cv.notify()
        return await job.future

    def _next_batch(self) -> list[_Job] | None:
        """The oldest job and waiting jobs of its image size (up to ``max_batch``), or ``None`` once
        closed and drained."""
        with self._cv:
            while not self._queue and not self._closed:
                self._cv.wait()
            if not self._queue:
                return None
            batch = [self._queue.popleft()]
            shape = batch[0].image.shape
            for job in list(self._queue):
                if len(batch) == self.max_batch:
                    break
                if job.image.shape == shape:
                    batch.append(job)
                    self._queue.remove(job)
            return batch

    def _work(self) -> None:
        try:
            self._serve_batches()
        finally:  # closed, or a bug: nobody may wait forever
            with self._cv:
                self._stopped = True
                left, self._queue = list(self._queue), collections.deque()
            for job in left:
                _post(job, None, RuntimeError("the inference worker has stopped"))

    def _serve_batches(self) -> None:
        while (batch := self._next_batch()) is not None:
            start = time.perf_counter()
            try:
                labels = self.backend.segment([job.image for job in batch])
            except Exception as e:  # a bug or resource error: fail these requests, keep serving
                for job in batch:
                    _post(job, None, e)
                continue
            ms = (time.perf_counter() - start) * 1e3
            for job, lab in zip(batch, labels):
                result = Result(lab, (start - job.queued_at) * 1e3, ms, len(batch))
                _post(job, result, None)
            with self._cv:
                self.served += len(batch)


def _post(job: _Job, result: Result | None, error: Exception | None) -> None:
    # RuntimeError: the event loop has closed (the server shut down), nobody is waiting.
    with contextlib.suppress(RuntimeError):
        job.loop.call_soon_threadsafe(_settle, job.future, result, error)


def _settle(future: asyncio.Future, result: Result | None, error: Exception | None) -> None:
    if future.done():  # the client went away and the request was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
