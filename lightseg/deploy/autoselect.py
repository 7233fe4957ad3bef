"""The default path, chosen by measurement on the machine that runs it.

No rule on CPU flags predicts the fastest path: OpenVINO bf16 ran CGRSeg-T 2.1x faster than ONNX
Runtime fp32 on a Xeon with AMX, 1.9x faster on an AMD EPYC with AVX512-BF16 and no AMX, and slower
than fp32 on a Xeon with AVX512-BF16 and no AMX (docs/deploy.md). So the first time a model runs at
an input size, the paths that need nothing but its weights (:func:`candidates`) are timed on this
machine in alternating rounds within a budget (:func:`time_rounds`); a reduced-precision path
counts only if its labels agree with fp32's on at least :data:`AGREEMENT` of the pixels of the
probe image (the user's first input); the fastest counts (:func:`choose`). The decision is cached
beside the export cache (``$LIGHTSEG_CACHE/decisions``), keyed by everything it depends on
(:func:`decision_key`): the model's graph (weights, metadata, class), the input size, the CPU model
and flags, the library versions, the thread count and the device.

Asking for a runtime (``--runtime``, ``runtime=``) or ``$LIGHTSEG_RUNTIME`` skips the measurement;
asking for a precision alone measures that precision's paths. INT8 is never chosen for you (it
needs calibration images of your domain). The runners themselves are built by
:mod:`lightseg.deploy.runners.auto`; this module holds the decision and its record.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from lightseg.deploy.cpu import available_cores, cpu_identity, has_bf16
from lightseg.deploy.export_cache import cache_root, content_key, library_versions
from lightseg.deploy.extras import installed
from lightseg.deploy.formats import PRECISIONS, RUNTIMES, check_runtime
from lightseg.deploy.options import RunnerOptions
from lightseg.errors import ConfigError, InputError
from lightseg.meta import model_meta

ENV = "LIGHTSEG_RUNTIME"  # RUNTIME or RUNTIME:PRECISION: the default path without measuring
BUDGET_S = 15.0  # building, checking and timing the candidates (an export, once per size, aside)
AGREEMENT = 0.995  # a reduced precision's labels equal fp32's on at least this share of pixels
EXACT_MARGIN = 0.05  # fp32 within 5% of a faster reduced precision is chosen: the gain is noise
DROP_RATIO = 1.5  # a path this much slower than the fastest after a round is timed no further
RECORD_VERSION = 1
ORT_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
# An ONNX Runtime GPU provider and those that run what it cannot, in order.
PROVIDER_CHAINS = {
    "TensorrtExecutionProvider": (
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ),
    "CUDAExecutionProvider": ("CUDAExecutionProvider", "CPUExecutionProvider"),
}


# --------------------------------------------------------------------------------------------------
# What can run, and what the user asked for
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """A path a default may be: a runtime at a precision on a device (ONNX Runtime on CUDA: with
    an execution provider)."""

    runtime: str
    precision: str
    device: str = "cpu"
    provider: str | None = None

    @property
    def label(self) -> str:
        where = {"TensorrtExecutionProvider": " TensorRT", "CUDAExecutionProvider": " CUDA"}
        gpu = " cuda" if self.device == "cuda" and self.provider is None else ""
        return f"{self.runtime} {self.precision}{where.get(self.provider or '', '')}{gpu}"

    @property
    def exact(self) -> bool:
        return self.precision == "fp32"

    def options(self, base: RunnerOptions) -> RunnerOptions:
        """``base`` running this path."""
        return base.replace(
            runtime=self.runtime,
            precision=self.precision,
            device=self.device,
            providers=PROVIDER_CHAINS.get(self.provider or ""),
        )


def candidates(device: str = "cpu", precision: str | None = None) -> list[Candidate]:
    """The paths timed for a default. On a CPU: ONNX Runtime fp32 and OpenVINO fp32, and OpenVINO
    bf16 where the CPU has bfloat16 instructions, as installed; with neither runtime installed,
    the eager fallbacks (:func:`fallbacks`). On CUDA: eager torch fp32 / bf16 (where supported) /
    fp16 and ONNX Runtime with the TensorRT and CUDA providers where installed. With ``precision``
    (asked for): the paths that run it, whatever the CPU's instructions."""
    asked = precision is not None
    if device == "cuda":
        out = [
            Candidate("torch", p, "cuda")
            for p in ("fp32", "bf16", "fp16")
            if p != "bf16" or asked or _cuda_bf16()
        ]
        out += [Candidate("onnxruntime", "fp32", "cuda", p) for p in ort_gpu_providers()]
    else:
        out = [Candidate("onnxruntime", "fp32")] if installed("onnxruntime") else []
        if installed("openvino"):
            out += [Candidate("openvino", p) for p in ("fp32", "bf16") if p == "fp32" or asked or has_bf16()]
        out = [c for c in out if not asked or c.precision == precision] or fallbacks(device, precision)
    return [c for c in out if not asked or c.precision == precision]


