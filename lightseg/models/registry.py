"""The model registry: a plain dict from name to factory.

Families register their public factories with :func:`register_model`; users call
:func:`create_model` / :func:`list_models`. Nothing here knows about configs or losses.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from lightseg.errors import ConfigError, UnknownModelError
from lightseg.meta import ModelMeta


@dataclass(frozen=True)
class ModelEntry:
    """What the registry knows of one model name.

    ``kind`` is ``"segmentor"`` (takes ``num_classes``, returns logits) or ``"backbone"``
    (returns a list of feature maps). ``published`` holds figures from the papers
    (e.g. ``{"ade20k_miou": 43.6}``) for tables and docs.
    """

    name: str
    factory: Callable[..., nn.Module]
    kind: str
    family: str
    published: dict[str, Any] = field(default_factory=dict)


_MODELS: dict[str, ModelEntry] = {}


def register_model(
    kind: str = "segmentor", family: str = "", published: dict[str, Any] | None = None
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``fn`` under ``fn.__name__``."""
    if kind not in ("segmentor", "backbone"):
        raise ConfigError(f"kind must be 'segmentor' or 'backbone', got {kind!r}")

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        fam = family or fn.__module__.rsplit(".", 1)[-1]
        _MODELS[name] = ModelEntry(name, fn, kind, fam, dict(published or {}))
        return fn

    return wrap


def _ensure_families_imported() -> None:
    # Importing the package's model modules fills the registry.
    import lightseg.models  # noqa: F401


def get_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; an unknown name fails listing close matches."""
    _ensure_families_imported()
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownModelError(f"unknown model {name!r}.{hint} Known models: {', '.join(sorted(_MODELS))}")
    return _MODELS[name]


def list_models(pattern: str = "*", kind: str | None = None) -> list[str]:
    """Sorted names matching the shell-style ``pattern`` (and ``kind`` if given)."""
    _ensure_families_imported()
    return sorted(
        n for n, e in _MODELS.items() if fnmatch.fnmatch(n, pattern) and (kind is None or e.kind == kind)
    )


def create_model(
    name: str, *, num_classes: int = 150, weights: str | None = None, **overrides: Any
) -> nn.Module:
    """Build a registered model.

    Args:
        name: a registered name (see :func:`list_models`).
        num_classes: output classes of a segmentor (ignored by backbones).
        weights: a path or URL of a checkpoint in any supported layout (lightseg
            safetensors, official mmseg CGRSeg, official ImageNet backbone); loaded strictly.
        overrides: keyword arguments forwarded to the factory (e.g. ``drop_path_rate``).
    """
    entry = get_entry(name)
    if entry.kind == "segmentor":
        model = entry.factory(num_classes=num_classes, **overrides)
    else:
        model = entry.factory(**overrides)
    # Recorded so that checkpoints can rebuild the very same model (lightseg.checkpoint).
    model.meta = ModelMeta(
        name=name,
        num_classes=int(model.num_classes) if entry.kind == "segmentor" else None,
        options={k: v for k, v in overrides.items() if k != "pretrained"},
        size_divisor=int(getattr(model, "size_divisor", 32)),
        output_stride=int(getattr(model, "output_stride", 32)) if entry.kind == "segmentor" else 32,
        weights=str(weights) if weights is not None else None,
        kind=entry.kind,
    )
    model.model_name = name
    # ``pretrained`` only says where the initial weights came from; a rebuilt model gets its
    # weights from the checkpoint and must not need the pretrained file.
    model.model_kwargs = {k: v for k, v in overrides.items() if k != "pretrained"}
    if weights is not None:
        from lightseg.checkpoint import load_weights

        load_weights(model, weights)
    return model
