"""Training/evaluation configuration: dataclasses built from flat YAML recipes.

A recipe (``recipes/*.yaml``) has up to seven sections — ``model``, ``data``, ``optim``,
``schedule``, ``train``, ``eval``, ``run`` — each a mapping of field -> value. There is no
inheritance: every recipe states everything that differs from the defaults below. Any field can be
overridden on the command line as ``--section.field value`` (YAML syntax for the value, e.g.
``--data.crop_size [256,256]``). Unknown sections or fields fail with close matches.

Classes never import this module; the engine reads these dataclasses and calls classes.
"""

# ruff: noqa: RUF009 - the fields are built by _f, a documented wrapper of dataclasses.field

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lightseg.errors import ConfigError, ConfigNotFoundError
from lightseg.storage import write_text


def _f(default: Any, doc: str) -> Any:
    """A dataclass field with its documentation (``--help`` and docs/config-reference.md show it)."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


@dataclass
class ModelConfig:
    """The model: ``create_model(name, num_classes=<the dataset's>, weights=..., pretrained=...,
    **kwargs)``."""

    name: str = _f("cgrseg_t", "registered model name (`lightseg models` lists them)")
    kwargs: dict = _f({}, "constructor options, e.g. `{drop_path_rate: 0.1}`")
    weights: str | None = _f(
        None, "initial weights: any checkpoint `lightseg.load_weights` reads (e.g. an ImageNet backbone file)"
    )
    # true/false or a tag; create_model checks it (the converter handles one type per field).
    pretrained: Any = _f(
        False,
        "start the backbone from its published ImageNet weights: true or a tag of `lightseg models --weights`",
    )


@dataclass
class DataConfig:
    """The dataset and its pipelines. ``scale`` is mmseg's (long side, short side) bound;
    ``crop_size`` is (height, width); ``test_scale`` is the evaluation resize bound."""

    dataset: str = _f(
        "ade20k",
        "dataset name: ade20k, cityscapes, coco_stuff164k, coco_stuff10k, "
        "pascal_context59, pascal_context60, bdd100k, camvid or folder (your own data)",
    )
    root: str = _f("data/ade/ADEChallengeData2016", "dataset root folder")
    train_split: str = _f("train", "split trained on")
    val_split: str = _f("val", "split evaluated on during and after training (empty: no evaluation)")
    classes: list | str | None = _f(
        None,
        "folder: class names (a list) or a class file (classes.txt/.json/.yaml, class_dict.csv, labelmap.txt, "
        "_classes.csv); default: the first such file in the dataset folder",
    )
    palette: list | str | None = _f(
        None,
        "folder: class colours in class order (a list of [r, g, b] or a file); they map colour masks to class "
        "ids and colour predictions; default: the class file's colours, else the palette-mode masks' own",
    )
    ignore_index: int | str | None = _f(
        None,
        "folder: the mask value (or class name, e.g. Void) that marks ignored pixels (mapped to 255; a named "
        "class leaves the class list)",
    )
    reduce_zero_label: bool | None = _f(None, "folder: mask value 0 means ignore and k means class k-1")
    val_fraction: float | None = _f(
        None, "folder, flat images/ + masks/ only: share of the pairs held out as `val` (default 0.1)"
    )
    split_seed: int | None = _f(None, "folder, flat layout only: seed of that held-out split (default 0)")
    options: dict = _f({}, "further dataset options, e.g. `{mask_suffix: _mask.png}`")
    crop_size: list = _f([512, 512], "training crop (height, width)")
    scale: list = _f([2048, 512], "training resize bound (long side, short side) before the ratio")
    ratio_range: list = _f([0.5, 2.0], "random scale ratio range of the training resize")
    cat_max_ratio: float = _f(0.75, "re-draw a crop while one class covers at least this share of it")
    test_scale: list = _f([2048, 512], "evaluation resize bound (long side, short side)")
    num_workers: int = _f(2, "data loader processes (0: load in the training process)")
    on_error: str = _f(
        "fail", "a sample that cannot be read: fail (after an emergency checkpoint) | skip (listed)"
    )
    max_image_pixels: int | None = _f(
        None, "PIL's decompression-bomb limit in pixels (empty: PIL's own; 0: no limit)"
    )


@dataclass
class OptimConfig:
    """AdamW with the original's parameter groups (see ``training/optim.py``)."""

    lr: float = _f(1.2e-4, "base learning rate")
    betas: list = _f([0.9, 0.999], "AdamW betas")
    weight_decay: float = _f(0.01, "AdamW weight decay")
    head_lr_mult: float = _f(10.0, "learning-rate multiplier of the decode head")
    head_substring_rule: bool = _f(
        True,
        "true: the original's rule (every parameter with 'head' in its name gets head_lr_mult, "
        "including the backbone's talking_head convs); false: only the decode head",
    )
    grad_clip: float | None = _f(None, "clip the gradient norm to this value (null: no clipping)")


