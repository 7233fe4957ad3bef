"""The files of a run and how they are written: atomic, finite, with older ones kept as fallbacks.

A checkpoint (``last.pt``, ``best.pt``, ``iter_<N>.pt``) holds everything needed to continue the
very same run: model, loss, optimizer, scheduler, scaler and EMA states, the iteration, every
process's RNG state and the resolved config.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from lightseg.checkpoint import TRAIN_FORMAT
from lightseg.errors import CheckpointError, DivergenceError, WeightsNotFoundError
from lightseg.meta import META_KEY
from lightseg.training.state import RunContext, TrainState, rng_state

CKPT_LAST = "last.pt"

CKPT_BEST = "best.pt"

CKPT_PREVIOUS = "iter_{:08d}.pt"  # older checkpoints kept next to last.pt (train.keep_checkpoints)

FINAL_METRICS = "final_metrics.json"


def previous_checkpoints(work_dir: Path) -> list[Path]:
    """The kept older checkpoints (``iter_<N>.pt``), newest first."""
    return sorted(work_dir.glob("iter_*.pt"), reverse=True)


def candidates(work_dir: Path) -> Iterator[Path]:
    """Checkpoints ``run.resume auto`` tries, newest first: ``last.pt``, then the kept older ones."""
    if (work_dir / CKPT_LAST).is_file():
        yield work_dir / CKPT_LAST
    yield from previous_checkpoints(work_dir)


def nonfinite_state(named: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding NaN or inf."""
    return [
        k
        for k, t in named.items()
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all())
    ]


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``<path>.tmp``, fsync, then rename over ``path``.

    The rename is atomic on POSIX: at every moment ``path`` is either the previous complete file or
    the new complete file, so a run killed mid-write keeps its last good checkpoint. A write that
    fails (a full disk) removes the temporary file and names the path.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if not isinstance(e, OSError):
            raise
        full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        raise CheckpointError(
            f"cannot write checkpoint {path}: "
            + ("the disk is full" if full else f"{e.strerror or e}")
            + f"; the partial file was removed and the previous {path.name} (if any) is intact. "
            + ("Free some space" if full else "Fix the folder")
            + " and run the same command again to resume."
        ) from e
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path


def load_train_checkpoint(path: str | os.PathLike) -> dict:
    """Read a ``lightseg-train`` checkpoint (safely: tensors and plain containers only)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"checkpoint to resume from not found: {path}")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not (isinstance(obj, dict) and obj.get("format") == TRAIN_FORMAT):
        raise CheckpointError(f"{path}: not a lightseg training checkpoint (no format={TRAIN_FORMAT!r})")
    return obj


def save_checkpoint(ctx: RunContext, state: TrainState, name: str) -> None:
    """Atomic checkpoint (rank 0 writes; every rank contributes its RNG state). Only finite state
    is saved: a NaN or inf anywhere stops the run instead. ``last.pt`` keeps its predecessors
    (``train.keep_checkpoints``) as fallbacks."""
    rngs = [rng_state()]
    if ctx.info.enabled:
        import torch.distributed as dist

        rngs = [None] * ctx.info.world_size
        dist.all_gather_object(rngs, rng_state())
    ckpt = {
        "format": TRAIN_FORMAT,
        "model": ctx.model.state_dict(),
        META_KEY: _meta_json(ctx.model),
        "num_classes": int(getattr(ctx.model, "num_classes", 0)),  # also for models built by hand
        "loss": ctx.loss_fn.state_dict(),
        "optimizer": ctx.optimizer.state_dict(),
        "scheduler": ctx.scheduler.state_dict(),
        "scaler": ctx.scaler.state_dict(),
        "ema": ctx.ema.state_dict() if ctx.ema is not None else None,
        "iteration": state.iteration,
        "best": {k: v for k, v in state.best.items() if k != "last_metrics"},
        "rng": rngs,
        "config": ctx.cfg.to_dict(),
    }
    _check_finite(ckpt, state)
    if not ctx.info.is_main:
        return
    if name == CKPT_LAST:
        _keep_previous(ctx.work_dir, state, ctx.cfg.train.keep_checkpoints)
    path = atomic_save(ckpt, ctx.work_dir / name)
    if name == CKPT_LAST:
        state.last_checkpoint = path
        state.last_iteration_saved = state.last_pt_iteration = state.iteration


def _check_finite(ckpt: dict, state: TrainState) -> None:
    tensors = {f"model.{k}": v for k, v in ckpt["model"].items()}
    tensors.update({f"loss.{k}": v for k, v in ckpt["loss"].items() if isinstance(v, torch.Tensor)})
    tensors.update({f"ema.{k}": v for k, v in (ckpt["ema"] or {}).items()})
    for i, s in ckpt["optimizer"]["state"].items():
        tensors.update({f"optimizer.{i}.{k}": v for k, v in s.items() if isinstance(v, torch.Tensor)})
    bad = nonfinite_state(tensors)
    if bad:
        shown = ", ".join(bad[:5]) + (f", ... ({len(bad) - 5} more)" if len(bad) > 5 else "")
        raise DivergenceError(
            f"the training state is not finite at iteration {state.iteration} ({len(bad)} tensor(s) hold NaN "
            f"or inf: {shown}); not saved. {last_finite(state)}. Try a lower --optim.lr or --optim.grad_clip "
            "(resuming with a change needs --run.allow_changes [optim.lr])."
        )


def _keep_previous(work_dir: Path, state: TrainState, keep: int) -> None:
    """Before ``last.pt`` is replaced, keep it as ``iter_<N>.pt`` (a hard link: no copy) and drop
    the kept ones beyond ``keep - 1``."""
    last, held = work_dir / CKPT_LAST, state.last_pt_iteration
    if keep > 1 and last.is_file() and held is not None and held < state.iteration:
        previous = work_dir / CKPT_PREVIOUS.format(held)
        previous.unlink(missing_ok=True)
        try:
            os.link(last, previous)
        except OSError:  # a file system without hard links
            shutil.copy2(last, previous)
    for old in previous_checkpoints(work_dir)[max(keep - 1, 0) :]:
        old.unlink()


def last_finite(state: TrainState) -> str:
    return f"Last finite checkpoint: {checkpoint_where(state) or 'none written yet'}"


def checkpoint_where(state: TrainState) -> str | None:
    """The last checkpoint written and its iteration, e.g. ``runs/x/last.pt at iteration 2``."""
    if state.last_checkpoint is None:
        return None
    return f"{state.last_checkpoint} at iteration {state.last_iteration_saved}"


def _meta_json(model: torch.nn.Module) -> str | None:
    meta = getattr(model, "meta", None)
    return None if meta is None else meta.to_json()
