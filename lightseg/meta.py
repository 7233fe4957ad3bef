"""Model facts as data: one typed object that travels with a model and every file it is written to.

:class:`ModelMeta` is what a user of a trained model needs besides its weights: which model it is
(registry name and constructor options, so it can be rebuilt), what its outputs mean (classes,
palette), how to feed it (mean/std, the multiple its input sides must have) and what it returns
(output stride), plus where its weights came from. ``create_model`` sets ``model.meta``; safetensors
files, training checkpoints and exported graphs (ONNX ``metadata_props``, OpenVINO ``rt_info``)
store :meth:`ModelMeta.to_json` under the key :data:`META_KEY`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lightseg.errors import CheckpointError

META_KEY = "lightseg_meta"
# Label value that marks pixels without a class: skipped by losses and metrics, black in pictures.
IGNORE_INDEX = 255
# Normalisation of every model in lightseg (ImageNet statistics on 0-255 RGB), as in the papers' code.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class ModelMeta:
    """What a model is, what its outputs mean and how to feed it.

    ``mean``/``std`` apply to RGB values in 0..255: ``x = (rgb - mean) / std``. Input sides must be
    multiples of ``size_divisor``; logits come out at ``1 / output_stride`` of the input size.
    ``weights`` names the initial or trained weights (a registry tag, a file or ``None`` for
    random initialisation). ``num_classes`` is ``None`` for a backbone.
    """

    name: str
    num_classes: int | None
    options: dict[str, Any] = field(default_factory=dict)
    classes: tuple[str, ...] | None = None
    palette: tuple[tuple[int, int, int], ...] | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    size_divisor: int = 32
    output_stride: int = 8
    weights: str | None = None
    kind: str = "segmentor"

    def __post_init__(self) -> None:
        # Normalise containers so that metadata read back from JSON compares equal to the original.
        set_ = object.__setattr__
        if self.classes is not None:
            set_(self, "classes", tuple(str(c) for c in self.classes))
        if self.palette is not None:
            set_(self, "palette", tuple(tuple(int(v) for v in c) for c in self.palette))
        set_(self, "mean", tuple(float(v) for v in self.mean))
        set_(self, "std", tuple(float(v) for v in self.std))
        set_(self, "options", dict(self.options))
        self._validate()

    def _validate(self) -> None:
        problems = []
        if self.kind == "segmentor" and (not isinstance(self.num_classes, int) or self.num_classes < 1):
            problems.append(f"num_classes must be a positive integer, got {self.num_classes!r}")
        if (
            self.classes is not None
            and self.num_classes is not None
            and len(self.classes) != self.num_classes
        ):
            problems.append(f"{len(self.classes)} class names for {self.num_classes} classes")
        if self.palette is not None and self.num_classes is not None:
            if len(self.palette) < self.num_classes:
                problems.append(f"palette has {len(self.palette)} colours for {self.num_classes} classes")
            if any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in self.palette):
                problems.append("palette entries must be [r, g, b] with values in 0..255")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            problems.append(f"mean/std must be 3 values each (std > 0), got {self.mean} / {self.std}")
        if self.size_divisor < 1 or self.output_stride < 1:
            problems.append("size_divisor and output_stride must be >= 1")
        if problems:
            raise CheckpointError(f"invalid model metadata for {self.name!r}: " + "; ".join(problems))

    # ---- derived facts ------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        """The class names, or ``"0".."K-1"`` when the model has none recorded."""
        if self.classes is not None:
            return list(self.classes)
        return [str(i) for i in range(self.num_classes or 0)]

    def colours(self) -> list[list[int]]:
        """The palette, or a fixed pseudo-random one when the model has none recorded."""
        if self.palette is not None:
            return [list(c) for c in self.palette]
        return default_palette(self.num_classes or 0)

    def replace(self, **changes: Any) -> ModelMeta:
        return dataclasses.replace(self, **changes)

    # ---- (de)serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in ("classes", "palette", "mean", "std"):
            if d[key] is not None:
                d[key] = json.loads(json.dumps(d[key]))  # tuples -> lists
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "metadata") -> ModelMeta:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(
                f"{source}: unknown model metadata field(s) {unknown}; known: {sorted(known)}"
            )
        missing = [k for k in ("name", "num_classes") if k not in data]
        if missing:
            raise CheckpointError(f"{source}: model metadata lacks {missing}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str, source: str = "metadata") -> ModelMeta:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{source}: model metadata is not valid JSON ({e})") from e
        if not isinstance(data, dict):
            raise CheckpointError(f"{source}: model metadata must be a JSON object")
        return cls.from_dict(data, source)


def default_palette(num_classes: int, seed: int = 0) -> list[list[int]]:
    """A fixed pseudo-random palette for models without a dataset palette (same colours every run)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(num_classes, 3)).tolist()


def model_meta(model: Any) -> ModelMeta:
    """``model.meta``; a model built without :func:`lightseg.create_model` has none and fails here."""
    meta = getattr(model, "meta", None)
    if not isinstance(meta, ModelMeta):
        raise CheckpointError(
            f"{type(model).__name__} carries no lightseg metadata (model.meta); build it with "
            "lightseg.create_model or set model.meta = lightseg.ModelMeta(...)"
        )
    return meta
