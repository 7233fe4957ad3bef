"""Rank 0's record of a run: ``log.jsonl``, TensorBoard scalars and messages above the progress bar."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lightseg.training.distributed import DistInfo


class RunLog:
    """Rank 0's outputs: ``log.jsonl`` (one JSON object per record), TensorBoard events if
    available, and messages above the progress bar. Other ranks write nothing.

    ``start`` is the iteration the run continues from: records after it (written by the
    interrupted process after its last checkpoint) are dropped, so the log never holds an
    iteration twice."""

    def __init__(self, work_dir: Path, info: DistInfo, tensorboard: bool, start: int = 0):
        self.main = info.is_main
        self.tb = None
        if not self.main:
            return
        work_dir.mkdir(parents=True, exist_ok=True)
        _truncate_log(work_dir / "log.jsonl", start)
        self.jsonl = open(work_dir / "log.jsonl", "a")  # noqa: SIM115 - closed in close()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(work_dir / "tb"), purge_step=start + 1 if start else None)
            except ImportError:
                self.info("tensorboard is not installed; logging to log.jsonl only")

    def info(self, msg: str) -> None:
        if self.main:
            from tqdm import tqdm

            tqdm.write(msg)

    def record(self, kind: str, iteration: int, values: dict[str, Any]) -> None:
        if not self.main:
            return
        self.jsonl.write(json.dumps({"kind": kind, "iter": iteration, **values}) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{kind}/{k}", v, iteration)

    def close(self) -> None:
        if self.main:
            self.jsonl.close()
            if self.tb is not None:
                self.tb.close()


def _truncate_log(path: Path, start: int) -> None:
    """Keep the records up to iteration ``start`` (a torn last line of a killed run goes too)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("iter", 0) <= start:
            kept.append(line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)