def fallbacks(device: str = "cpu", precision: str | None = None) -> list[Candidate]:
    """Eager torch with BN folded, fp32 and (where the CPU has bfloat16 instructions, or asked
    for) bf16: timed where no exported runtime is installed or none of them could run the model.
    (With BN folded, eager was 2.4-3.1x slower than ONNX Runtime fp32 on the three CPUs measured,
    docs/deploy.md, so it is not timed against the runtimes.)"""
    if device == "cuda":
        return []
    out = [Candidate("torch", "fp32")]
    if precision == "bf16" or (precision is None and has_bf16()):
        out.append(Candidate("torch", "bf16"))
    return [c for c in out if precision is None or c.precision == precision]


def _cuda_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def ort_gpu_providers() -> list[str]:
    """ONNX Runtime's GPU execution providers installed here (TensorRT first)."""
    if not installed("onnxruntime"):
        return []
    import onnxruntime

    have = set(onnxruntime.get_available_providers())
    return [p for p in ORT_GPU_PROVIDERS if p in have]


def override() -> tuple[str, str | None] | None:
    """``$LIGHTSEG_RUNTIME`` as (runtime, precision or None); ``None`` when unset or ``auto``."""
    value = os.environ.get(ENV, "").strip()
    if value in ("", "auto"):
        return None
    runtime, _, precision = value.partition(":")
    hint = (
        f"${ENV}={value!r}: set it to RUNTIME or RUNTIME:PRECISION (runtimes: {', '.join(RUNTIMES)}; "
        f"precisions: {', '.join(PRECISIONS)}; e.g. openvino:bf16), or to auto to measure the fastest"
    )
    if runtime not in RUNTIMES or (precision and precision not in PRECISIONS):
        raise ConfigError(hint)
    try:
        check_runtime(runtime, precision or "fp32")
    except InputError as e:
        raise ConfigError(f"${ENV}={value!r}: {e}") from None
    return runtime, precision or None


def effective_threads(options: RunnerOptions) -> int:
    return int(options.threads or available_cores())


# --------------------------------------------------------------------------------------------------
# Timing and choosing
# --------------------------------------------------------------------------------------------------
@dataclass
class Measurement:
    """One candidate's record: its timings, its labels' agreement with fp32 and what became of it
    (``timed``, then ``chosen`` / ``slower`` / ``dropped``; or ``rejected`` / ``failed`` untimed)."""

    candidate: Candidate
    times_ms: list[float] = field(default_factory=list)
    agreement: float | None = None
    status: str = "timed"
    note: str = ""

    @property
    def median_ms(self) -> float | None:
        return statistics.median(self.times_ms) if self.times_ms else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "candidate": asdict(self.candidate)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Measurement:
        return cls(**{**d, "candidate": Candidate(**d["candidate"])})


def check_agreement(ms: Sequence[Measurement], enforce: bool = True) -> None:
    """Reject (untimed) every path whose labels agree with fp32's on less than :data:`AGREEMENT`
    of the pixels; ``enforce=False`` (a precision the user asked for) only records the figure."""
    for m in ms:
        if m.status == "timed" and m.agreement is not None and m.agreement < AGREEMENT:
            low = f"labels equal eager fp32's on {m.agreement:.2%} of the probe's pixels (< {AGREEMENT:.1%})"
            if enforce:
                m.status, m.note = "rejected", low
            else:
                m.note = low


