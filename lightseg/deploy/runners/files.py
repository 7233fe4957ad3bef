"""An exported ``.onnx`` / ``.xml`` file as a runner, on ONNX Runtime or OpenVINO."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lightseg.deploy.formats import check_runtime, file_runtime, int8_file_hint
from lightseg.deploy.metadata import exported_facts
from lightseg.deploy.runners.base import Runner
from lightseg.deploy.runners.onnxruntime import OrtSession
from lightseg.deploy.runners.openvino import OpenVinoSession
from lightseg.errors import InputError
from lightseg.meta import ModelMeta


class FileRunner(Runner):
    """An exported ``.onnx`` / ``.xml`` file on ONNX Runtime or OpenVINO.

    The graph has a static input size S: inputs of that size run as they are; smaller ones
    (already padded to the size divisor) are padded further to S at the bottom/right and the output
    cropped back (like padding to the size divisor, this changes what the model sees at the
    border: export at your image size for results equal to the checkpoint's). Larger inputs fail.
    A graph of fixed batch runs a larger batch one image at a time. ``streams`` and ``providers``:
    see :class:`~lightseg.deploy.options.RunnerOptions`.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        runtime: str | None = None,
        precision: str | None = None,
        threads: int | None = None,
        meta: ModelMeta | None = None,
        *,
        streams: int = 1,
        providers: Sequence[str] | None = None,
    ):
        self.path = Path(path)
        runtime = file_runtime(self.path, runtime)
        check_runtime(runtime, precision or "fp32")
        self.meta, self.info = exported_facts(self.path, meta)
        self.precision = _file_precision(self.path, runtime, self.info.precision, precision)
        self.runtime, self.output, self.concurrency = runtime, self.info.output, streams
        if runtime == "onnxruntime":
            self.session: Any = OrtSession(self.path, threads, providers=providers, streams=streams)
        else:
            self.session = OpenVinoSession(self.path, self.precision, threads, streams)

    @property
    def input_size(self) -> tuple[int, int]:
        return (int(self.info.input_size[0]), int(self.info.input_size[1]))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        sh, sw = self.info.input_size
        if h > sh or w > sw:
            raise InputError(
                f"{self.path} was exported for {sh}x{sw} inputs; this one is {h}x{w} after padding to a "
                f"multiple of {self.size_divisor}: export at that size (`lightseg export ... --size {h} {w}`) "
                f"or use sliding windows (`--mode slide --crop-size {sh} {sw}`)"
            )
        xp = F.pad(x, (0, sw - w, 0, sh - h)) if (h, w) != (sh, sw) else x
        if self.info.batch is None or n == self.info.batch:
            y = torch.from_numpy(self.session(xp))
        else:
            y = torch.cat([torch.from_numpy(self.session(xp[i : i + 1])) for i in range(n)])
        if (h, w) == (sh, sw):
            return y
        if self.output == "logits":
            s = int(self.meta.output_stride)
            return y[..., : -(-h // s), : -(-w // s)]
        return y[..., :h, :w]

    def describe(self) -> str:
        return f"{self.path} on {self.runtime} {self.precision}"


def _file_precision(path: Path, runtime: str, held: str, wanted: str | None) -> str:
    """The precision to run a file holding ``held`` at, or an error saying how to get ``wanted``."""
    if wanted is None or wanted == held:
        return held
    # OpenVINO's bf16 is a compile option: fp32 and bf16 files run at either.
    if runtime == "openvino" and {held, wanted} <= {"fp32", "bf16"}:
        return wanted
    if wanted == "int8":
        raise InputError(
            f"{path} holds {held} weights; INT8 needs a calibrated file: {int8_file_hint(runtime)}"
        )
    raise InputError(f"{path} holds {held} weights and runs only at {held} on {runtime}, not {wanted}")
