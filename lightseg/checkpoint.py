"""Weights on disk: lightseg's own formats and foreign layouts, all loaded strictly.

This module only reads and writes state dicts; building a model from a name, a file or metadata
is :mod:`lightseg.models.build`'s job (it imports this module, never the other way round). Formats:

- ``lightseg`` — safetensors weights with the model's :class:`~lightseg.meta.ModelMeta` as JSON
  under :data:`~lightseg.meta.META_KEY` (files written before it store ``model_name``,
  ``model_kwargs``, ``num_classes``, ``classes``, ``palette`` as separate keys; still read).
- ``lightseg-train`` — a training checkpoint (``torch.save`` dict with ``"format":
  "lightseg-train"``, ``"model"`` and the metadata under ``META_KEY``; older ones have ``"model_spec"``).
- foreign layouts (official mmseg CGRSeg files, ImageNet backbone files, ...) — each model
  family registers a :class:`CheckpointLayout` whose ``convert`` maps every source key
  and fails listing whatever is left over; deliberate drops are named with a reason.

lightseg's own files carry the SHA-256 of their bytes and are verified on every read
(:mod:`lightseg.digest`); foreign files and lightseg files written before the digest have none.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightseg import digest
from lightseg.errors import CheckpointError, ForeignCheckpointError
from lightseg.meta import META_KEY, ModelMeta, model_meta
from lightseg.storage import atomic_file
from lightseg.weights import resolve_path

FORMAT_KEY = "format"
LIGHTSEG_FORMAT = "lightseg"
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


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: 8-byte little-endian header length, then a JSON object.
    return len(head) == 9 and head[8:9] == b"{"


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of a safetensors file; one lightseg wrote is verified against its
    digest first (:mod:`lightseg.digest`)."""
    from safetensors import safe_open

    digest.verify(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception as e:  # safetensors raises several private error types
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    return tensors, digest.without_digest(meta)


def save_weights(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    classes: Sequence[str] | None = None,
    palette: Sequence[Sequence[int]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model``'s weights as safetensors with its metadata (``model.meta``, see
    :class:`lightseg.ModelMeta`), so that :func:`lightseg.load_checkpoint` rebuilds it alone.

    ``classes`` / ``palette`` update the model's metadata (and ``model.meta`` itself) before writing;
    ``extra`` values are stored as JSON under their own keys. The file carries the SHA-256 of its
    bytes, checked whenever lightseg reads it (:mod:`lightseg.digest`), and appears atomically.
    """
    from safetensors.torch import save

    meta = with_classes(model_meta(model), classes, palette)
    model.meta = meta
    header = {FORMAT_KEY: LIGHTSEG_FORMAT, META_KEY: meta.to_json()}
    for k, v in (extra or {}).items():
        header[k] = json.dumps(v)
    header.update(digest.safetensors_header())
    path = Path(path)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_file(path, "weights", "save them again") as f:
        digest.seal_safetensors(save(state, metadata=header), f)
    return path


def with_classes(
    meta: ModelMeta, classes: Sequence[str] | None = None, palette: Sequence[Sequence[int]] | None = None
) -> ModelMeta:
    """``meta`` with ``classes`` / ``palette`` replaced where given (validated against num_classes)."""
    changes: dict[str, Any] = {}
    if classes is not None:
        changes["classes"] = tuple(classes)
    if palette is not None:
        changes["palette"] = tuple(tuple(c) for c in palette)
    return meta.replace(**changes) if changes else meta


def load_torch_file(path: Path) -> Any:
    """What a ``torch.save`` file holds (tensors and plain containers only: no code runs); a file
    lightseg wrote is verified against its digest first (:mod:`lightseg.digest`)."""
    verified = digest.verify(path)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    digest.check_declared(path, obj, verified)
    return obj


def _target_module(model: nn.Module, target: str) -> nn.Module:
    if target == "backbone":
        return getattr(model, "backbone", model)
    return model


def get_layout(name: str) -> CheckpointLayout:
    """The registered layout called ``name``; an unknown name fails listing the known ones."""
    for layout in _LAYOUTS:
        if layout.name == name:
            return layout
    raise CheckpointError(f"unknown checkpoint layout {name!r}; known: {', '.join(layout_names())}")


def layout_names() -> list[str]:
    return [layout.name for layout in _LAYOUTS]


def _read_any(path: Path) -> tuple[Any, str | None]:
    """What the file holds (a dict for safetensors) and its lightseg format name (``None``: foreign)."""
    if _is_safetensors(path):
        tensors, header = read_safetensors(path)
        return tensors, LIGHTSEG_FORMAT if header.get(FORMAT_KEY) == LIGHTSEG_FORMAT else None
    obj = load_torch_file(path)
    if isinstance(obj, dict) and obj.get(FORMAT_KEY) == TRAIN_FORMAT:
        return obj["model"], TRAIN_FORMAT
    return obj, None


def load_weights(
    model: nn.Module, path_or_url: str | os.PathLike, *, layout: str | None = None, sha256: str | None = None
) -> str:
    """Load a checkpoint into ``model`` strictly; returns the layout's name.

    ``layout`` names the file's layout (see :func:`layout_names`); without it, lightseg files load
    as they are and foreign files are recognised by their keys. ``sha256`` verifies a download.
    """
    path = resolve_path(path_or_url, sha256)
    obj, own_format = _read_any(path)
    if layout is None and own_format is not None:
        load_state_dict_strict(model, obj, source=str(path))
        return own_format
    chosen = get_layout(layout) if layout is not None else next((x for x in _LAYOUTS if x.detect(obj)), None)
    if chosen is None:
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            load_state_dict_strict(model, obj, source=str(path))  # a bare state dict of this very model
            return "state_dict"
        keys = list(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(
            f"{path}: unrecognised checkpoint layout (top-level keys: {keys}); known layouts: "
            f"lightseg safetensors, {TRAIN_FORMAT}, " + ", ".join(layout_names())
        )
    target = _target_module(model, chosen.target)
    if layout is not None and not chosen.detect(obj):
        raise CheckpointError(f"{path}: not a file of the {chosen.name} layout")
    try:
        state = chosen.convert(obj, target)
    except CheckpointError as e:
        raise CheckpointError(f"{path} ({chosen.name} layout): {e}") from e
    load_state_dict_strict(target, state, source=f"{path} ({chosen.name} layout)")
    return chosen.name


def _legacy_fields(header: Mapping[str, str], path: Path) -> dict[str, Any]:
    """Metadata of safetensors files written before :class:`ModelMeta` (separate keys)."""
    name = header.get("model_name")
    if header.get(FORMAT_KEY) != LIGHTSEG_FORMAT or not name:
        raise ForeignCheckpointError(
            f"{path}: safetensors file without lightseg metadata ({META_KEY}); for weights of another "
            "layout use create_model(name, weights=path)"
        )
    fields: dict[str, Any] = {"name": name, "options": json.loads(header.get("model_kwargs", "{}"))}
    fields["num_classes"] = int(header["num_classes"]) if header.get("num_classes") else None
    for key in ("classes", "palette"):
        if key in header:
            fields[key] = json.loads(header[key])
    return fields


def _train_fields(obj: dict, path: Path) -> dict[str, Any]:
    if obj.get(META_KEY) is not None:
        fields = ModelMeta.from_json(obj[META_KEY], source=str(path)).to_dict()
        if "test_scale" in json.loads(obj[META_KEY]):
            return fields
    else:
        spec = obj.get("model_spec")  # training checkpoints written before ModelMeta
        if not isinstance(spec, dict) or not spec.get("name"):
            raise CheckpointError(f"{path}: training checkpoint without model metadata ({META_KEY})")
        fields = {
            "name": spec["name"],
            "num_classes": spec.get("num_classes"),
            "options": spec.get("kwargs", {}),
        }
    # Written before models recorded their test scale: the run's own configuration has it.
    config = obj.get("config")
    scale = config.get("data", {}).get("test_scale") if isinstance(config, dict) else None
    if scale:
        fields["test_scale"] = [int(v) for v in scale]
    return fields


def read_checkpoint(path_or_url: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The model metadata and state dict of a lightseg file (safetensors or training checkpoint).

    The metadata comes back as :class:`ModelMeta` fields: all of them for files that store a
    ``ModelMeta``, only ``name``/``num_classes``/``options`` (and ``classes``/``palette`` when
    present) for older files; the model's builder fills in the rest.
    """
    path = resolve_path(path_or_url)
    if _is_safetensors(path):
        tensors, header = read_safetensors(path)
        if META_KEY in header:
            return ModelMeta.from_json(header[META_KEY], source=str(path)).to_dict(), tensors
        return _legacy_fields(header, path), tensors
    obj = load_torch_file(path)
    if not (isinstance(obj, dict) and obj.get(FORMAT_KEY) == TRAIN_FORMAT):
        raise ForeignCheckpointError(
            f"{path}: not a lightseg checkpoint (safetensors with {META_KEY}, or a training checkpoint); "
            "for foreign layouts use create_model(name, weights=path)"
        )
    return _train_fields(obj, path), obj["model"]
