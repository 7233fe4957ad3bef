"""Eager PyTorch as a runner: BN folded (and attention biases fixed to a size), optionally compiled,
fp32 or bf16 autocast."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lightseg.deploy.formats import check_optimize, check_runtime
from lightseg.deploy.graph import InferenceGraph
from lightseg.deploy.runners.base import Runner
from lightseg.fuse import optimize_for_inference
from lightseg.meta import model_meta


class TorchRunner(Runner):
    """Eager PyTorch: ``optimize`` none / fold-bn (BN folded; with ``size`` the attention biases
    are fixed to it) / compile; ``precision`` fp32 or bf16 (CPU autocast). Returns fp32."""

    runtime = "torch"

    def __init__(
        self,
        model: nn.Module,
        optimize: str = "fold-bn",
        precision: str = "fp32",
        *,
        size: Sequence[int] | None = None,
        output: str = "logits",
        device: str = "cpu",
    ):
        check_runtime("torch", precision)
        check_optimize(optimize)
        self.meta = model_meta(model)
        self.precision, self.optimize, self.output, self.device = precision, optimize, output, device
        hw = (int(size[0]), int(size[1])) if size is not None and optimize != "none" else None
        prepared = optimize_for_inference(model, optimize, size=hw)
        self.graph = InferenceGraph(prepared, output).to(device).eval()

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            y = self.graph(x)
        return y.float() if y.is_floating_point() else y
