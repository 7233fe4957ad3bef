"""How to run a model: one options object from the command line (or Python) to the runner."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lightseg.deploy.formats import OPTIMIZE, PRECISIONS, RUNTIMES
from lightseg.errors import InputError


@dataclass(frozen=True)
class RunnerOptions:
    """How a model runs (see :mod:`lightseg.deploy.formats` for what runs what).

    - ``runtime``: ``torch``, ``onnxruntime`` or ``openvino``; ``None``: an exported file's own,
      else ``$LIGHTSEG_RUNTIME``, else the path measured fastest on this machine
      (:mod:`lightseg.deploy.autoselect`).
    - ``precision``: ``fp32``, ``bf16``, ``fp16`` (torch on CUDA) or ``int8``; ``None``: the
      file's, else the default path's (with ``runtime`` given: fp32; without: the measured path
      is chosen among this precision's).
    - ``optimize``: ``none`` / ``fold-bn`` / ``compile`` (what is done to the model before it runs
      or is exported; compile applies to torch only).
    - ``threads``: CPU threads of the runtime (``None``: its default).
    - ``calibration``: images (files, folders, globs) INT8 is calibrated on, ``calibration_count``
      of them used.
    - ``cache_dir``: where exported files are kept (``None``: the export cache).
    - ``device``: ``cpu`` or ``cuda`` (torch; ONNX Runtime with ``providers``).
    - ``streams``: inferences run at once (a server's workers): OpenVINO compiles for throughput
      with that many streams, ONNX Runtime keeps that many sessions; the threads are shared out.
    - ``providers``: ONNX Runtime execution providers in order of preference (default: the CPU's).
    """

    runtime: str | None = None
    precision: str | None = None
    optimize: str = "fold-bn"
    threads: int | None = None
    calibration: tuple[str, ...] | None = None
    calibration_count: int = 32
    cache_dir: str | None = None
    device: str = "cpu"
    streams: int = 1
    providers: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if isinstance(self.calibration, (str, os.PathLike)):
            set_(self, "calibration", (os.fspath(self.calibration),))
        elif self.calibration is not None:
            set_(self, "calibration", tuple(os.fspath(c) for c in self.calibration) or None)
        if self.providers is not None:
            set_(
                self,
                "providers",
                (self.providers,) if isinstance(self.providers, str) else tuple(self.providers),
            )
        if self.cache_dir is not None:
            set_(self, "cache_dir", os.fspath(self.cache_dir))
        problems = []
        if self.runtime is not None and self.runtime not in RUNTIMES:
            problems.append(f"runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        if self.precision is not None and self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.optimize not in OPTIMIZE:
            problems.append(f"optimize must be one of {', '.join(OPTIMIZE)}, got {self.optimize!r}")
        if self.threads is not None and int(self.threads) < 1:
            problems.append(f"threads must be at least 1, got {self.threads}")
        if int(self.streams) < 1:
            problems.append(f"streams must be at least 1, got {self.streams}")
        if int(self.calibration_count) < 1:
            problems.append(f"calibration_count must be at least 1, got {self.calibration_count}")
        if self.device not in ("cpu", "cuda"):
            problems.append(f"device must be cpu or cuda, got {self.device!r}")
        if problems:
            raise InputError("; ".join(problems))

    @classmethod
    def of(cls, options: RunnerOptions | None = None, **fields: Any) -> RunnerOptions:
        """``options`` with ``fields`` replaced (both optional); an unknown field name is an
        InputError listing the known ones."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(fields) - set(known))
        if unknown:
            raise InputError(f"unknown runner option(s) {unknown}; known: {', '.join(known)}")
        return dataclasses.replace(options or cls(), **fields)

    def replace(self, **fields: Any) -> RunnerOptions:
        return self.of(self, **fields)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunnerOptions:
        return cls.of(**dict(data))
