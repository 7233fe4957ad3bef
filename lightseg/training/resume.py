"""Continuing a run: which checkpoint, whether it is the same run, and restoring its state.

Is a resumed run the same run? The checkpoint's config against the new one.

A checkpoint stores the resolved config of the run that wrote it. Resuming compares it field by
field with the config of the new command:

- fields that only say where and how the run executes, what it logs and how it evaluates
  (:data:`FREE`) may differ freely;
- fields that fix the shapes of the saved state (:data:`FIXED`: the model, its options, the
  parameter-group rule, the contrastive head) cannot change in a resumed run;
- every other field defines the run (data, splits, crops, batch, seed, schedule, optimizer, loss):
  a difference is refused with the list of differences unless the user names the field in
  ``run.allow_changes`` — then the new value is used for real and the change is logged.

Also here: which files hold a run (a new run never overwrites another), choosing the checkpoint to
continue (:func:`load_resume`: the newest intact one) and putting its state back (:func:`restore`).
"""

from __future__ import annotations

import difflib
import json
import math
from pathlib import Path
from typing import Any

import torch

from lightseg.config import Config
from lightseg.errors import CheckpointError, ConfigError
from lightseg.storage import storage_error
from lightseg.training.checkpoints import (
    CKPT_BEST,
    CKPT_LAST,
    FINAL_METRICS,
    candidates,
    load_train_checkpoint,
    previous_checkpoints,
)
from lightseg.training.distributed import DistInfo
from lightseg.training.runlog import RunLog
from lightseg.training.state import TrainState

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


def refuse_other_run(work_dir: Path, why: str) -> None:
    """A new run never overwrites another one's checkpoints, metrics and log."""
    found = run_files(work_dir)
    if found:
        raise ConfigError(
            f"run.work_dir {work_dir} holds another run ({', '.join(found)}); {why} would overwrite it. "
            "Use another --run.work_dir, or continue that run with --run.resume auto."
        )


# ----------------------------------------------------------------------------------------------
# Continuing a run


def load_resume(cfg: Config, work_dir: Path, info: DistInfo) -> tuple[dict | None, Path | None, list[str]]:
    """The checkpoint this run continues (``run.resume``), its path, and notes for the log.

    ``auto`` takes the newest intact checkpoint of ``work_dir``: one that reads and matches its
    digest (a damaged or unreadable ``last.pt`` is set aside as ``last.pt.corrupt`` with a warning).
    A new run never starts over another run's files."""
    r = cfg.run.resume
    if r == "none":
        refuse_other_run(work_dir, "starting a new run there (run.resume none)")
        return None, None, []
    if r != "auto":
        path = Path(r)
        if path.resolve().parent != work_dir.resolve():
            refuse_other_run(work_dir, f"continuing {path} there")
        return load_train_checkpoint(path), path, []
    notes, failed = [], []
    for path in candidates(work_dir):
        try:
            ckpt = load_train_checkpoint(path)
        except CheckpointError as e:
            failed.append(path)
            notes.append(f"warning: {e}; trying an older checkpoint")
            continue
        if failed and failed[0].name == CKPT_LAST and info.is_main:
            aside = failed[0].with_name(CKPT_LAST + ".corrupt")
            try:
                failed[0].replace(aside)
            except OSError as e:
                raise storage_error(e, aside, "the damaged checkpoint", "run the same command again") from e
            notes.append(f"warning: set the damaged {CKPT_LAST} aside as {CKPT_LAST}.corrupt")
        return ckpt, path, notes
    if failed:
        raise CheckpointError(
            f"no intact checkpoint in {work_dir}:\n" + "\n".join(notes) + "\nUse another --run.work_dir or "
            "--resume PATH."
        )
    if (work_dir / CKPT_BEST).is_file() or (work_dir / FINAL_METRICS).is_file():
        refuse_other_run(work_dir, "starting a new run there (it has no last.pt to resume)")
    return None, None, []


def already_complete(ckpt: dict, path: Path, work_dir: Path, log: RunLog) -> dict[str, Any]:
    log.info(
        f"{path} is at iteration {ckpt['iteration']} = train.iters: this run is complete, nothing to train "
        "(to train longer: --train.iters N --run.allow_changes [train.iters])."
    )
    log.close()
    final = work_dir / FINAL_METRICS
    metrics = json.loads(final.read_text()) if final.is_file() else None
    return {"iteration": ckpt["iteration"], "best": dict(ckpt.get("best", {})), "work_dir": str(work_dir),
            "metrics": metrics, "skipped": []}  # fmt: skip


def check_resumed_classes(ckpt: dict, num_classes: int, path: Path) -> None:
    saved = int(ckpt.get("num_classes") or 0)
    if saved and num_classes and saved != num_classes:
        raise ConfigError(
            f"cannot resume {path}: its model predicts {saved} classes, the dataset has {num_classes}. "
            "Start a new run in another --run.work_dir (or use --model.weights to initialise from it)."
        )


def restore(ckpt, path, model, loss_fn, optimizer, scheduler, scaler, ema) -> None:
    try:
        model.load_state_dict(ckpt["model"])
        loss_fn.load_state_dict(ckpt.get("loss", {}))
        optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"cannot resume {path}: its state does not fit this model ({e})") from None
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    if ema is not None and ckpt.get("ema") is not None:
        ema.load_state_dict(ckpt["ema"])


def resumed_state(
    ckpt: dict, path: Path, work_dir: Path, info: DistInfo, log: RunLog
) -> tuple[TrainState, dict | None]:
    """The loop state a checkpoint continues, and this process's saved RNG state (None when the
    number of processes changed: then the RNG streams start afresh)."""
    state = TrainState(ckpt["iteration"], dict(ckpt.get("best", {})), Path(path), ckpt["iteration"])
    if Path(path) == work_dir / CKPT_LAST:
        state.last_pt_iteration = state.iteration
    ranks = ckpt["rng"]
    log.info(f"resumed from {path} at iteration {state.iteration}")
    return state, ranks[info.rank] if len(ranks) == info.world_size else None


def describe_changes(changes: dict[str, tuple[Any, Any]]) -> str:
    return "\n".join(f"  {k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())


def jsonable(changes: dict[str, tuple[Any, Any]]) -> dict[str, list]:
    return {k: [old, new] for k, (old, new) in changes.items()}
