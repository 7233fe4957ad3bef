"""A model on the path measured fastest on this machine, decided on its first input of each size
(:mod:`lightseg.deploy.autoselect` holds the decision; this module builds and runs the paths)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lightseg.deploy import autoselect as auto
from lightseg.deploy.autoselect import Candidate, Decision, Measurement
from lightseg.deploy.options import RunnerOptions
from lightseg.deploy.runners.base import Runner
from lightseg.deploy.runners.exporting import ExportingRunner
from lightseg.deploy.runners.pytorch import TorchRunner
from lightseg.errors import InputError
from lightseg.inference import upsample_argmax
from lightseg.meta import model_meta


def build_path(model: nn.Module, path: Candidate, options: RunnerOptions) -> Runner:
    """The runner of ``path`` for ``model`` (an exporting one for ONNX Runtime and OpenVINO)."""
    o = path.options(options)
    if o.runtime == "torch":
        optimize = "fold-bn" if o.optimize == "compile" else o.optimize  # no minutes-long compile
        threads = auto.effective_threads(o)  # the thread count the decision is keyed by
        return TorchRunner(model, optimize, o.precision, device=o.device, threads=threads)
    return ExportingRunner(model, o)


class AutoRunner(Runner):
    """A model on the fastest path for each padded input size, measured on the first input of that
    size (or read from the cache of decisions): see :mod:`lightseg.deploy.autoselect`.

    ``runtime`` / ``precision`` / ``why`` describe the latest decision (``None`` before the first
    input); ``decisions`` maps each size to its :class:`~lightseg.deploy.autoselect.Decision`.
    ``options.streams`` > 1 builds the chosen path for that many concurrent calls (a server)."""

    def __init__(self, model: nn.Module, options: RunnerOptions, say: Callable[[str], None] | None = None):
        self.model = model.eval()
        self.meta = model_meta(model)
        self.options = options
        self.say = say or _stderr
        self.decisions: dict[tuple[int, int], Decision] = {}
        self._runners: dict[tuple[int, int], Runner] = {}
        self._latest: Decision | None = None
        self._lock = threading.Lock()

    @property
    def runtime(self) -> str | None:  # type: ignore[override]
        return self._latest.runtime if self._latest else None

    @property
    def precision(self) -> str | None:  # type: ignore[override]
        return self._latest.precision if self._latest else None

    @property
    def concurrency(self) -> int:  # type: ignore[override]
        chosen = self._runners.get(self._latest.size) if self._latest else None
        return chosen.concurrency if chosen is not None else self.options.streams

    @property
    def why(self) -> str:
        if self._latest is None:
            return "the fastest path is measured on the first input of each size"
        return self._latest.why()

    def describe(self) -> str:
        if self._latest is None:
            return f"{self.meta.name} on the fastest path (measured on the first input)"
        return f"{self.meta.name} on {self._latest.chosen.label}: {self.why}"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        size = (int(x.shape[-2]), int(x.shape[-1]))
        runner = self._runners.get(size)
        if runner is None:
            with self._lock:  # one decision per size, also when threads ask at once
                runner = self._runners.get(size) or self._decide(size, x[:1])
        return runner(x)

    def _decide(self, size: tuple[int, int], probe: torch.Tensor) -> Runner:
        decision, runner = decide(self.model, probe, self.options, say=self.say)
        if runner is None or self.options.streams > 1:
            runner = build_path(self.model, decision.chosen, self.options)
        self.decisions[size], self._runners[size], self._latest = decision, runner, decision
        return runner


def decide(
    model: nn.Module,
    probe: torch.Tensor,
    options: RunnerOptions,
    *,
    probe_kind: str = "first input",
    remeasure: bool = False,
    budget_s: float = auto.BUDGET_S,
    timer: Callable[[Candidate, Callable[[], Any]], float] | None = None,
    build: Callable[[nn.Module, Candidate, RunnerOptions], Runner] | None = None,
    say: Callable[[str], None] | None = None,
) -> tuple[Decision, Runner | None]:
    """The decision for ``model`` at the size of ``probe`` (a normalised, padded 1 x 3 x H x W
    tensor: the first input), and the chosen path's runner when it was built while measuring.

    From the cache when the same key was decided before on a real image (a decision made on
    :func:`~lightseg.deploy.autoselect.synthetic_probe` serves only ``lightseg bench --auto``);
    else measured (one progress line through ``say``) and cached. ``build`` and ``timer`` are
    seams for tests."""
    paths = auto.candidates(options.device, options.precision)
    size = (int(probe.shape[-2]), int(probe.shape[-1]))
    key = auto.decision_key(model, size, options, paths)
    folder = auto.decisions_dir(options.cache_dir)
    cached = None if remeasure else auto.load_decision(folder, key)
    if cached is not None and (probe_kind == "synthetic" or cached.probe != "synthetic"):
        return cached, None
    decision, runner = measure(model, probe, options, paths, probe_kind, budget_s, timer, build, say)
    auto.save_decision(folder, key, decision)
    return decision, runner


def measure(
    model: nn.Module,
    probe: torch.Tensor,
    options: RunnerOptions,
    paths: list[Candidate],
    probe_kind: str = "first input",
    budget_s: float = auto.BUDGET_S,
    timer: Callable[[Candidate, Callable[[], Any]], float] | None = None,
    build: Callable[[nn.Module, Candidate, RunnerOptions], Runner] | None = None,
    say: Callable[[str], None] | None = None,
) -> tuple[Decision, Runner]:
    """Export once, build every path, check its labels on ``probe`` against eager fp32's (the
    model as it is), time the rest (:func:`~lightseg.deploy.autoselect.time_rounds`) and choose;
    where none of ``paths`` runs, the eager fallbacks."""
    say, build = say or _stderr, build or build_path
    h, w = int(probe.shape[-2]), int(probe.shape[-1])
    say(
        f"lightseg: choosing the fastest of {len(paths)} paths for {model_meta(model).name} at {h}x{w} on this "
        f"machine ({auto.effective_threads(options)} threads; once, then cached):"
    )
    start = time.perf_counter()
    reference = _labels(TorchRunner(model, "none", device=options.device), probe)
    ms: dict[Candidate, Measurement] = {}
    runners, export_s = _prepare(model, probe, options, paths, build, reference, ms, say)
    if not runners and (
        more := [c for c in auto.fallbacks(options.device, options.precision) if c not in ms]
    ):
        say(" falling back to eager;")
        runners, _ = _prepare(model, probe, options, more, build, reference, ms, say)
    if not runners:
        notes = "; ".join(f"{m.candidate.label}: {m.note}" for m in ms.values())
        raise InputError(f"{model_meta(model).name} runs on no path here ({notes})")
    measure_s = time.perf_counter() - start - export_s
    say(f" timing {len(runners)};")
    times, dropped = auto.time_rounds(
        {c: _call(r, probe) for c, r in runners.items()}, max(0.0, budget_s - measure_s), timer=timer
    )
    for c, t in times.items():
        ms[c].times_ms = [round(x, 3) for x in t]
    for c in dropped:
        ms[c].status, ms[c].note = "dropped", f"> {auto.DROP_RATIO}x the fastest after a round"
    best = auto.choose(list(ms.values()))
    measure_s = time.perf_counter() - start - export_s
    decision = auto.new_decision(
        best.candidate, list(ms.values()), model, (h, w), options, probe_kind, measure_s, export_s
    )
    say(f" {best.candidate.label}, {best.median_ms:.1f} ms ({measure_s:.1f} s)\n")
    return decision, runners[best.candidate]


def _prepare(
    model: nn.Module,
    probe: torch.Tensor,
    options: RunnerOptions,
    paths: list[Candidate],
    build: Callable[[nn.Module, Candidate, RunnerOptions], Runner],
    reference: torch.Tensor,
    ms: dict[Candidate, Measurement],
    say: Callable[[str], None],
) -> tuple[dict[Candidate, Runner], float]:
    """(the runners of ``paths`` that run and pass the label check, seconds spent exporting);
    each path's record in ``ms``. A path that fails is noted, never fatal."""
    base = options.replace(streams=1)  # latency: one call at a time on every thread
    runners: dict[Candidate, Runner] = {}
    for c in paths:
        ms[c] = Measurement(c)
        try:
            runners[c] = build(model, c, base)
        except Exception as e:
            ms[c].status, ms[c].note = "failed", _short(e)
    try:
        export_s = _export(runners, h=int(probe.shape[-2]), w=int(probe.shape[-1]), say=say)
    except Exception as e:  # without the file only the eager paths remain
        export_s = 0.0
        for c in [c for c, r in runners.items() if isinstance(r, ExportingRunner)]:
            ms[c].status, ms[c].note = "failed", f"export: {_short(e)}"
            del runners[c]
    for c, runner in list(runners.items()):
        try:
            ms[c].agreement = float((_labels(runner, probe) == reference).float().mean())
        except Exception as e:
            ms[c].status, ms[c].note = "failed", _short(e)
            del runners[c]
    auto.check_agreement([ms[c] for c in paths], enforce=options.precision is None)
    return {c: r for c, r in runners.items() if ms[c].status == "timed"}, export_s


def _export(runners: dict[Candidate, Runner], h: int, w: int, say: Callable[[str], None]) -> float:
    """Seconds spent exporting the one file the exporting paths share (0 when it was cached)."""
    exporting = [r for r in runners.values() if isinstance(r, ExportingRunner)]
    if not exporting:
        return 0.0
    start, fresh = time.perf_counter(), []
    exporting[0].export(h, w, on_export=lambda: fresh.append(say(" exporting...")))
    seconds = time.perf_counter() - start if fresh else 0.0
    if fresh:
        say(f" {seconds:.0f} s;")
    return seconds


def _labels(runner: Runner, x: torch.Tensor) -> torch.Tensor:
    y = runner(x)
    if runner.output == "logits":
        return upsample_argmax(y, x.shape[-2:]).cpu()
    return y.argmax(1).cpu()


def _call(runner: Runner, x: torch.Tensor) -> Callable[[], Any]:
    return lambda: runner(x)


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200] if text else ''}"


def _stderr(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()
