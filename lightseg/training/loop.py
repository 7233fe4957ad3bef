"""The training loop: ``lightseg train RECIPE.yaml [--section.field value ...]``.

Iteration-based, as the papers' mmseg runs: every step draws ``train.batch_size`` crops (over all
processes and accumulation steps), computes the cross-entropy on the final logits upsampled to the
label size (plus an optional pixel contrastive term), and takes one AdamW step with the SPEC 1.6
parameter groups and the warm-up + poly schedule. The same command runs on one CPU, one GPU or under
``torchrun`` (DDP, SyncBN on CUDA). Checkpoints are atomic and hold everything needed to continue the
very same run (``run.resume``).

Read top to bottom: :func:`train` opens the run (:func:`_open_splits`, :func:`_build`), restores
what a checkpoint holds (:func:`_resume_into`), runs :func:`_loop` and ends in :func:`_finish`;
``_train_step`` is one optimizer step and ``_maybe_evaluate`` the periodic evaluation. What a run is
made of is built in :mod:`~lightseg.training.components`, its files are written by
:mod:`~lightseg.training.checkpoints`.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset

from lightseg.config import Config, save_config
from lightseg.data.base import set_max_image_pixels
from lightseg.errors import DataError, DivergenceError, LightsegError, OutOfMemoryError
from lightseg.evaluation import build_eval_dataset, eval_transform, evaluate
from lightseg.meta import IGNORE_INDEX
from lightseg.metrics import format_table
from lightseg.storage import write_text
from lightseg.training import components, preflight
from lightseg.training.checkpoints import (
    CKPT_BEST,
    CKPT_LAST,
    FINAL_METRICS,
    checkpoint_where,
    last_finite,
    save_checkpoint,
)
from lightseg.training.distributed import DistInfo, all_reduce_mean, init_distributed
from lightseg.training.optim import describe_groups
from lightseg.training.resume import (
    already_complete,
    apply_hyperparameters,
    check_resumed_classes,
    check_same_run,
    describe_changes,
    jsonable,
    load_resume,
    restore,
    resumed_state,
)
from lightseg.training.runlog import RunLog
from lightseg.training.sampling import GuardedSamples, ResumableBatches, collate
from lightseg.training.state import ModelEMA, RunContext, TrainState, seed_everything, set_rng_state
from lightseg.training.tensorboard import EvalSummaries

# The loss, a gradient or the saved state became NaN/inf; the message names the last finite checkpoint.
TrainingDiverged = DivergenceError
# The advice of every error the run can recover from (a work directory chosen here is added to it).
RERUN = "run the same command again"


def train(
    cfg: Config,
    *,
    model: nn.Module | None = None,
    train_set: Dataset | None = None,
    val_set: Dataset | None = None,
) -> dict[str, Any]:
    """Train as ``cfg`` says; returns ``{"iteration", "best", "metrics", "work_dir", "skipped"}``.

    ``model`` / ``train_set`` / ``val_set`` replace what the config would build (tests, notebooks).
    ``val_set`` of ``None`` builds the configured validation split when evaluation is due.
    """
    preflight.check_config(cfg)
    info, device = init_distributed(cfg.run.device)
    work_dir, dir_note = preflight.resolve_work_dir(cfg, info)
    cfg.run.work_dir = str(work_dir)
    with _advice_names_run_dir(work_dir, chosen_here=dir_note is not None):
        return _train(cfg, info, device, work_dir, dir_note, model, train_set, val_set)


@contextlib.contextmanager
def _advice_names_run_dir(work_dir: Path, chosen_here: bool):
    """The same command again makes a new run beside a run directory chosen here, so an error's
    advice to run it again names the directory (``--run.work_dir``) to continue this one."""
    try:
        yield
    except LightsegError as e:
        if chosen_here and RERUN in str(e):
            e.args = (str(e).replace(RERUN, f"{RERUN} with --run.work_dir {work_dir}"),)
        raise


def _train(
    cfg: Config,
    info: DistInfo,
    device: torch.device,
    work_dir: Path,
    dir_note: str | None,
    model: nn.Module | None,
    train_set: Dataset | None,
    val_set: Dataset | None,
) -> dict[str, Any]:
    set_max_image_pixels(cfg.data.max_image_pixels)
    seed_everything(cfg.run.seed + info.rank)
    # Every split the run uses is opened (and checked) before anything is written or trained.
    train_set, val_set = _open_splits(cfg, train_set, val_set, model)

    ckpt, resume_from, notes = load_resume(cfg, work_dir, info)
    changes = check_same_run(ckpt["config"], cfg, ckpt["iteration"], resume_from) if ckpt else {}
    complete = bool(ckpt) and _is_complete(cfg, ckpt, val_set, work_dir)
    if not complete:
        model = _model_for_run(cfg, model, train_set, ckpt, resume_from, notes)
    log = RunLog(work_dir, info, cfg.run.tensorboard, start=ckpt["iteration"] if ckpt else 0)
    with log.closed_on_error():
        for note in [dir_note, *notes]:
            if note:
                log.info(note)
        if complete:
            return already_complete(ckpt, resume_from, work_dir, log)  # else the final evaluation is due
        ctx = _build(cfg, info, device, work_dir, log, model, train_set)
        state, saved_rng = _resume_into(ctx, ckpt, resume_from, changes)
        step_model, batch_iter = _step_and_batches(ctx, train_set, state, saved_rng)
        val_set = _loop(ctx, state, step_model, batch_iter, val_set)
        return _finish(ctx, state, val_set)


# ----------------------------------------------------------------------------------------------
# Opening the run


def _open_splits(
    cfg: Config, train_set: Dataset | None, val_set: Dataset | None, model: nn.Module | None
) -> tuple[Dataset, Dataset | None]:
    train_set = train_set if train_set is not None else components.build_train_dataset(cfg)
    if val_set is None and cfg.data.val_split:
        val_set = preflight.open_split(cfg, "val_split", eval_transform(cfg))
    preflight.check_classes(train_set, val_set, model)
    return train_set, val_set


def _is_complete(cfg: Config, ckpt: dict, val_set: Dataset | None, work_dir: Path) -> bool:
    """The checkpoint is at the end of the run and, if the run evaluates, the final figures exist."""
    evaluates = val_set is not None or bool(cfg.data.val_split)
    return ckpt["iteration"] == cfg.train.iters and (not evaluates or (work_dir / FINAL_METRICS).is_file())


def _model_for_run(
    cfg: Config,
    model: nn.Module | None,
    train_set: Dataset,
    ckpt: dict | None,
    resume_from: Path | None,
    notes: list[str],
) -> nn.Module:
    """The run's model, built (its ImageNet weights fetched) before the run directory is made, so
    that a run which cannot start leaves no folder behind; its weights note joins ``notes``."""
    num_classes = int(getattr(train_set, "num_classes", 0) or getattr(model, "num_classes", 0))
    if ckpt:
        check_resumed_classes(ckpt, num_classes, resume_from)
    if model is None:
        model, weights_note = components.model_from_config(cfg, num_classes)
        notes.append(weights_note)
    return model


def _build(
    cfg: Config,
    info: DistInfo,
    device: torch.device,
    work_dir: Path,
    log: RunLog,
    model: nn.Module,
    train_set: Dataset,
) -> RunContext:
    """The model placed on its device, the loss, optimizer, schedule, scaler and EMA of the run."""
    ignore_index = int(getattr(train_set, "ignore_index", IGNORE_INDEX))
    preflight.record_split(train_set, work_dir, info.is_main)
    components.record_data_facts(model, train_set, cfg)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = components.place_model(model, info, device, log)
    components.micro_batch_size(cfg, info)  # fails now if the batch does not split over processes
    loss_fn = components.build_loss(cfg, model, ignore_index).to(device)
    optimizer = components.build_optimizer(cfg, model, loss_fn)
    scheduler = components.build_scheduler(cfg, optimizer)
    amp_dtype = components.resolve_amp(cfg.train.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    ema = ModelEMA(model, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
    return RunContext(
        cfg, info, device, work_dir, log, model, loss_fn, optimizer, scheduler, scaler, ema, amp_dtype
    )


def _resume_into(
    ctx: RunContext, ckpt: dict | None, resume_from: Path | None, changes: dict
) -> tuple[TrainState, dict | None]:
    """The loop state to start from (restored from ``ckpt`` when resuming) and the RNG state to
    set once the data loader exists; writes the run's config."""
    state, saved_rng = TrainState(), None
    if ckpt:
        c = ctx
        restore(ckpt, resume_from, c.model, c.loss_fn, c.optimizer, c.scheduler, c.scaler, c.ema)
        state, saved_rng = resumed_state(ckpt, resume_from, ctx.work_dir, ctx.info, ctx.log)
        if changes:
            apply_hyperparameters(ctx.optimizer, ctx.scheduler, ctx.cfg)
            ctx.log.info("resumed with changes (run.allow_changes):\n" + describe_changes(changes))
        ctx.log.record("resume", state.iteration, {"from": str(resume_from), "changes": jsonable(changes)})
    if ctx.info.is_main:
        save_config(ctx.cfg, ctx.work_dir / "config.yaml", "run the same command again")
        ctx.log.info(f"run directory: {ctx.work_dir}\nparameter groups:\n{describe_groups(ctx.optimizer)}")
    return state, saved_rng