def time_rounds(
    calls: dict[Candidate, Callable[[], Any]],
    budget_s: float = BUDGET_S,
    *,
    timer: Callable[[Candidate, Callable[[], Any]], float] | None = None,
    block: int = 3,
    max_runs: int = 15,
    drop_ratio: float = DROP_RATIO,
) -> tuple[dict[Candidate, list[float]], list[Candidate]]:
    """(milliseconds per call of each candidate, the candidates dropped), timed in rounds that
    visit every candidate in turn (reversed every other round, so drift in machine load hits all
    alike). The first round times two calls of each (each has just run once, on the probe);
    later rounds make one untimed call (it absorbs the previous path's thread pools still
    spinning), then ``block`` timed ones. After each round a candidate slower than ``drop_ratio``
    x the fastest median is dropped: it is timed no further. Ends when one candidate remains,
    every remaining one has ``max_runs`` timings, or the next round would end past ``budget_s``
    (the first round always runs). ``timer(candidate, call) -> seconds`` times one call (default:
    the wall clock; tests stub it)."""
    timer = timer or _wall_clock
    times: dict[Candidate, list[float]] = {c: [] for c in calls}
    alive, dropped = list(calls), []
    start, r = time.perf_counter(), 0
    while alive:
        for c in alive if r % 2 == 0 else alive[::-1]:
            if r:
                calls[c]()
            times[c] += [timer(c, calls[c]) * 1e3 for _ in range(block if r else 2)]
        r += 1
        medians = {c: statistics.median(times[c]) for c in alive}
        best = min(medians.values())
        dropped += [c for c in alive if medians[c] > drop_ratio * best]
        alive = [c for c in alive if medians[c] <= drop_ratio * best]
        next_round_s = sum(medians[c] for c in alive) * (block + 1) / 1e3
        if len(alive) == 1 or all(len(times[c]) >= max_runs for c in alive):
            break
        if time.perf_counter() - start + next_round_s > budget_s:
            break
    return times, dropped


def _wall_clock(candidate: Candidate, call: Callable[[], Any]) -> float:
    t = time.perf_counter()
    out = call()
    if candidate.device == "cuda":
        import torch

        torch.cuda.synchronize()
    del out
    return time.perf_counter() - t


def choose(ms: Sequence[Measurement], margin: float = EXACT_MARGIN) -> Measurement:
    """The fastest candidate still ``timed`` (lowest median); an fp32 one within ``margin`` of a
    faster reduced precision wins instead (the difference is within timing noise, the labels are
    exact). The others still timed become ``slower``."""
    timed = [m for m in ms if m.status == "timed" and m.times_ms]
    if not timed:
        raise RuntimeError("no path could be timed")
    best = min(timed, key=lambda m: m.median_ms)
    exact = [m for m in timed if m.candidate.exact]
    if not best.candidate.exact and exact:
        best_exact = min(exact, key=lambda m: m.median_ms)
        if best_exact.median_ms <= best.median_ms * (1 + margin):
            best = best_exact
    for m in timed:
        m.status = "chosen" if m is best else "slower"
    return best


# --------------------------------------------------------------------------------------------------
# The decision, its key and its record
# --------------------------------------------------------------------------------------------------
@dataclass
class Decision:
    """What was chosen, from what, on which machine: the record cached and printed."""

    chosen: Candidate
    measurements: list[Measurement]
    model: str
    size: tuple[int, int]
    threads: int
    device: str
    probe: str  # "first input" (the user's image) or "synthetic" (lightseg bench --auto's fallback)
    measure_s: float
    export_s: float = 0.0
    machine: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    loadavg: tuple[float, ...] = ()
    date: str = ""
    cached: bool = False  # read from the cache rather than measured now

    @property
    def runtime(self) -> str:
        return self.chosen.runtime

    @property
    def precision(self) -> str:
        return self.chosen.precision

    def measurement(self, c: Candidate) -> Measurement:
        return next(m for m in self.measurements if m.candidate == c)

    def why(self) -> str:
        """One sentence: what was chosen and on what evidence."""
        me = self.measurement(self.chosen)
        h, w = self.size
        others = [m for m in self.measurements if m is not me and m.times_ms]
        against = ", ".join(f"{m.candidate.label} {m.median_ms:.1f}" for m in others)
        text = (
            f"measured fastest of {len(self.measurements)} paths on this machine at {h}x{w}, "
            f"{self.threads} threads: {me.median_ms:.1f} ms"
            + (f" (others, ms: {against})" if against else "")
        )
        if not self.chosen.exact and me.agreement is not None:
            text += f"; its labels equal eager fp32's on {me.agreement:.2%} of the {self.probe}'s pixels"
        rejected = [m for m in self.measurements if m.status == "rejected"]
        text += "".join(f"; {m.candidate.label} rejected: {m.note}" for m in rejected)
        if self.cached:
            text += f"; measured {self.date[:10]}, cached"
        return text

    def table(self) -> str:
        """The measurements behind the choice, as a Markdown table."""
        rows = [
            "| path | median ms | min ms | timed runs | labels = eager fp32 | |",
            "|---|---|---|---|---|---|",
        ]
        for m in sorted(self.measurements, key=lambda m: (m.median_ms is None, m.median_ms or 0)):
            agree = _pct(m.agreement)
            timing = (
                [f"{m.median_ms:.1f}", f"{min(m.times_ms):.1f}", str(len(m.times_ms))]
                if m.times_ms
                else ["-", "-", "0"]
            )
            status = m.status + (f": {m.note}" if m.note else "")
            rows.append(f"| {m.candidate.label} | {' | '.join(timing)} | {agree} | {status} |")
        return "\n".join(rows)

    def summary(self) -> str:
        """Where and how it was measured (for ``lightseg bench --auto``)."""
        load = ", ".join(f"{x:.2f}" for x in self.loadavg)
        return (
            f"{self.model} at {self.size[0]}x{self.size[1]}, {self.threads} threads, {self.device} "
            f"({self.machine.get('cpu', '?')}); probe: {self.probe}; measuring took {self.measure_s:.1f} s "
            f"(budget {BUDGET_S:.0f} s)" + (f" after a {self.export_s:.1f} s export" if self.export_s else "")
            + f"; load average {load}; {'cached, measured' if self.cached else 'measured'} {self.date}"
        )  # fmt: skip

    def to_json(self) -> str:
        d = asdict(self)
        d.update(
            version=RECORD_VERSION,
            chosen=asdict(self.chosen),
            measurements=[m.to_dict() for m in self.measurements],
        )
        d.pop("cached")
        return json.dumps(d, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Decision:
        d = json.loads(text)
        if d.pop("version", None) != RECORD_VERSION:
            raise ValueError("another record version")
        d["chosen"] = Candidate(**d["chosen"])
        d["measurements"] = [Measurement.from_dict(m) for m in d["measurements"]]
        d["size"], d["loadavg"] = tuple(d["size"]), tuple(d["loadavg"])
        return cls(**d, cached=True)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2%}"


