"""Weights on disk: lightseg's own safetensors format and foreign layouts, all loaded strictly.

Layouts:
- ``lightseg`` — safetensors weights; the model name, its constructor arguments and class
  names are stored as metadata, so :func:`load_checkpoint` rebuilds the model by itself.
- ``lightseg-train`` — a training checkpoint (``torch.save`` dict with ``"format":
  "lightseg-train"`` and ``"model"``), written by ``lightseg.engine.train``.
- foreign layouts (official mmseg CGRSeg files, ImageNet backbone files, ...) — each model
  family registers a :class:`CheckpointLayout` whose ``convert`` maps every source key
  and fails listing whatever is left over; deliberate drops are named with a reason.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightseg.errors import CheckpointError, WeightsNotFoundError

FORMAT_KEY = "format"
TRAIN_FORMAT = "lightseg-train"


@dataclass(frozen=True)
class CheckpointLayout:
    """A foreign checkpoint layout.

    ``detect(obj)`` looks at the object ``torch.load`` returned; ``convert(obj, model)``
    returns a state dict for ``target`` (``"model"``, or ``"backbone"``: the model's
    ``.backbone`` if it has one, else the model itself) and raises :class:`CheckpointError`
    for anything it cannot map.
    """

    name: str
    detect: Callable[[Any], bool]
    convert: Callable[[Any, nn.Module], dict[str, torch.Tensor]]
    target: str = "model"


_LAYOUTS: list[CheckpointLayout] = []


def register_layout(layout: CheckpointLayout) -> CheckpointLayout:
    if any(existing.name == layout.name for existing in _LAYOUTS):
        raise ValueError(f"checkpoint layout {layout.name!r} registered twice")
    _LAYOUTS.append(layout)
    return layout


def _fmt_keys(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def remap_keys(
    state: Mapping[str, torch.Tensor],
    rename: Callable[[str], str | None],
    *,
    drop: Callable[[str], bool] = lambda key: False,
    what: str = "checkpoint",
) -> dict[str, torch.Tensor]:
    """Account for every key of a foreign state dict, as layout filters must.

    ``drop(key)`` true: left out on purpose (the filter's docstring names the reason). Otherwise
    ``rename(key)`` gives the key's name in our model, or ``None`` when it has no place there; such
    keys are collected and raised as one :class:`CheckpointError` that lists them.
    """
    out: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for key, value in state.items():
        if drop(key):
            continue
        new = rename(key)
        if new is None:
            unmapped.append(key)
        else:
            out[new] = value
    if unmapped:
        raise CheckpointError(f"{len(unmapped)} key(s) of the {what} map to nothing: {_fmt_keys(unmapped)}")
    return out


def load_state_dict_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str = "") -> None:
    """``module.load_state_dict`` that reports every missing, unexpected and mis-shaped key."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mis_shaped = [
        f"{k} (checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)})"
        for k in sorted(set(own) & set(state))
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mis_shaped:
        where = f" from {source}" if source else ""
        lines = [f"checkpoint{where} does not fit {type(module).__name__}:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_fmt_keys(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_fmt_keys(unexpected)}")
        if mis_shaped:
            lines.append(f"  mis-shaped keys ({len(mis_shaped)}): {_fmt_keys(mis_shaped)}")
        raise CheckpointError("\n".join(lines))
    module.load_state_dict(state, strict=True)


def resolve_path(path_or_url: str | os.PathLike) -> Path:
    """A local path; URLs are fetched once into torch's hub cache (``$TORCH_HOME/hub/checkpoints``)."""
    s = str(path_or_url)
    if "://" in s:
        from urllib.parse import urlparse

        cache_dir = Path(torch.hub.get_dir()) / "checkpoints"
        cache_dir.mkdir(parents=True, exist_ok=True)
        dest = cache_dir / Path(urlparse(s).path).name
        if not dest.exists():
            torch.hub.download_url_to_file(s, str(dest), progress=False)
        return dest
    p = Path(s).expanduser()
    if not p.is_file():
        raise WeightsNotFoundError(f"checkpoint file not found: {p}")
    return p


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: 8-byte little-endian header length, then a JSON object.
    return len(head) == 9 and head[8:9] == b"{"


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception as e:  # safetensors raises several private error types
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    return tensors, meta


def save_weights(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    classes: list[str] | None = None,
    palette: list[list[int]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model``'s weights as safetensors with the metadata to rebuild it.

    Metadata: ``format=lightseg``, ``model_name``, ``num_classes``, ``model_kwargs`` (JSON of the
    constructor overrides recorded on the model as ``model_kwargs``), ``classes``/``palette`` (JSON)
    and any ``extra`` values (JSON).
    """
    from safetensors.torch import save_file

    path = Path(path)
    meta = {
        FORMAT_KEY: "lightseg",
        "model_name": str(getattr(model, "model_name", "")),
        "num_classes": str(getattr(model, "num_classes", "")),
        "model_kwargs": json.dumps(getattr(model, "model_kwargs", {})),
    }
    if classes is not None:
        meta["classes"] = json.dumps(list(classes))
    if palette is not None:
        meta["palette"] = json.dumps([list(map(int, c)) for c in palette])
    for k, v in (extra or {}).items():
        meta[k] = json.dumps(v)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def _load_object(path: Path) -> Any:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e


def _target_module(model: nn.Module, target: str) -> nn.Module:
    if target == "backbone":
        return getattr(model, "backbone", model)
    return model


def load_weights(model: nn.Module, path_or_url: str | os.PathLike) -> str:
    """Load any supported checkpoint into ``model`` strictly; returns the detected layout name."""
    path = resolve_path(path_or_url)
    if _is_safetensors(path):
        tensors, _meta = read_safetensors(path)
        load_state_dict_strict(model, tensors, source=str(path))
        return "lightseg"
    obj = _load_object(path)
    if isinstance(obj, dict) and obj.get(FORMAT_KEY) == TRAIN_FORMAT:
        load_state_dict_strict(model, obj["model"], source=str(path))
        return TRAIN_FORMAT
    for layout in _LAYOUTS:
        if layout.detect(obj):
            target = _target_module(model, layout.target)
            try:
                state = layout.convert(obj, target)
            except CheckpointError as e:
                raise CheckpointError(f"{path} ({layout.name} layout): {e}") from e
            load_state_dict_strict(target, state, source=f"{path} ({layout.name} layout)")
            return layout.name
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        load_state_dict_strict(model, obj, source=str(path))  # a bare state dict of this very model
        return "state_dict"
    keys = list(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
    raise CheckpointError(
        f"{path}: unrecognised checkpoint layout (top-level keys: {keys}); known layouts: "
        f"lightseg safetensors, {TRAIN_FORMAT}, " + ", ".join(x.name for x in _LAYOUTS)
    )


def load_checkpoint(path_or_url: str | os.PathLike) -> nn.Module:
    """Rebuild a model from a lightseg checkpoint (safetensors or training checkpoint)."""
    from lightseg.models.registry import create_model

    path = resolve_path(path_or_url)
    if _is_safetensors(path):
        tensors, meta = read_safetensors(path)
        name = meta.get("model_name")
        if meta.get(FORMAT_KEY) != "lightseg" or not name:
            raise CheckpointError(f"{path}: safetensors file without lightseg metadata (model_name)")
        kwargs = json.loads(meta.get("model_kwargs", "{}"))
        num_classes = int(meta["num_classes"]) if meta.get("num_classes") else 150
        model = create_model(name, num_classes=num_classes, **kwargs)
        load_state_dict_strict(model, tensors, source=str(path))
        if "classes" in meta:
            model.class_names = json.loads(meta["classes"])
        if "palette" in meta:
            model.palette = json.loads(meta["palette"])
        return model
    obj = _load_object(path)
    if not (isinstance(obj, dict) and obj.get(FORMAT_KEY) == TRAIN_FORMAT):
        raise CheckpointError(
            f"{path}: load_checkpoint needs a lightseg checkpoint; for foreign layouts use "
            "create_model(name, weights=path)"
        )
    spec = obj["model_spec"]
    model = create_model(spec["name"], num_classes=spec["num_classes"], **spec.get("kwargs", {}))
    load_state_dict_strict(model, obj["model"], source=str(path))
    return model