def _step_and_batches(
    ctx: RunContext, train_set: Dataset, state: TrainState, saved_rng: dict | None
) -> tuple[nn.Module, Any]:
    """The module one step calls (model + loss, under DDP when distributed) and the iterator of
    batches from the current step on."""
    cfg, info, device = ctx.cfg, ctx.info, ctx.device
    step_model: nn.Module = components.TrainForward(ctx.model, ctx.loss_fn)
    if info.enabled:
        ids = [device.index] if device.type == "cuda" else None
        step_model = DDP(step_model, device_ids=ids, find_unused_parameters=cfg.train.find_unused_parameters)
    batches = ResumableBatches(
        len(train_set), components.micro_batch_size(cfg, info), cfg.train.accum_steps, cfg.run.seed, info,
        state.iteration,
    )  # fmt: skip
    loader = DataLoader(
        GuardedSamples(train_set, skip=components.skips_bad_samples(cfg)), batch_sampler=batches,
        num_workers=cfg.data.num_workers, collate_fn=collate, pin_memory=device.type == "cuda",
        persistent_workers=cfg.data.num_workers > 0,
    )  # fmt: skip
    batch_iter = iter(loader)  # created before restoring the RNG: its base seed draw must not shift it
    if saved_rng is not None:
        set_rng_state(saved_rng)
    return step_model, batch_iter


