"""Whole models from a name, a file or metadata: :func:`create_model` and :func:`load_checkpoint`.

This module sits above the registry (:mod:`lightseg.models.registry`: names -> factories), the
weights registry (:mod:`lightseg.weights`: published files) and :mod:`lightseg.checkpoint` (layouts,
strict loading); none of those imports it. Every model it returns carries ``model.meta``, a
:class:`~lightseg.meta.ModelMeta`.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from lightseg.checkpoint import load_state_dict_strict, load_weights, read_checkpoint
from lightseg.errors import CheckpointError, ConfigError
from lightseg.meta import ModelMeta
from lightseg.models.registry import ModelEntry, get_entry
from lightseg.weights import WeightsEntry, find_weights


def _describe(model: nn.Module, entry: ModelEntry) -> dict[str, int]:
    """Input multiple and output stride of a freshly built model of ``entry``."""
    if entry.kind == "segmentor":
        return {"size_divisor": int(model.size_divisor), "output_stride": int(model.output_stride)}
    stride = max(int(info["reduction"]) for info in model.feature_info)
    return {"size_divisor": stride, "output_stride": stride}


def load_pretrained(model: nn.Module, entry: ModelEntry, tag: bool | str = True) -> WeightsEntry:
    """Load the published ImageNet weights of ``entry``'s backbone into ``model`` (a segmentor's
    ``.backbone``, or the backbone itself); a segmentor's head keeps its fresh initialisation."""
    weights = find_weights(entry.weights_name, None if tag is True else str(tag), model_name=entry.name)
    load_weights(model, weights.fetch(), layout=weights.layout)
    return weights


def create_model(
    name: str,
    num_classes: int | None = None,
    *,
    weights: str | os.PathLike | None = None,
    pretrained: bool | str = False,
    **options: Any,
) -> nn.Module:
    """Build a registered model.

    Args:
        name: a registered name (see :func:`lightseg.list_models`).
        num_classes: output classes of a segmentor; ``None``: the model's own default (150 for
            CGRSeg, 19 for FRM). Ignored by backbones.
        weights: a path or URL of a checkpoint in any supported layout (lightseg safetensors,
            official mmseg CGRSeg, an ImageNet backbone file); loaded strictly.
        pretrained: ``True`` or a tag (see ``lightseg models --weights``): start the backbone from
            its published ImageNet weights; the head stays freshly initialised.
        options: keyword arguments of the model's factory (e.g. ``drop_path_rate``).
    """
    entry = get_entry(name)
    if not isinstance(pretrained, bool | str):
        raise ConfigError(f"{name}: pretrained must be true/false or a weights tag, got {pretrained!r}")
    if pretrained and weights is not None:
        raise ConfigError(f"{name}: pass pretrained or weights, not both (weights={weights})")
    kwargs = dict(options)
    if entry.kind == "segmentor" and num_classes is not None:
        kwargs["num_classes"] = int(num_classes)
    model = entry.factory(**kwargs)
    origin = None
    if pretrained:
        origin = load_pretrained(model, entry, pretrained).name
    elif weights is not None:
        load_weights(model, weights)
        origin = str(weights)
    model.meta = ModelMeta(
        name=name,
        num_classes=int(model.num_classes) if entry.kind == "segmentor" else None,
        options=options,
        weights=origin,
        kind=entry.kind,
        **_describe(model, entry),
    )
    return model


def build_from_meta(meta: ModelMeta | dict[str, Any]) -> nn.Module:
    """A freshly initialised model as ``meta`` (a :class:`ModelMeta` or some of its fields)
    describes it, carrying the recorded metadata (classes, palette, ...) as ``model.meta``."""
    fields = meta.to_dict() if isinstance(meta, ModelMeta) else dict(meta)
    model = create_model(fields["name"], num_classes=fields.get("num_classes"), **fields.get("options", {}))
    model.meta = model.meta.replace(**{k: v for k, v in fields.items() if k not in ("name", "options")})
    return model


def load_checkpoint(path_or_url: str | os.PathLike) -> nn.Module:
    """Rebuild the model a lightseg file (safetensors or training checkpoint) holds, with its
    weights loaded strictly and its metadata as ``model.meta``."""
    fields, state = read_checkpoint(path_or_url)
    try:
        model = build_from_meta(fields)
    except TypeError as e:  # options the factory does not take
        raise CheckpointError(f"{path_or_url}: cannot rebuild {fields.get('name')!r} ({e})") from e
    load_state_dict_strict(model, state, source=str(path_or_url))
    return model
