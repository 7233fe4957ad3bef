"""Checking an exported file against the eager model it came from (``lightseg export --check``)."""

from __future__ import annotations

import os

import torch
from torch import nn

from lightseg.deploy.graph import InferenceGraph
from lightseg.deploy.runners.files import FileRunner

# bf16 / int8 label agreement with eager fp32 below which a check fails: OpenVINO bf16 agreed on 99.9%
# of pixels, INT8 (NNCF, ORT) on 99.2-99.5% (CGRSeg-T with trained-like norms, CamVid images, 128x128).
REDUCED_MIN_AGREE = 0.97


@torch.no_grad()
def check_export(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    runtime: str | None = None,
    inputs: torch.Tensor | None = None,
    atol: float = 1e-4,
    min_agree: float = 0.999,
) -> dict:
    """Compare an exported file, run by ``runtime`` (default: the file's own), with the eager
    model (unfolded, dynamic biases) on ``inputs`` (default: one random batch at the file's size).

    Returns the max abs logit difference (logit outputs), the argmax agreement and ``ok`` under
    the tolerances (max abs diff <= ``atol``, argmax equal on >= ``min_agree`` of pixels). Reduced
    precisions are held to the agreement alone, >= :data:`REDUCED_MIN_AGREE` (pass real images as
    ``inputs``: on noise, INT8 ranges calibrated on images do not apply).
    """
    runner = FileRunner(path, runtime)
    info = runner.info
    x = inputs if inputs is not None else torch.randn(info.batch or 1, 3, *info.input_size)
    got = runner(x)
    ref = InferenceGraph(model.eval(), "logits" if info.output == "argmax" else info.output)(x)
    ref_labels = (ref if info.output != "argmax" else InferenceGraph(model, "logits-full")(x)).argmax(1)
    report: dict = {"runtime": runner.runtime, "precision": runner.precision}
    if info.output == "argmax":
        agree = (got.long() == ref_labels).float().mean().item()
        need = min_agree if runner.precision == "fp32" else REDUCED_MIN_AGREE
        return report | {"argmax_agree": round(agree, 6), "ok": agree >= need}
    diff = (got - ref).abs().max().item()
    agree = (got.argmax(1) == ref_labels).float().mean().item()
    exact = runner.precision == "fp32"
    return report | {
        "max_abs_diff": f"{diff:.2e}",
        "argmax_agree": round(agree, 6),
        "ok": diff <= atol and agree >= min_agree if exact else agree >= REDUCED_MIN_AGREE,
    }