# ----------------------------------------------------------------------------------------------
# The loop


def _loop(
    ctx: RunContext, state: TrainState, step_model: nn.Module, batch_iter, val_set: Dataset | None
) -> Dataset | None:
    """Steps until ``train.iters``: log, checkpoint and evaluate at their intervals."""
    cfg, optimizer = ctx.cfg, ctx.optimizer
    bar = _progress(cfg, state, ctx.info)
    t0, seen = time.perf_counter(), 0
    ctx.model.train()
    with bar:  # closed before an error is reported, so that the error is the last line
        while state.iteration < cfg.train.iters:
            loss = _guarded_step(ctx, step_model, batch_iter, state)
            state.iteration += 1
            seen += cfg.train.batch_size
            lr = optimizer.param_groups[0]["lr"] / optimizer.param_groups[0]["lr_mult"]
            img_s = seen / (time.perf_counter() - t0)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{img_s:.1f}")
            last = state.iteration == cfg.train.iters
            if state.iteration % cfg.train.log_interval == 0 or last:
                ctx.log.record("train", state.iteration, {"loss": loss, "lr": lr, "img_per_s": img_s})
            if state.iteration % cfg.train.ckpt_interval == 0 or last:
                save_checkpoint(ctx, state, CKPT_LAST)
            if cfg.eval.interval and state.iteration % cfg.eval.interval == 0 and not last:
                val_set = _maybe_evaluate(ctx, state, val_set)
    return val_set


def _finish(ctx: RunContext, state: TrainState, val_set: Dataset | None) -> dict[str, Any]:
    """The final evaluation and the run's result; closes the log."""
    _maybe_evaluate(ctx, state, val_set, final=True)
    result = {
        "iteration": state.iteration,
        "best": {k: v for k, v in state.best.items() if k != "last_metrics"},
        "work_dir": str(ctx.work_dir),
        "metrics": state.best.get("last_metrics"),
        "skipped": state.skipped_samples,
    }
    if state.skipped_samples:
        ctx.log.info(
            f"{len(state.skipped_samples)} unreadable sample(s) skipped:\n  "
            + "\n  ".join(state.skipped_samples)
        )
    ctx.log.close()
    return result


