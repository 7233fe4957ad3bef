"""Memory a pass may take: the budget, and the estimate that keeps every pass inside it.

A pass of a segmentor over an image takes memory for its activations and the runtime's buffers,
which grows with the input pixels P as ``per_pixel * P + per_pixel2 * P**2`` (the square is attention
over all tokens: EfficientFormerV2's last stages). The coefficients are measured per model and
runtime by ``benchmarks/pass_memory.py`` and shipped in ``pass_memory.json``; a model that was not
measured is given the largest coefficients measured for any model, so its estimate errs high.
Buffers whose size is known exactly (logits, labels, probabilities) are counted exactly.

The budget (``--max-memory``, ``Segmenter(max_memory=...)``) is what inference may allocate beyond
the loaded model: predict's default is half the memory available when it starts, serve's
:data:`SERVE_BUDGET`. A plan that does not fit is changed (smaller batches, sliding windows) or
refused with the figures, before anything is allocated.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources

from lightseg.errors import InputError

MiB = 2**20
GiB = 2**30
SERVE_BUDGET = int(1.25 * GiB)  # with a CGRSeg-T-sized model loaded, the service stays near 2 GB
PREDICT_SHARE = 0.5  # of the memory available at start
MARGIN = 1.25  # on top of the measured pass memory: allocator slack, sizes between the measured ones
_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_size(text: str | int | float) -> int:
    """Bytes from ``2G``, ``1.5GiB``, ``1500M``, ``800MB`` or a plain number of bytes."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        value = int(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgtKMGT]?)(i?[bB])?\s*", str(text))
        if m is None:
            raise InputError(f"memory size {text!r}: write a number with a unit, e.g. 2G, 1500M or 800MB")
        value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if value <= 0:
        raise InputError(f"memory size {text!r} must be more than 0")
    return value


def describe(nbytes: float) -> str:
    """``1.2 GB`` / ``340 MB`` (GiB / MiB, as the options take them)."""
    return f"{nbytes / GiB:.1f} GB" if nbytes >= GiB else f"{max(nbytes / MiB, 0.1):.0f} MB"


def available_memory() -> int | None:
    """Bytes the system can still give (``MemAvailable``; ``None`` where it cannot say)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def default_budget() -> int:
    """Predict's budget: :data:`PREDICT_SHARE` of the available memory (4 GB where unknown)."""
    free = available_memory()
    return int(free * PREDICT_SHARE) if free else 4 * GiB


@functools.cache
def _table() -> dict:
    text = resources.files("lightseg.deploy").joinpath("pass_memory.json").read_text(encoding="utf-8")
    return json.loads(text)["models"]


@dataclass(frozen=True)
class PassCost:
    """Bytes of one pass at P input pixels: ``per_pixel * P + per_pixel2 * P**2`` (batch 1)."""

    per_pixel: float
    per_pixel2: float
    measured: bool  # False: the model was not measured; the largest coefficients stand in

    def bytes(self, pixels: int, batch: int = 1) -> int:
        p = float(pixels)
        return int(MARGIN * batch * (self.per_pixel * p + self.per_pixel2 * p * p))

    def largest_pixels(self, budget: float) -> int:
        """The most pixels one image may have for a pass of batch 1 to fit ``budget`` bytes."""
        a, b, c = self.per_pixel2 * MARGIN, self.per_pixel * MARGIN, -float(budget)
        if a <= 0:
            return int(-c / b) if b > 0 else 1 << 62
        return int((-b + math.sqrt(b * b - 4 * a * c)) / (2 * a))


def pass_cost(model_name: str, runtime: str | None) -> PassCost:
    """The measured cost of ``model_name`` on ``runtime`` (torch for a runtime not measured). With
    ``runtime`` ``None`` (chosen by measurement later) the largest of the model's runtimes; for a
    model not in the table the largest of every model measured on that runtime."""
    table = _table()
    measured = runtime is None or any(runtime in runtimes for runtimes in table.values())
    runtime = runtime if measured else "torch"
    entry = table.get(model_name, {})
    if runtime in entry:
        return PassCost(entry[runtime]["per_pixel"], entry[runtime]["per_pixel2"], True)
    if entry:
        return _largest(entry.values(), True) if runtime is None else _largest([entry["torch"]], True)
    return _largest([r for rs in table.values() for rt, r in rs.items() if runtime in (None, rt)], False)


def _largest(records: Iterable[dict[str, float]], known: bool) -> PassCost:
    records = list(records)
    return PassCost(max(r["per_pixel"] for r in records), max(r["per_pixel2"] for r in records), known)
