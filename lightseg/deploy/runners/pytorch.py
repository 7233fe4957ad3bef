"""Eager PyTorch as a runner: BN folded (and attention biases fixed to a size), optionally compiled,
fp32, bf16 autocast or (on CUDA) fp16 autocast."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import nn

from lightseg.deploy.formats import check_optimize, check_runtime
from lightseg.deploy.graph import InferenceGraph
from lightseg.deploy.runners.base import Runner
from lightseg.errors import InputError
from lightseg.fuse import optimize_for_inference
from lightseg.inference import torch_threads
from lightseg.meta import model_meta

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


class TorchRunner(Runner):
    """Eager PyTorch: ``optimize`` none / fold-bn (BN folded; with ``size`` the attention biases
    are fixed to it) / compile; ``precision`` fp32, bf16 (autocast) or fp16 (autocast, CUDA only).
    ``threads``: torch's intra-op threads during each call (default: the process's). Returns fp32."""

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
        threads: int | None = None,
    ):
        check_runtime("torch", precision)
        check_optimize(optimize)
        if precision == "fp16" and device != "cuda":
            raise InputError("fp16 runs on CUDA (--device cuda); on a CPU use bf16 or fp32")
        self.meta = model_meta(model)
        self.precision, self.optimize, self.output, self.device = precision, optimize, output, device
        self.threads = threads
        hw = (int(size[0]), int(size[1])) if size is not None and optimize != "none" else None
        prepared = optimize_for_inference(model, optimize, size=hw)
        self.graph = InferenceGraph(prepared, output).to(device).eval()

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        dtype = AUTOCAST.get(self.precision)
        threads = torch_threads(self.threads) if self.threads else contextlib.nullcontext()
        with threads, torch.autocast(self.device, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            y = self.graph(x)
        return y.float() if y.is_floating_point() else y