@dataclass
class ScheduleConfig:
    """Linear warm-up then poly decay, per iteration (mmcv ``policy='poly'``, ``by_epoch=False``)."""

    warmup_iters: int = _f(1500, "linear warm-up iterations (fewer than train.iters)")
    warmup_ratio: float = _f(1e-6, "learning-rate factor at iteration 0 of the warm-up")
    power: float = _f(1.0, "poly decay power")
    min_lr: float = _f(0.0, "learning rate reached at the last iteration")


@dataclass
class TrainConfig:
    """``batch_size`` is the total batch of one optimizer step over all processes and
    accumulation steps (16 in the papers); each process loads ``batch_size / (world * accum_steps)``."""

    iters: int = _f(160_000, "optimizer steps")
    batch_size: int = _f(16, "total batch of one step, over all processes and accumulation steps")
    accum_steps: int = _f(1, "gradient accumulation steps per optimizer step")
    amp: str = _f(
        "off",
        "mixed precision: off (fp32, as the papers trained) | bf16 | fp16 | auto (bf16, else fp16, on CUDA)",
    )
    ema_decay: float = _f(0.0, "decay of an exponential moving average of the weights (0: none)")
    avg_non_ignore: bool = _f(
        False, "average the cross-entropy over labelled pixels only (the papers average over all)"
    )
    contrastive_weight: float = _f(0.0, "weight of the pixel contrastive term (models with embeddings)")
    channels_last: bool = _f(False, "channels-last memory format")
    find_unused_parameters: bool = _f(False, "DDP find_unused_parameters")
    log_interval: int = _f(50, "iterations between training log records")
    ckpt_interval: int = _f(4000, "iterations between checkpoints (last.pt)")
    keep_checkpoints: int = _f(
        2, "checkpoints kept: last.pt and the previous ones (iter_<N>.pt), the fallback if one is corrupt"
    )
    skip_nonfinite: int = _f(
        0, "optimizer steps with a non-finite loss or gradient skipped (undone) before the run stops"
    )


@dataclass
class EvalConfig:
    """Inference for evaluation. With several ``scales`` the original image is resized to
    ``test_scale`` x each ratio (multi-scale test-time augmentation, as mmseg); probabilities are
    averaged over scales and flips."""

    interval: int = _f(16_000, "iterations between evaluations (0: evaluate only at the end)")
    mode: str = _f("whole", "whole | slide")
    crop_size: list = _f([512, 512], "slide mode: window (height, width)")
    stride: list = _f([341, 341], "slide mode: window stride (height, width)")
    scales: list = _f([1.0], "ratios of data.test_scale; more than one: multi-scale test-time augmentation")
    flip: bool = _f(False, "also average the horizontally flipped image")


@dataclass
class RunConfig:
    """Where and how the run happens."""

    work_dir: str = _f("", "run directory (empty: runs/<model>_<data>, a fresh one that no other run used)")
    seed: int = _f(0, "random seed")
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")
    resume: str = _f("auto", "auto (continue <work_dir>/last.pt if present) | none | a checkpoint path")
    tensorboard: bool = _f(True, "write TensorBoard events to <work_dir>/tb")
    allow_changes: list = _f(
        [], "fields a resumed run may change (e.g. [optim.lr, train.iters]); others must match the checkpoint"
    )


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _close(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=3, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else f" Known: {', '.join(options)}."


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (int -> float is allowed, nothing else)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for inner in (a for a in args if a is not type(None)):
            try:
                return _convert(value, inner, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(" or ".join(errors))
    if tp is str and isinstance(value, bool):
        return "on" if value else "off"  # YAML 1.1 reads `off`/`no` as false: `--train.amp off`
    if tp is str and value is None:
        return ""  # `--data.val_split ""` (YAML reads an empty value as null): an empty string
    if tp is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)  # e.g. `--run.work_dir 2024` or a numeric split name
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, str):
        # YAML 1.1 reads "1e-6" (no dot) as a string.
        try:
            return tp(value)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp in (float, str, list, dict) and not isinstance(value, tp):
        if tp is list and isinstance(value, tuple):
            return list(value)
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r} ({type(value).__name__})")
    return value


# Older spellings still accepted: (section, old name) -> field name.
ALIASES = {("data", "name"): "dataset"}


def _set(cfg: Config, section: str, name: str, value: Any, source: str) -> None:
    name = ALIASES.get((section, name), name)
    sections = [f.name for f in dataclasses.fields(Config)]
    if section not in sections:
        raise ConfigError(f"{source}: unknown section {section!r}.{_close(section, sections)}")
    sub = getattr(cfg, section)
    names = [f.name for f in dataclasses.fields(sub)]
    if name not in names:
        raise ConfigError(f"{source}: unknown field {section}.{name}.{_close(name, names)}")
    tp = typing.get_type_hints(type(sub))[name]
    key = source if source.startswith("--") else f"{source}: {section}.{name}"
    setattr(sub, name, _convert(value, tp, key))


