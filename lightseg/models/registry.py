"""The model registry: a plain dict from name to factory.

Families register their public factories with :func:`register_model`; users call
:func:`lightseg.create_model` (:mod:`lightseg.models.build`) and :func:`list_models`. Nothing here
knows about configs, losses or checkpoints. The registry is full as soon as any module of
:mod:`lightseg.models` is imported: Python runs the package's ``__init__`` first, and it imports
every family.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from lightseg.errors import ConfigError, UnknownModelError


@dataclass(frozen=True)
class ModelEntry:
    """What the registry knows of one model name.

    ``kind`` is ``"segmentor"`` (takes ``num_classes``, returns logits) or ``"backbone"``
    (returns a list of feature maps). ``backbone`` is the registered name of a segmentor's
    backbone (where its ImageNet weights come from). ``published`` holds figures from the papers
    (e.g. ``{"ade20k_miou": 43.6}``) for tables and docs.
    """

    name: str
    factory: Callable[..., nn.Module]
    kind: str
    family: str
    published: dict[str, Any] = field(default_factory=dict)
    backbone: str | None = None

    @property
    def weights_name(self) -> str:
        """The registry name whose published weights this model starts from."""
        return self.name if self.kind == "backbone" else str(self.backbone)


_MODELS: dict[str, ModelEntry] = {}


def register_model(
    kind: str = "segmentor",
    family: str = "",
    published: dict[str, Any] | None = None,
    backbone: str | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``fn`` under ``fn.__name__``; a segmentor names its ``backbone``."""
    if kind not in ("segmentor", "backbone"):
        raise ConfigError(f"kind must be 'segmentor' or 'backbone', got {kind!r}")
    if (kind == "segmentor") != (backbone is not None):
        raise ConfigError("a segmentor must name its registered backbone, a backbone must not")

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        fam = family or fn.__module__.rsplit(".", 1)[-1]
        _MODELS[name] = ModelEntry(name, fn, kind, fam, dict(published or {}), backbone)
        return fn

    return wrap


def get_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; an unknown name fails listing close matches."""
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownModelError(f"unknown model {name!r}.{hint} Known models: {', '.join(sorted(_MODELS))}")
    return _MODELS[name]


def list_models(pattern: str = "*", kind: str | None = None) -> list[str]:
    """Sorted names matching the shell-style ``pattern`` (and ``kind`` if given)."""
    return sorted(
        n for n, e in _MODELS.items() if fnmatch.fnmatch(n, pattern) and (kind is None or e.kind == kind)
    )
