"""Training/evaluation configuration: dataclasses built from flat YAML recipes.

A recipe (``recipes/*.yaml``) has up to seven sections — ``model``, ``data``, ``optim``,
``schedule``, ``train``, ``eval``, ``run`` — each a mapping of field -> value. There is no
inheritance: every recipe states everything that differs from the defaults below. Any field can be
overridden on the command line as ``--section.field value`` (YAML syntax for the value, e.g.
``--data.crop_size [256,256]``). Unknown sections or fields fail with close matches.

Classes never import this module; the engine reads these dataclasses and calls classes.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lightseg.errors import ConfigError, ConfigNotFoundError


@dataclass
class ModelConfig:
    """``create_model(name, num_classes=<dataset's>, **kwargs)``; ``weights`` (optional) is any
    checkpoint :func:`lightseg.load_weights` accepts (e.g. an ImageNet backbone file)."""

    name: str = "cgrseg_t"
    kwargs: dict = field(default_factory=dict)
    weights: str | None = None


@dataclass
class DataConfig:
    """Dataset and pipelines (SPEC 1.6). ``scale`` is mmseg's (long side, short side) bound;
    ``crop_size`` is (height, width); ``test_scale`` is the evaluation resize bound."""

    dataset: str = "ade20k"
    root: str = "data/ade/ADEChallengeData2016"
    train_split: str = "train"
    val_split: str = "val"
    options: dict = field(default_factory=dict)  # forwarded to build_dataset (e.g. reduce_zero_label)
    crop_size: list = field(default_factory=lambda: [512, 512])
    scale: list = field(default_factory=lambda: [2048, 512])
    ratio_range: list = field(default_factory=lambda: [0.5, 2.0])
    cat_max_ratio: float = 0.75
    test_scale: list = field(default_factory=lambda: [2048, 512])
    num_workers: int = 2
    on_error: str = "fail"  # fail (after an emergency checkpoint) | skip (unreadable samples, listed)
    max_image_pixels: int | None = None  # PIL's decompression-bomb limit (None: PIL's; 0: no limit)


@dataclass
class OptimConfig:
    """AdamW with the original's parameter groups (SPEC 1.6, see ``engine/optim.py``)."""

    lr: float = 1.2e-4
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.01
    head_lr_mult: float = 10.0
    # True: the original's substring rule ("head" anywhere in the name, so the backbone's
    # talking_head convs get x10 too). False: only the decode head (``head.*``).
    head_substring_rule: bool = True
    grad_clip: float | None = None


@dataclass
class ScheduleConfig:
    """Linear warm-up then poly decay, per iteration (mmcv ``policy='poly'``, ``by_epoch=False``)."""

    warmup_iters: int = 1500
    warmup_ratio: float = 1e-6
    power: float = 1.0
    min_lr: float = 0.0


@dataclass
class TrainConfig:
    """``batch_size`` is the total batch of one optimizer step over all processes and
    accumulation steps (16 in the papers); each process loads ``batch_size / (world * accum_steps)``."""

    iters: int = 160_000
    batch_size: int = 16
    accum_steps: int = 1
    amp: str = "auto"  # auto (bf16, else fp16, on CUDA; off on CPU) | off | bf16 | fp16
    ema_decay: float = 0.0  # 0 disables the EMA of the weights
    avg_non_ignore: bool = False  # the original averages the CE over all pixels (SPEC 1.2.7)
    contrastive_weight: float = 0.0  # weight of the pixel contrastive term when the model gives embeddings
    channels_last: bool = False
    find_unused_parameters: bool = False  # DDP
    log_interval: int = 50
    ckpt_interval: int = 4000
    keep_checkpoints: int = 2  # last.pt and the previous ones (iter_<N>.pt), the fallback if one is corrupt
    skip_nonfinite: int = 0  # optimizer steps with a non-finite loss or gradient skipped before stopping


@dataclass
class EvalConfig:
    """Inference for evaluation: ``mode`` whole | slide; ``scales`` are ratios of the resized
    image (multi-scale TTA when more than one); probabilities are averaged over scales and flips."""

    interval: int = 16_000  # 0: evaluate only at the end
    mode: str = "whole"
    crop_size: list = field(default_factory=lambda: [512, 512])
    stride: list = field(default_factory=lambda: [341, 341])
    scales: list = field(default_factory=lambda: [1.0])
    flip: bool = False


@dataclass
class RunConfig:
    work_dir: str = "runs/default"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    resume: str = "auto"  # auto (continue <work_dir>/last.pt if present) | none | a checkpoint path
    tensorboard: bool = True
    # Fields a resumed run may change (e.g. [optim.lr, train.iters]); others must match the checkpoint.
    allow_changes: list = field(default_factory=list)


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
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], key)
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


def _set(cfg: Config, section: str, name: str, value: Any, source: str) -> None:
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
        raise ConfigNotFoundError(f"recipe not found: {path}")
    cfg = config_from_dict(_read_yaml(path), source=str(path))
    apply_overrides(cfg, overrides or [])
    return cfg


def _read_yaml(path: Path) -> dict:
    """The recipe as a mapping; a YAML syntax error names the file, line and column."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{where}: invalid YAML ({problem})") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of sections, got {type(data).__name__}")
    return data or {}


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
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(
                f"--{key}: invalid value {raw!r} ({getattr(e, 'problem', None) or e})"
            ) from None
        _set(cfg, section, name.replace("-", "_"), value, source=f"--{key}")
    return cfg


def save_config(cfg: Config, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(cfg.to_yaml())
    return path