def config_from_dict(data: dict, source: str = "config") -> Config:
    """A :class:`Config` from ``{section: {field: value}}``; unknown keys fail with close matches."""
    cfg = Config()
    for section, values in (data or {}).items():
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section {section!r} must be a mapping of field: value")
        for name, value in values.items():
            _set(cfg, section, name, value, source)
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a recipe and apply ``--section.field value`` overrides (a flat list of CLI tokens)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigNotFoundError(f"recipe not found: {path} (a recipe is a YAML file; see recipes/*.yaml)")
    data = _parse_yaml(path.read_text(), str(path))
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of section: {{field: value}}")
    cfg = config_from_dict(data or {}, source=str(path))
    apply_overrides(cfg, overrides or [])
    return cfg


def _parse_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load`` whose errors name the source and line."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}, line {mark.line + 1}, column {mark.column + 1}" if mark else source
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{where}: invalid YAML ({problem})") from None


def apply_overrides(cfg: Config, tokens: list[str]) -> Config:
    """Apply ``["--train.iters", "100", "--data.root=/x", ...]``; values are parsed as YAML."""
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--") or "." not in tok:
            raise ConfigError(f"expected an override like --section.field value, got {tok!r}")
        if "=" in tok:
            key, raw = tok[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(tokens):
                raise ConfigError(f"override {tok} has no value")
            key, raw = tok[2:], tokens[i + 1]
            i += 2
        section, name = key.split(".", 1)
        value = _parse_yaml(raw, f"--{key}")
        _set(cfg, section, name.replace("-", "_"), value, source=f"--{key}")
    return cfg


def given_fields(tokens: list[str]) -> set[str]:
    """``{"section.field", ...}`` named by override tokens (aliases resolved)."""
    out = set()
    for tok in tokens:
        if tok.startswith("--") and "." in tok:
            section, name = tok[2:].split("=", 1)[0].split(".", 1)
            name = name.replace("-", "_")
            out.add(f"{section}.{ALIASES.get((section, name), name)}")
    return out


# ------------------------------------------------------------------------------------------------
# The field reference: `--help` of each verb and docs/config-reference.md are generated from here.


def _type_name(tp: Any) -> str:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join("null" if a is type(None) else _type_name(a) for a in args)
    return getattr(tp, "__name__", str(tp))


def field_rows(section: str) -> list[tuple[str, str, str, str]]:
    """``(option, type, default, doc)`` of every field of ``section``."""
    cls = type(getattr(Config(), section))
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = getattr(cls(), f.name)
        rows.append(
            (
                f"{section}.{f.name}",
                _type_name(hints[f.name]),
                json_default(default),
                f.metadata.get("doc", ""),
            )
        )
    return rows


def json_default(value: Any) -> str:
    return (
        "null"
        if value is None
        else yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...")
    )


def fields_help(sections: list[str], recipe_free: dict[str, str] | None = None) -> str:
    """Plain-text list of the ``--section.field`` options of ``sections`` (a verb's ``--help``);
    ``recipe_free`` gives, per option, what a run without a recipe uses instead of the default."""
    lines = ["options --section.field VALUE (VALUE in YAML syntax):"]
    for section in sections:
        for option, tp, default, doc in field_rows(section):
            other = (recipe_free or {}).get(option)
            shown = f"default {default}" + (f"; without a recipe: {other}" if other else "")
            lines.append(f"  --{option} {tp} ({shown})\n      {doc}")
    return "\n".join(lines)


def reference_markdown() -> str:
    """The text of docs/config-reference.md."""
    out = [
        "# Configuration reference",
        "",
        "Every field can be set in a recipe (`section:` then `field: value`) or on the command line as",
        "`--section.field VALUE`, the value in YAML syntax (`--data.crop_size [256,256]`). The same",
        "`--data.*` fields work in `lightseg train`, `lightseg eval` and `lightseg data check`.",
        "This page is generated from `lightseg/config.py` (`python -m lightseg.config > docs/config-reference.md`).",
    ]
    for f in dataclasses.fields(Config):
        cls = type(getattr(Config(), f.name))
        out += ["", f"## {f.name}", "", " ".join((cls.__doc__ or "").split()), ""]
        out += ["| option | type | default | meaning |", "|---|---|---|---|"]
        for option, tp, default, doc in field_rows(f.name):
            cells = [f"`--{option}`", tp.replace("|", "\\|"), f"`{default}`", doc.replace("|", "\\|")]
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def save_config(cfg: Config, path: str | Path, then: str = "save it again") -> Path:
    """Write ``cfg`` as YAML (atomically; a failed write is one :class:`StorageError`)."""
    return write_text(path, cfg.to_yaml(), "the config", then)


if __name__ == "__main__":
    print(reference_markdown(), end="")
