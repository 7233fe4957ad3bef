"""What a run carries from step to step: the loop's state, the objects one step needs, the RNG
states a checkpoint restores, and the EMA of the weights."""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lightseg.config import Config
from lightseg.losses import SegLoss
from lightseg.training.distributed import DistInfo
from lightseg.training.runlog import RunLog


@dataclass
class TrainState:
    """What the loop carries between steps (and what a checkpoint restores)."""

    iteration: int = 0
    best: dict[str, Any] = field(default_factory=dict)  # {"mIoU": ..., "iteration": ...}
    last_checkpoint: Path | None = None
    last_iteration_saved: int = 0
    last_pt_iteration: int | None = None  # what <work_dir>/last.pt holds, when known
    skipped_steps: int = 0  # non-finite steps skipped (train.skip_nonfinite)
    skipped_samples: list[str] = field(default_factory=list)  # unreadable samples (data.on_error skip)


@dataclass
class RunContext:
    """The objects one step and one checkpoint need (so that helper signatures stay short)."""

    cfg: Config
    info: DistInfo
    device: torch.device
    work_dir: Path
    log: RunLog
    model: nn.Module
    loss_fn: SegLoss
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    ema: ModelEMA | None
    amp_dtype: torch.dtype | None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG the run touches, in types ``torch.load(weights_only=True)`` accepts (so that
    :func:`lightseg.load_checkpoint` can read training checkpoints safely)."""
    version, py_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(py_state), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ModelEMA:
    """Exponential moving average of the weights, kept in a copy of the model (``.module``, used for
    evaluation): ``ema = decay * ema + (1 - decay) * weight`` for parameters and float buffers after
    every optimizer step; integer buffers are copied."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema = self.module.state_dict()
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                ema[k].mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
            else:
                ema[k].copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