def _guarded_step(ctx: RunContext, step_model: nn.Module, batch_iter, state: TrainState) -> float:
    """One step; a data error (with ``data.on_error fail``) first saves an emergency checkpoint of
    the steps done since the last one, so that fixing the file and rerunning loses nothing."""
    try:
        return _train_step(ctx, step_model, batch_iter, state)
    except DataError as e:
        saved = _save_before_stopping(ctx, state)
        raise DataError(
            f"{e}{_saved_note(state, saved)}: fix or remove the file and run the same command again "
            "to continue (or --data.on_error skip)."
        ) from None
    except OutOfMemoryError as e:
        ctx.optimizer.zero_grad(set_to_none=True)  # free the failed step's gradients first
        saved = _save_before_stopping(ctx, state)
        raise OutOfMemoryError(
            f"{e}{_saved_note(state, saved)}: rerun with the new settings named in "
            "run.allow_changes to continue from it."
        ) from None


def _save_before_stopping(ctx: RunContext, state: TrainState) -> bool:
    """An emergency checkpoint of the steps done since the last one (the weights are those of the
    last finished step); whether one was written. Not under DDP: the other processes cannot join
    a save."""
    if ctx.info.enabled or state.iteration == state.last_iteration_saved:
        return False
    save_checkpoint(ctx, state, CKPT_LAST)
    return True


def _saved_note(state: TrainState, emergency: bool) -> str:
    if state.last_checkpoint is None:
        return "\nNo checkpoint was written yet"
    kind = "emergency checkpoint" if emergency else "last checkpoint"
    return f"\nThe work is kept: {kind} {checkpoint_where(state)}"


def _next_batch(ctx: RunContext, batch_iter, state: TrainState) -> dict:
    batch = next(batch_iter)
    if "error" in batch:
        raise DataError(batch["error"])
    for msg in batch["skipped"]:
        state.skipped_samples.append(msg)
        ctx.log.info(f"skipped an unreadable sample (data.on_error skip): {msg}")
        ctx.log.record("skipped", state.iteration + 1, {"error": msg})
    return batch


def _train_step(ctx: RunContext, step_model: nn.Module, batch_iter, state: TrainState) -> float:
    """One optimizer step over ``accum_steps`` micro-batches; returns the step's mean loss over
    all processes. A non-finite loss or gradient never reaches the weights: the step is skipped
    (``train.skip_nonfinite``) or the run stops naming the last finite checkpoint."""
    cfg, accum = ctx.cfg, ctx.cfg.train.accum_steps
    # Read the whole step first: a bad file then stops the run between steps, where it can be saved.
    batches = [_next_batch(ctx, batch_iter, state) for _ in range(accum)]
    buffers = [b.clone() for b in ctx.model.buffers()] if cfg.train.skip_nonfinite else None
    total = torch.zeros((), device=ctx.device)
    try:
        for micro, batch in enumerate(batches):
            image = batch["image"].to(ctx.device, non_blocking=True)
            mask = batch["mask"].to(ctx.device, non_blocking=True)
            if cfg.train.channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            # DDP: all-reduce gradients only on the last micro-batch.
            sync = (
                contextlib.nullcontext()
                if micro == accum - 1 or not ctx.info.enabled
                else step_model.no_sync()
            )
            with sync:
                with torch.autocast(
                    ctx.device.type, dtype=ctx.amp_dtype or torch.float32, enabled=ctx.amp_dtype is not None
                ):
                    loss = step_model(image, mask) / accum
                ctx.scaler.scale(loss).backward()
            total += loss.detach()
    except torch.OutOfMemoryError as e:
        raise OutOfMemoryError(
            f"out of {ctx.device.type} memory at iteration {state.iteration + 1} "
            f"({str(e).splitlines()[0]}). Try a smaller per-device batch (--train.accum_steps "
            f"{accum * 2} keeps the total batch), a smaller --data.crop_size, --train.amp bf16 (or "
            "fp16), or more GPUs."
        ) from None
    loss_value = float(all_reduce_mean(total, ctx.info))
    bad = _nonfinite_step(ctx, loss_value)
    if bad:
        _skip_or_stop(ctx, state, bad, buffers)
        return loss_value
    if cfg.optim.grad_clip:
        ctx.scaler.unscale_(ctx.optimizer)
        params = [p for g in ctx.optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
    ctx.scaler.step(ctx.optimizer)
    ctx.scaler.update()
    ctx.optimizer.zero_grad(set_to_none=True)
    ctx.scheduler.step()
    if ctx.ema is not None:
        ctx.ema.update(ctx.model)
    return loss_value


def _nonfinite_step(ctx: RunContext, loss_value: float) -> str:
    """What is non-finite in this step ("" if nothing). With a GradScaler (fp16) the scaler itself
    skips steps with non-finite gradients, as intended; otherwise they are checked here."""
    if not math.isfinite(loss_value):
        return f"loss is {loss_value}"
    if ctx.scaler.is_enabled():
        return ""
    grads = [p.grad for g in ctx.optimizer.param_groups for p in g["params"] if p.grad is not None]
    if grads and not bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()):
        return "the gradient is not finite"
    return ""


