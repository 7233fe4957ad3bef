"""The export cache: a model run on ONNX Runtime or OpenVINO is exported once per input size and
options, into a folder keyed by content (weights, metadata, options and library versions), so a
second process with the same model starts from the cached file."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata as md
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightseg._version import __version__
from lightseg.deploy.calibration import CalibrationImages
from lightseg.deploy.export import export_model
from lightseg.deploy.formats import FORMATS
from lightseg.meta import model_meta


# --------------------------------------------------------------------------------------------------
# The export cache
# --------------------------------------------------------------------------------------------------
def cache_root() -> Path:
    """``$LIGHTSEG_CACHE``, default ``~/.cache/lightseg``: exported files and measured paths."""
    return Path(os.environ.get("LIGHTSEG_CACHE") or Path.home() / ".cache" / "lightseg")


def export_cache_dir() -> Path:
    """``$LIGHTSEG_CACHE/exports``, default ``~/.cache/lightseg/exports``."""
    return cache_root() / "exports"


def library_versions() -> dict[str, str]:
    """Versions of lightseg and of every library that shapes an exported file or runs one."""
    out = {"lightseg": __version__, "torch": torch.__version__}
    for pkg in ("onnx", "onnxscript", "onnxruntime", "openvino", "nncf"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out


def content_key(model: nn.Module, options: dict[str, Any]) -> str:
    """SHA-256 of the model's weights (every tensor of its state dict), its metadata, the export
    options and the library versions that shape the file."""
    h = hashlib.sha256()
    h.update(json.dumps({"options": options, "versions": library_versions(), "type": type(model).__name__},
                        sort_keys=True, default=str).encode())  # fmt: skip
    h.update(model_meta(model).to_json().encode())
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cached_export(
    model: nn.Module,
    fmt: str,
    size: Sequence[int],
    *,
    precision: str = "fp32",
    calibration: CalibrationImages | None = None,
    optimize: str = "fold-bn",
    output: str = "logits",
    batch: int = 1,
    dynamic_batch: bool = False,
    opset: int | None = 20,
    cache_dir: str | os.PathLike | None = None,
    on_export: Callable[[], None] | None = None,
) -> Path:
    """The exported file for these options, from the cache when the same content was exported
    before (else exported into it, after calling ``on_export``; a finished file appears
    atomically)."""
    options = dict(
        fmt=fmt, size=[int(size[0]), int(size[1])], precision=precision, optimize=optimize, output=output,
        batch=batch, dynamic_batch=dynamic_batch, opset=opset,
        calibration=calibration.fingerprint() if calibration is not None else None,
    )  # fmt: skip
    key = content_key(model, options)
    folder = Path(cache_dir) if cache_dir else export_cache_dir()
    stem = f"{model_meta(model).name}_{size[0]}x{size[1]}_{optimize}_{output}_{precision}_{key[:16]}"
    path = folder / (stem + FORMATS[fmt].suffix)
    if path.is_file() and (fmt != "openvino" or path.with_suffix(".bin").is_file()):
        return path
    if on_export is not None:
        on_export()
    kw: dict[str, Any] = dict(batch=batch, dynamic_batch=dynamic_batch, output=output, optimize=optimize)
    if fmt == "onnx":
        kw["opset"] = opset
    then = "run again" + ("" if cache_dir else " (or set LIGHTSEG_CACHE to a folder on another disk)")
    return export_model(model, path, size, fmt, precision=precision, calibration=calibration, then=then, **kw)
