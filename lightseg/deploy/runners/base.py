"""What every runner is: called like the eager model, ``runner(x)`` takes a normalised
N x 3 x H x W float tensor (sides multiples of ``runner.size_divisor``) and returns what its graph
computes (``runner.output``: stride-s logits unless the graph was exported otherwise) as a torch
tensor. It carries the model's facts (``runner.meta``), ``runtime`` and ``precision``. Runners are
safe to call from several threads at once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lightseg.errors import InputError
from lightseg.meta import ModelMeta


# --------------------------------------------------------------------------------------------------
# Runners: torch in, torch out
# --------------------------------------------------------------------------------------------------
class Runner:
    """Base of every runner (see the module docstring)."""

    runtime: str
    precision: str
    meta: ModelMeta
    output: str = "logits"
    concurrency: int = 1  # calls that run side by side, each on its share of the threads

    @property
    def size_divisor(self) -> int:
        return int(self.meta.size_divisor)

    @property
    def num_classes(self) -> int:
        return int(self.meta.num_classes or 0)

    @property
    def input_size(self) -> tuple[int, int] | None:
        """The static (H, W) of an exported graph; ``None`` where any padded size runs."""
        return None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    reason: str = "asked for"

    @property
    def why(self) -> str:
        """Why this path runs (a measured default says what it was measured against)."""
        return self.reason

    def describe(self) -> str:
        return f"{self.meta.name} on {self.runtime} {self.precision}"


def as_input(x: np.ndarray | torch.Tensor, want: tuple, path: Path) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 4 or any(w is not None and w != g for w, g in zip(want, x.shape)):
        raise InputError(f"{path} takes input of shape {want}, got {tuple(x.shape)}")
    return x
