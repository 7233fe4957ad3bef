"""Checked and stated before iteration 1: a run that cannot finish fails in seconds, not hours.

:func:`check_config` looks at the values alone (iterations, batch, intervals, crops, warm-up,
device, output directory); :func:`open_split` builds each split the run will use, so that a
missing ``test`` split fails now rather than at the first evaluation; :func:`check_classes` compares
class counts. Every failure is a :class:`~lightseg.errors.ConfigError` naming the field and what
it accepts. :func:`resolve_work_dir` names the run directory and :func:`describe_initial_weights`
says where the weights came from.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightseg.config import Config
from lightseg.errors import ConfigError, DataError, DatasetNotFoundError, SplitNotFoundError
from lightseg.storage import storage_error, write_text

AMP_VALUES = ("off", "bf16", "fp16", "auto")
EVAL_MODES = ("whole", "slide")


def _positive(problems: list[str], name: str, value: Any, allowed: str = "an integer > 0") -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        problems.append(f"{name} is {value!r}; allowed: {allowed}")


def _pair(problems: list[str], name: str, value: Any) -> None:
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value)):
        problems.append(f"{name} is {value!r}; allowed: two integers > 0, e.g. [512, 512]")


def check_config(cfg: Config) -> None:
    """Every value-level check; all problems are reported together."""
    p: list[str] = []
    t, s, e, d = cfg.train, cfg.schedule, cfg.eval, cfg.data
    _positive(p, "train.iters", t.iters)
    _positive(p, "train.batch_size", t.batch_size)
    _positive(p, "train.accum_steps", t.accum_steps)
    _positive(p, "train.log_interval", t.log_interval)
    _positive(p, "train.ckpt_interval", t.ckpt_interval)
    if e.interval < 0:
        p.append(f"eval.interval is {e.interval}; allowed: an integer > 0, or 0 (evaluate only at the end)")
    if s.warmup_iters < 0 or (t.iters > 0 and s.warmup_iters >= t.iters):
        p.append(
            f"schedule.warmup_iters is {s.warmup_iters} with train.iters {t.iters}; allowed: 0 <= "
            f"warmup_iters < iters (e.g. --schedule.warmup_iters {max(t.iters // 10, 0)}); a warm-up as long "
            "as the run never reaches the full learning rate"
        )
    _pair(p, "data.crop_size", d.crop_size)
    _pair(p, "data.scale", d.scale)
    _pair(p, "data.test_scale", d.test_scale)
    if e.mode not in EVAL_MODES:
        p.append(f"eval.mode is {e.mode!r}; allowed: {', '.join(EVAL_MODES)}")
    if e.mode == "slide":
        _pair(p, "eval.crop_size", e.crop_size)
        _pair(p, "eval.stride", e.stride)
    if not e.scales or any(not isinstance(r, int | float) or r <= 0 for r in e.scales):
        p.append(f"eval.scales is {e.scales!r}; allowed: a list of ratios > 0, e.g. [0.75, 1.0, 1.25]")
    if t.amp not in AMP_VALUES:
        p.append(f"train.amp is {t.amp!r}; allowed: {', '.join(AMP_VALUES)}")
    if d.num_workers < 0:
        p.append(f"data.num_workers is {d.num_workers}; allowed: an integer >= 0")
    device_problem = _device_problem(cfg.run.device)
    if device_problem:
        p.append(device_problem)
    if cfg.run.work_dir and Path(cfg.run.work_dir).exists() and not Path(cfg.run.work_dir).is_dir():
        p.append(f"run.work_dir {cfg.run.work_dir} is a file; allowed: a folder (existing or new)")
    if p:
        raise ConfigError("cannot start the run:\n  " + "\n  ".join(p))


def _device_problem(device: str) -> str | None:
    allowed = "auto, cpu, cuda, cuda:N"
    if device in ("auto", "cpu"):
        return None
    m = re.fullmatch(r"cuda(?::(\d+))?", device)
    if m is None:
        return f"run.device is {device!r}; allowed: {allowed}"
    if not torch.cuda.is_available():
        return f"run.device is {device!r} but this machine has no usable CUDA device; allowed here: auto, cpu"
    n = torch.cuda.device_count()
    if m.group(1) is not None and int(m.group(1)) >= n:
        return f"run.device is {device!r} but there are {n} CUDA device(s); allowed: cuda:0..cuda:{n - 1}"
    return None


def open_split(cfg: Config, field: str, transform: Any = None) -> Any:
    """The dataset split named by ``data.<field>`` (``train_split`` or ``val_split``); a split that is
    missing or empty is a :class:`ConfigError` naming the field and the splits that exist."""
    from lightseg.data import build_dataset_from_config

    split = getattr(cfg.data, field)
    try:
        ds = build_dataset_from_config(cfg.data, split, transform)
    except SplitNotFoundError as e:
        raise ConfigError(f"data.{field} {split!r}: {e}") from e
    except DatasetNotFoundError as e:
        raise ConfigError(f"data.root {cfg.data.root}: {e}") from e
    except DataError as e:  # a bad file stays a data error, with the split it was found in
        raise type(e)(f"data.{field} {split!r}: {e}") from e
    if len(ds) == 0:
        raise ConfigError(f"data.{field} {split!r}: the split at {cfg.data.root} holds no image/mask pairs")
    return ds


def check_classes(train_set: Any, val_set: Any | None, model: nn.Module | None) -> None:
    """The same class count in the training split, the evaluation split and the model."""
    k = int(getattr(train_set, "num_classes", 0) or 0)
    if val_set is not None and k and int(getattr(val_set, "num_classes", k)) != k:
        raise ConfigError(
            f"data.val_split has {val_set.num_classes} classes but data.train_split has {k}; "
            "give both the same class list (--data.classes)"
        )
    m = getattr(model, "num_classes", None) if model is not None else None
    if k and m is not None and int(m) != k:
        raise ConfigError(
            f"the model predicts {m} classes but the dataset has {k}; allowed: a model with {k} classes "
            "(leave model.kwargs.num_classes unset, or use weights trained on this class list)"
        )


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "data"


def default_run_name(cfg: Config) -> str:
    """``<model>_<data>``: the dataset name, or for your own folder the folder's name."""
    d = cfg.data
    data = Path(d.root).expanduser().resolve().name if d.dataset == "folder" else d.dataset
    return f"{_slug(cfg.model.name)}_{_slug(data)}"


