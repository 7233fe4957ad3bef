"""The files of a run and how they are written: atomic, finite, with older ones kept as fallbacks.

A checkpoint (``last.pt``, ``best.pt``, ``iter_<N>.pt``) holds everything needed to continue the
very same run: model, loss, optimizer, scheduler, scaler and EMA states, the iteration, every
process's RNG state and the resolved config. Every checkpoint ends in the SHA-256 of its bytes
(:mod:`lightseg.digest`), checked whenever it is read: a damaged one is never resumed from.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from lightseg.checkpoint import TRAIN_FORMAT, load_torch_file
from lightseg.digest import ALGORITHM, MARKER_KEY, SealingWriter, verify
from lightseg.errors import CheckpointError, DivergenceError, WeightsNotFoundError
from lightseg.meta import META_KEY
from lightseg.storage import atomic_file
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


def atomic_save(
    obj: Any, path: str | os.PathLike, then: str = "run the same command again to resume"
) -> Path:
    """``torch.save`` to ``<path>.tmp`` with the file's digest as its last bytes (:mod:`lightseg.digest`),
    fsync, then rename over ``path``.

    The rename is atomic on POSIX: at every moment ``path`` is either the previous complete file or
    the new complete file, so a run killed mid-write keeps its last good checkpoint. A write that
    fails (a full, read-only or vanished disk) removes the temporary file and raises one
    :class:`~lightseg.errors.StorageError` naming the path; ``then`` says how to go on once fixed.
    """
    path = Path(path)
    kept = f"the previous {path.name} is intact" if path.is_file() else ""
    with atomic_file(path, "checkpoint", then, kept) as f:
        writer = SealingWriter(f)
        torch.save(obj, writer)
        writer.seal()
    return path


def load_train_checkpoint(path: str | os.PathLike) -> dict:
    """Read a ``lightseg-train`` checkpoint (safely: tensors and plain containers only), verified
    against its digest."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"checkpoint to resume from not found: {path}")
    obj = load_torch_file(path)
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
        MARKER_KEY: ALGORITHM,  # this file ends in its digest: a load without one is refused
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
    path = atomic_save(ckpt, ctx.work_dir / name, _then_resume(state))
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
        try:
            previous.unlink(missing_ok=True)
            os.link(last, previous)
        except OSError:  # a file system without hard links (a failing one: the copy names the cause)
            kept = f"{last} is intact"
            with atomic_file(previous, "checkpoint", _then_resume(state), kept) as f, open(last, "rb") as src:
                shutil.copyfileobj(src, f, 1 << 20)
    for old in previous_checkpoints(work_dir)[max(keep - 1, 0) :]:
        old.unlink()


def _then_resume(state: TrainState) -> str:
    """What to do once the disk is fixed: resume from the last checkpoint, if it is still there."""
    last = state.last_checkpoint
    if last is None:
        return "run the same command again"
    if not last.is_file():
        return f"run the same command again: {last} is gone too, so the run starts over"
    return f"run the same command again to resume from {checkpoint_where(state)}"


def last_finite(state: TrainState) -> str:
    """Names the last finite checkpoint written, verified against its digest: a file damaged since
    it was written is named as such."""
    where = checkpoint_where(state)
    if where is None:
        return "Last finite checkpoint: none written yet"
    try:
        verified = verify(state.last_checkpoint)
    except (CheckpointError, OSError) as e:
        return (
            f"The last finite checkpoint, {where}, cannot be used: {e}; run.resume auto falls back to "
            "the newest intact one"
        )
    return f"Last finite checkpoint: {where}" + (" (digest verified)" if verified else "")


def checkpoint_where(state: TrainState) -> str | None:
    """The last checkpoint written and its iteration, e.g. ``runs/x/last.pt at iteration 2``."""
    if state.last_checkpoint is None:
        return None
    return f"{state.last_checkpoint} at iteration {state.last_iteration_saved}"


def _meta_json(model: torch.nn.Module) -> str | None:
    meta = getattr(model, "meta", None)
    return None if meta is None else meta.to_json()
