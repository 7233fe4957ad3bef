"""Rank 0's record of a run: ``log.jsonl``, TensorBoard scalars and messages above the progress bar."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lightseg.storage import append_record, storage_error, write_text
from lightseg.training.distributed import DistInfo

LOG = "log.jsonl"
_THEN = "run the same command again to resume from the last checkpoint"


class RunLog:
    """Rank 0's outputs: ``log.jsonl`` (one JSON object per record), TensorBoard events if
    available, and messages above the progress bar. Other ranks write nothing.

    ``start`` is the iteration the run continues from: records after it (written by the
    interrupted process after its last checkpoint) are dropped, so the log never holds an
    iteration twice. A record that cannot be written (a full disk) stops the run with one
    :class:`~lightseg.errors.StorageError`; the log keeps only whole records."""

    def __init__(self, work_dir: Path, info: DistInfo, tensorboard: bool, start: int = 0):
        self.main = info.is_main
        self.tb = None
        if not self.main:
            return
        self.path = work_dir / LOG
        _truncate_log(self.path, start)
        try:
            work_dir.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise storage_error(e, self.path, "the run log", _THEN) from e
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.info("tensorboard is not installed; logging to log.jsonl only")
            else:
                folder = work_dir / "tb"
                self.tb = GuardedWriter(
                    folder, SummaryWriter, str(folder), purge_step=start + 1 if start else None
                )

    def info(self, msg: str) -> None:
        if self.main:
            from tqdm import tqdm

            tqdm.write(msg)

    def record(self, kind: str, iteration: int, values: dict[str, Any]) -> None:
        if not self.main:
            return
        line = json.dumps({"kind": kind, "iter": iteration, **values}) + "\n"
        append_record(self.fd, line.encode(), self.path, "the run log", _THEN)
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{kind}/{k}", v, iteration)

    def close(self) -> None:
        if self.main:
            os.close(self.fd)
            if self.tb is not None:
                self.tb.close()

    @contextlib.contextmanager
    def closed_on_error(self) -> Iterator[None]:
        """Close the files when the run stops with an error (whose report a failing close must not
        replace), so that a notebook or test that goes on holds no open log."""
        try:
            yield
        except BaseException:
            if self.main:
                with contextlib.suppress(Exception):
                    self.close()
            raise


class GuardedWriter:
    """A TensorBoard ``SummaryWriter`` whose failed writes (a full, read-only or vanished disk) are one
    :class:`~lightseg.errors.StorageError` naming the events folder.

    TensorBoard writes from a thread that re-raises a failed write, which Python would print as a
    traceback; the same exception reaches the run at its next TensorBoard call (where it becomes the
    error), so the thread's copy is not printed."""

    def __init__(self, folder: Path, make: Callable[..., Any], *args: Any, **kwargs: Any):
        self.folder = folder
        _quiet_tensorboard_thread()
        self.writer = self._guard(make)(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.writer, name)
        return self._guard(attr) if callable(attr) else attr

    def _guard(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except (OSError, RuntimeError) as e:
                kept = "the events written so far are kept"
                failure = storage_error(e, self.folder / "events", "TensorBoard events", _THEN, kept)
                if failure is None:
                    raise
                raise failure from e

        return call


_QUIET = False


def _quiet_tensorboard_thread() -> None:
    global _QUIET
    if _QUIET:
        return
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if type(args.thread).__name__ == "_AsyncWriterThread" and isinstance(args.exc_value, OSError):
            return  # re-raised by the writer's next call in the main thread
        previous(args)

    threading.excepthook = hook
    _QUIET = True


def _truncate_log(path: Path, start: int) -> None:
    """Keep the records up to iteration ``start`` (a torn last line of a killed run goes too)."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("iter", 0) <= start:
            kept.append(line if line.endswith("\n") else line + "\n")
    if kept != lines:
        write_text(path, "".join(kept), "the run log", _THEN)
