"""Is a resumed run the same run? The checkpoint's config against the new one.

A checkpoint stores the resolved config of the run that wrote it. Resuming compares it field by
field with the config of the new command:

- fields that only say where and how the run executes, what it logs and how it evaluates
  (:data:`FREE`) may differ freely;
- fields that fix the shapes of the saved state (:data:`FIXED`: the model, its options, the
  parameter-group rule, the contrastive head) cannot change in a resumed run;
- every other field defines the run (data, splits, crops, batch, seed, schedule, optimizer, loss):
  a difference is refused with the list of differences unless the user names the field in
  ``run.allow_changes`` — then the new value is used for real and the change is logged.

Also here: which files hold a run (a new run never overwrites another) and the checkpoints a run
can resume from, newest first.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from lightseg.config import Config
from lightseg.errors import ConfigError

CKPT_LAST = "last.pt"
CKPT_BEST = "best.pt"
CKPT_PREVIOUS = "iter_{:08d}.pt"  # older checkpoints kept next to last.pt (train.keep_checkpoints)

FREE = frozenset(
    {
        "model.weights",  # initial weights only: a resumed run takes its weights from the checkpoint
        "data.num_workers",
        "data.on_error",
        "data.max_image_pixels",
        "data.test_scale",
        "train.accum_steps",  # the same samples per step (the stream depends on batch_size only)
        "train.channels_last",
        "train.find_unused_parameters",
        "train.log_interval",
        "train.ckpt_interval",
        "train.keep_checkpoints",
        "train.skip_nonfinite",
        "run.work_dir",
        "run.device",
        "run.resume",
        "run.tensorboard",
        "run.allow_changes",
    }
)
FREE_SECTIONS = frozenset({"eval"})
FIXED = frozenset(
    {
        "model.name",
        "model.kwargs",
        "optim.head_lr_mult",
        "optim.head_substring_rule",
        "train.contrastive_weight",
    }
)

FINAL_METRICS = "final_metrics.json"
RUN_FILES = (CKPT_LAST, CKPT_BEST, FINAL_METRICS, "log.jsonl")


def flatten(cfg: dict) -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}``."""
    return {f"{s}.{k}": v for s, fields in cfg.items() if isinstance(fields, dict) for k, v in fields.items()}


def _defines_run(key: str) -> bool:
    return key not in FREE and key.split(".", 1)[0] not in FREE_SECTIONS


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def differences(saved: dict, cfg: Config) -> dict[str, tuple[Any, Any]]:
    """Run-defining fields whose value differs: ``{key: (checkpoint's, now)}``. A field the
    checkpoint does not record (written by an older version) counts as its default."""
    defaults = flatten(Config().to_dict())
    old = {**defaults, **flatten(saved)}
    new = flatten(cfg.to_dict())
    return {k: (old.get(k), v) for k, v in new.items() if _defines_run(k) and not _same(old.get(k), v)}


def check_same_run(saved: dict, cfg: Config, iteration: int, source: Path) -> dict[str, tuple[Any, Any]]:
    """The changes this resume applies (all named in ``run.allow_changes``); a ConfigError lists any
    other difference, any change to a :data:`FIXED` field, and a checkpoint past the configured end."""
    _check_allow_list(cfg)
    diff = differences(saved, cfg)
    fixed = {k: v for k, v in diff.items() if k in FIXED}
    if fixed:
        raise ConfigError(
            f"cannot resume {source}: these fields fix the shapes of the saved model and optimizer and "
            f"cannot change in a resumed run:\n{_table(fixed)}\n"
            "Start a new run in another --run.work_dir (or use --model.weights to initialise from it)."
        )
    refused = {k: v for k, v in diff.items() if k not in cfg.run.allow_changes}
    if refused:
        keys = ",".join(refused)
        raise ConfigError(
            f"cannot resume {source}: the configuration differs from the run it continues:\n{_table(refused)}\n"
            f"To continue with the new values, name them: --run.allow_changes [{keys}]; to keep the run's "
            "values, drop those overrides; to start a new run, use another --run.work_dir."
        )
    if iteration > cfg.train.iters:
        raise ConfigError(
            f"{source} is at iteration {iteration}, past the configured end (train.iters "
            f"{cfg.train.iters}); nothing to train. To train longer: --train.iters N "
            "--run.allow_changes [train.iters] with N above it; to start over: another --run.work_dir."
        )
    return diff


def _check_allow_list(cfg: Config) -> None:
    known = list(flatten(Config().to_dict()))
    for key in cfg.run.allow_changes:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=3, cutoff=0.5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ConfigError(f"run.allow_changes: unknown field {key!r}.{hint}")


def _table(diff: dict[str, tuple[Any, Any]]) -> str:
    return "\n".join(f"  {k}: {old!r} (checkpoint) -> {new!r} (now)" for k, (old, new) in diff.items())


def apply_hyperparameters(optimizer: torch.optim.Optimizer, scheduler: Any, cfg: Config) -> None:
    """Make a loaded optimizer and scheduler follow ``cfg`` (lr, betas, weight decay, schedule)
    from the current iteration on: the loaded state carries the checkpoint's values."""
    o = cfg.optim
    for g in optimizer.param_groups:
        g["initial_lr"] = o.lr * g["lr_mult"]
        g["weight_decay"] = o.weight_decay * g["decay_mult"]
        g["betas"] = tuple(o.betas)
    scheduler.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
    for g, base, fn in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        g["lr"] = base * fn(scheduler.last_epoch)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


# ----------------------------------------------------------------------------------------------
# Run directories


def run_files(work_dir: Path) -> list[str]:
    """The files of a run already in ``work_dir`` (empty when there is none)."""
    names = [n for n in RUN_FILES if (work_dir / n).is_file() and (work_dir / n).stat().st_size]
    return names + [p.name for p in previous_checkpoints(work_dir)]


def previous_checkpoints(work_dir: Path) -> list[Path]:
    """The kept older checkpoints (``iter_<N>.pt``), newest first."""
    return sorted(work_dir.glob("iter_*.pt"), reverse=True)


def candidates(work_dir: Path) -> Iterator[Path]:
    """Checkpoints ``run.resume auto`` tries, newest first: ``last.pt``, then the kept older ones."""
    if (work_dir / CKPT_LAST).is_file():
        yield work_dir / CKPT_LAST
    yield from previous_checkpoints(work_dir)


def refuse_other_run(work_dir: Path, why: str) -> None:
    """A new run never overwrites another one's checkpoints, metrics and log."""
    found = run_files(work_dir)
    if found:
        raise ConfigError(
            f"run.work_dir {work_dir} holds another run ({', '.join(found)}); {why} would overwrite it. "
            "Use another --run.work_dir, or continue that run with --run.resume auto."
        )


def nonfinite_state(named: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding NaN or inf."""
    return [
        k
        for k, t in named.items()
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all())
    ]