def resolve_work_dir(cfg: Config, info: Any = None) -> tuple[Path, str | None]:
    """The run directory and a note when it was chosen here. An empty ``run.work_dir`` becomes
    ``runs/<model>_<data>``, or ``..._2``, ``_3``... when that one already holds a run (never
    reused). Under DDP rank 0 chooses and the others follow."""
    if cfg.run.work_dir:
        return Path(cfg.run.work_dir), None
    if info is not None and info.enabled:
        import torch.distributed as dist

        box = [_fresh_work_dir(cfg) if info.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return _fresh_work_dir(cfg)


def _fresh_work_dir(cfg: Config) -> tuple[Path, str | None]:
    base = Path("runs") / default_run_name(cfg)
    path, n = base, 1
    while path.exists() and any(path.iterdir()):
        n += 1
        path = base.with_name(f"{base.name}_{n}")
    note = f"run directory {path} (named after model and data; set --run.work_dir to choose)"
    if n > 1:
        note += f"; {base} holds another run, left untouched"
    return path, note


def describe_initial_weights(cfg: Config, model: Any) -> str:
    """One line saying where the model's weights come from (``model.meta.weights``)."""
    origin = getattr(getattr(model, "meta", None), "weights", None)
    if cfg.model.weights:
        return f"initial weights: {cfg.model.weights} (loaded strictly)"
    if origin:
        return (
            f"initial weights: {cfg.model.name} backbone from its ImageNet weights ({origin}), "
            "the decode head from random initialisation"
        )
    return f"initial weights: none, {cfg.model.name} starts from random initialisation"


def record_split(dataset: Any, work_dir: Path, is_main: bool) -> None:
    """Write ``split.json`` (which pairs went to train and val) when the split was drawn here."""
    record = getattr(dataset, "split_record", None)
    if record and is_main:
        then = "run the same command again"
        try:
            work_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise storage_error(e, work_dir / "split.json", "the split record", then) from e
        write_text(work_dir / "split.json", json.dumps(record, indent=1) + "\n", "the split record", then)