def _skip_or_stop(ctx: RunContext, state: TrainState, bad: str, buffers: list[torch.Tensor] | None) -> None:
    """Skip the step (undo its BatchNorm statistics, keep the schedule in step) while
    ``train.skip_nonfinite`` allows, else stop naming the last finite checkpoint."""
    it = state.iteration + 1
    if state.skipped_steps >= ctx.cfg.train.skip_nonfinite:
        allowed = ctx.cfg.train.skip_nonfinite
        raise DivergenceError(
            f"{bad} at iteration {it}; stopped before updating the weights"
            + (
                f" ({allowed} non-finite step(s) already skipped, train.skip_nonfinite {allowed})"
                if allowed
                else ""
            )
            + f". {last_finite(state)}. Try a lower --optim.lr, --train.amp off or --optim.grad_clip "
            "(resuming with a change needs --run.allow_changes [optim.lr])."
        )
    state.skipped_steps += 1
    ctx.optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        for b, saved in zip(ctx.model.buffers(), buffers or []):
            b.copy_(saved)
    ctx.scheduler.step()
    ctx.log.info(
        f"iteration {it}: {bad}; step skipped ({state.skipped_steps}/{ctx.cfg.train.skip_nonfinite})"
    )
    ctx.log.record("skipped_step", it, {"reason": bad})


def _maybe_evaluate(
    ctx: RunContext, state: TrainState, val_set: Dataset | None, final: bool = False
) -> Dataset | None:
    """Evaluate on the validation split (the EMA weights if enabled), log, keep ``best.pt``."""
    cfg = ctx.cfg
    if val_set is None:
        if not cfg.data.val_split:
            return None
        val_set = build_eval_dataset(cfg, cfg.data.val_split)
    if ctx.info.enabled:
        # BN running statistics differ per process after the last step; evaluate rank 0's (the
        # ones the checkpoint holds) everywhere.
        import torch.distributed as dist

        for b in ctx.model.buffers():
            dist.broadcast(b, 0)
    net = ctx.ema.module if ctx.ema is not None else ctx.model
    summaries = EvalSummaries(ctx.log.tb, val_set) if ctx.log.tb is not None else None
    metrics = evaluate(
        net, val_set, cfg.eval, ctx.device, amp_dtype=ctx.amp_dtype, progress=ctx.info.is_main,
        on_prediction=summaries.collect() if summaries else None, with_confusion=summaries is not None,
    )  # fmt: skip
    ctx.model.train()
    ctx.log.record("val", state.iteration, {k: metrics[k] for k in ("mIoU", "mAcc", "aAcc")})
    if summaries is not None:
        summaries.write(state.iteration, metrics)
        del metrics["confusion"]
    state.best["last_metrics"] = metrics
    if metrics["mIoU"] > state.best.get("mIoU", -1.0):
        state.best.update({"mIoU": metrics["mIoU"], "iteration": state.iteration})
        save_checkpoint(ctx, state, CKPT_BEST)
    ctx.log.info(
        f"iteration {state.iteration}: mIoU {metrics['mIoU']:.2f} (best {state.best['mIoU']:.2f} "
        f"at {state.best['iteration']})"
    )
    if final:
        # The papers report the final weights (last.pt); best.pt was chosen by looking at this split.
        ctx.log.info(
            f"final weights (last.pt, iteration {state.iteration}) on the {cfg.data.val_split!r} split:\n"
            f"{format_table(metrics)}\nbest.pt: iteration {state.best['iteration']}, selected on this same "
            "split, so its figure is optimistic; report the final weights' figures"
        )
        if ctx.info.is_main:
            write_text(
                ctx.work_dir / FINAL_METRICS, json.dumps(metrics, indent=1), "the final metrics",
                "run the same command again: it evaluates the final weights again and writes them",
            )  # fmt: skip
    return val_set


def _progress(cfg: Config, state: TrainState, info: DistInfo):
    from tqdm import tqdm

    return tqdm(
        total=cfg.train.iters, initial=state.iteration, disable=not info.is_main, desc="train",
        unit="it", dynamic_ncols=True, mininterval=1.0,
    )  # fmt: skip
