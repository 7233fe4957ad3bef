"""Whole models from a name, a file or metadata — the one place a model is built:
:func:`create_model` (a name, optionally weights), :func:`load_checkpoint` (a lightseg file),
:func:`build_from_meta` (metadata) and :func:`load_model` (whatever a user has: a file, or a name
with weights).

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
from lightseg.errors import CheckpointError, ConfigError, ForeignCheckpointError
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


def load_model(
    name: str | None, weights: str | os.PathLike | None = None, num_classes: int | None = None
) -> nn.Module:
    """A segmentor in eval mode from what a user has.

    - ``weights`` is a lightseg file (safetensors or training checkpoint): rebuilt from it (its
      metadata names the model and its classes; ``name`` and ``num_classes``, if given, must agree);
    - ``weights`` is a foreign layout (official mmseg, ImageNet): ``create_model(name, num_classes,
      weights=weights)`` loaded strictly, where ``num_classes`` ``None`` is the model's own default;
      weights for another class count fail naming the file and the keys;
    - no weights: ``create_model(name, num_classes)``, randomly initialised.

    A damaged lightseg file is an error, never a reason to build something else.
    """
    if weights is not None:
        try:
            model = load_checkpoint(weights)
        except ForeignCheckpointError:
            model = None  # a foreign layout: needs the name (and class count) from the caller
        if model is not None:
            saved = model.meta
            if name and saved.name != name:
                raise CheckpointError(f"{weights}: holds weights of {saved.name!r}, not {name!r}")
            if num_classes is not None and num_classes != saved.num_classes:
                raise CheckpointError(
                    f"{weights}: holds weights for {saved.num_classes} classes, not {num_classes}: drop "
                    "--num-classes (a lightseg checkpoint knows its classes) or use weights for that many"
                )
            return model.eval()
    if not name:
        raise CheckpointError(
            f"{weights}: not a lightseg checkpoint, so it does not name its model: give the model name "
            "too (see `lightseg models`)"
        )
    try:
        model = create_model(name, num_classes=num_classes, weights=None if weights is None else str(weights))
    except CheckpointError as e:
        if weights is None or num_classes is not None or "mis-shaped" not in str(e):
            raise
        raise CheckpointError(
            f"{e}\n(if the weights are for another number of classes than {name}'s default, pass "
            "--num-classes K)"
        ) from e
    return model.eval()