def decision_key(
    model: nn.Module, size: Sequence[int], options: RunnerOptions, paths: Sequence[Candidate]
) -> str:
    """SHA-256 of what a decision depends on: the model's graph (every weight, its metadata and
    class), the input size, the CPU model and flags, the library versions, the thread count, the
    device, how the model is optimised and which paths were candidates."""
    facts = {
        "purpose": "default path",
        "size": [int(size[0]), int(size[1])],
        "threads": effective_threads(options),
        "device": options.device,
        "gpu": _gpu_name(options.device),
        "optimize": options.optimize,
        "candidates": [c.label for c in paths],
        **cpu_identity(),
    }
    return content_key(model, facts)


def _gpu_name(device: str) -> str | None:
    if device != "cuda":
        return None
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def decisions_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``$LIGHTSEG_CACHE/decisions`` (beside ``exports``); with an export folder of your own,
    ``<it>/decisions``."""
    return (Path(cache_dir) if cache_dir else cache_root()) / "decisions"


def load_decision(folder: Path, key: str) -> Decision | None:
    """The cached decision for ``key``; ``None`` when there is none or it cannot be read."""
    try:
        return Decision.from_json((folder / f"{key}.json").read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_decision(folder: Path, key: str, decision: Decision) -> Path:
    """Write the record atomically (a reader sees the old one or the new one)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}.json"
    fd, tmp = tempfile.mkstemp(prefix=".partial-", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(decision.to_json())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


def new_decision(
    chosen: Candidate,
    ms: list[Measurement],
    model: nn.Module,
    size: Sequence[int],
    options: RunnerOptions,
    probe: str,
    measure_s: float,
    export_s: float,
) -> Decision:
    return Decision(
        chosen=chosen,
        measurements=ms,
        model=model_meta(model).name,
        size=(int(size[0]), int(size[1])),
        threads=effective_threads(options),
        device=options.device,
        probe=probe,
        measure_s=round(measure_s, 2),
        export_s=round(export_s, 2),
        machine=cpu_identity() | {"gpu": _gpu_name(options.device)},
        versions=library_versions(),
        loadavg=tuple(round(x, 2) for x in os.getloadavg()) if hasattr(os, "getloadavg") else (),
        date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )


def synthetic_probe(size: Sequence[int], seed: int = 0) -> np.ndarray:
    """The fallback probe where no image is given (``lightseg bench --auto`` without ``--image``):
    an H x W x 3 uint8 picture of flat regions with soft edges and mild noise, seeded, so that
    labels form regions as on a photograph. Not a photograph: the label check on it is weaker."""
    h, w = int(size[0]), int(size[1])
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image = np.zeros((h, w, 3), np.float32) + rng.uniform(60, 200, 3)
    for _ in range(12):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.1, 0.4) * min(h, w)
        inside = 0.5 - 0.5 * np.tanh((np.hypot(yy - cy, xx - cx) - r) / 4.0)  # a soft-edged disc
        image += inside[..., None] * (rng.uniform(0, 255, 3) - image)
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)
