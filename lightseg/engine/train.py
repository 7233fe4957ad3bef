"""The training loop: ``lightseg train RECIPE.yaml [--section.field value ...]``.

Iteration-based, as the papers' mmseg runs: every step draws ``train.batch_size`` crops (over all
processes and accumulation steps), computes the cross-entropy on the final logits upsampled to the
label size (plus an optional pixel contrastive term), and takes one AdamW step with the SPEC 1.6
parameter groups and the warm-up + poly schedule. The same command runs on one CPU, one GPU or under
``torchrun`` (DDP, SyncBN on CUDA). Checkpoints are atomic and hold everything needed to continue the
very same run (``run.resume``).

Read top to bottom: ``train`` sets up, ``_train_step`` is one optimizer step, ``_save`` writes a
checkpoint, ``_maybe_evaluate`` runs the periodic evaluation.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset

from lightseg.checkpoint import with_classes
from lightseg.config import Config, save_config
from lightseg.data.base import set_max_image_pixels
from lightseg.engine import optim as optim_lib
from lightseg.engine import preflight
from lightseg.engine.evaluate import build_eval_dataset, eval_transform, evaluate
from lightseg.engine.resume import (
    CKPT_BEST,
    CKPT_LAST,
    CKPT_PREVIOUS,
    FINAL_METRICS,
    apply_hyperparameters,
    candidates,
    check_same_run,
    nonfinite_state,
    previous_checkpoints,
    refuse_other_run,
)
from lightseg.engine.runtime import (
    DistInfo,
    GuardedSamples,
    ModelEMA,
    ResumableBatches,
    all_reduce_mean,
    atomic_save,
    collate,
    init_distributed,
    load_train_checkpoint,
    rng_state,
    seed_everything,
    set_rng_state,
)
from lightseg.engine.tensorboard import EvalSummaries
from lightseg.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DivergenceError,
    OutOfMemoryError,
    WeightsNotFoundError,
)
from lightseg.losses import SegLoss, build_seg_loss
from lightseg.meta import META_KEY
from lightseg.metrics import format_table

# The loss, a gradient or the saved state became NaN/inf; the message names the last finite checkpoint.
TrainingDiverged = DivergenceError


@dataclass
class TrainState:
    """What the loop carries between steps (and what a checkpoint restores)."""

    iteration: int = 0
    best: dict[str, Any] = field(default_factory=dict)  # {"mIoU": ..., "iteration": ...}
    last_checkpoint: Path | None = None
    last_iteration_saved: int = 0
    last_pt_iteration: int | None = None  # what <work_dir>/last.pt holds, when known
    skipped_steps: int = 0  # non-finite steps skipped (train.skip_nonfinite)
    skipped_samples: list[str] = field(default_factory=list)  # unreadable samples (data.on_error skip)


# ----------------------------------------------------------------------------------------------
# Building blocks


def build_train_dataset(cfg: Config) -> Dataset:
    """The training split with the SPEC 1.6 pipeline (resize x ratio, cat-max-ratio crop, flip,
    photometric distortion, normalise, pad)."""
    from lightseg.data.transforms import build_train_transform

    d = cfg.data
    transform = build_train_transform(
        crop_size=tuple(d.crop_size),
        scale=tuple(d.scale),
        ratio_range=tuple(d.ratio_range),
        cat_max_ratio=d.cat_max_ratio,
    )
    return preflight.open_split(cfg, "train_split", transform)


def build_model(cfg: Config, num_classes: int) -> tuple[nn.Module, str]:
    """The model and a line saying where its initial weights came from."""
    from lightseg.models.build import create_model

    m = cfg.model
    kwargs = dict(m.kwargs)
    pretrained = kwargs.pop("pretrained", m.pretrained)  # configs written before model.pretrained
    try:
        model = create_model(m.name, num_classes, weights=m.weights, pretrained=pretrained, **kwargs)
    except WeightsNotFoundError as e:
        raise WeightsNotFoundError(
            f"{e}\n(in a run: --model.weights FILE, or --model.pretrained false to start from random "
            "initialisation)"
        ) from e
    return model, preflight.describe_initial_weights(cfg, model)


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: ``auto`` is bf16 (else fp16) on CUDA and off on CPU."""
    if amp not in ("auto", "off", "bf16", "fp16"):
        raise ConfigError(f"train.amp must be auto, off, bf16 or fp16, got {amp!r}")
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def build_loss(cfg: Config, model: nn.Module, ignore_index: int) -> SegLoss:
    """CE on the final logits upsampled to the label size (SPEC 1.2.7), plus
    ``train.contrastive_weight`` x the pixel contrastive loss when the weight is positive. The
    contrastive projection head lives in the loss, so inference models never carry it (SPEC 2.2)."""
    weight = cfg.train.contrastive_weight
    loss_fn = build_seg_loss(
        model,
        contrastive_weight=weight,
        ignore_index=ignore_index,
        avg_non_ignore=cfg.train.avg_non_ignore,
        seed=cfg.run.seed,
    )
    if weight > 0 and loss_fn.contrastive is None:
        raise ConfigError(
            f"train.contrastive_weight is {weight} but {cfg.model.name} gives no embedding features "
            "(its head has no embed_channels); set --train.contrastive_weight 0"
        )
    return loss_fn


class _TrainForward(nn.Module):
    """Model + loss as one module: DDP only hooks ``forward``, and wrapping both makes DDP also
    all-reduce the gradients of the loss's own parameters (the contrastive projection head)."""

    def __init__(self, model: nn.Module, loss_fn: SegLoss):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        total, _ = self.loss_fn(self.model.forward_train(x), mask)
        return total


def _record_labels(model: nn.Module, dataset: Dataset) -> None:
    """The dataset's class names and palette go into the model's metadata (and its checkpoints).
    A model built by hand (no ``meta``) is left as it is."""
    meta = getattr(model, "meta", None)
    if meta is not None:
        model.meta = with_classes(meta, getattr(dataset, "classes", None), getattr(dataset, "palette", None))


def _meta_json(model: nn.Module) -> str | None:
    meta = getattr(model, "meta", None)
    return None if meta is None else meta.to_json()


class RunLog:
    """Rank 0's outputs: ``log.jsonl`` (one JSON object per record), TensorBoard events if
    available, and messages above the progress bar. Other ranks write nothing.

    ``start`` is the iteration the run continues from: records after it (written by the
    interrupted process after its last checkpoint) are dropped, so the log never holds an
    iteration twice."""

    def __init__(self, work_dir: Path, info: DistInfo, tensorboard: bool, start: int = 0):
        self.main = info.is_main
        self.tb = None
        if not self.main:
            return
        work_dir.mkdir(parents=True, exist_ok=True)
        _truncate_log(work_dir / "log.jsonl", start)
        self.jsonl = open(work_dir / "log.jsonl", "a")  # noqa: SIM115 - closed in close()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(work_dir / "tb"), purge_step=start + 1 if start else None)
            except ImportError:
                self.info("tensorboard is not installed; logging to log.jsonl only")

    def info(self, msg: str) -> None:
        if self.main:
            from tqdm import tqdm

            tqdm.write(msg)

    def record(self, kind: str, iteration: int, values: dict[str, Any]) -> None:
        if not self.main:
            return
        self.jsonl.write(json.dumps({"kind": kind, "iter": iteration, **values}) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{kind}/{k}", v, iteration)

    def close(self) -> None:
        if self.main:
            self.jsonl.close()
            if self.tb is not None:
                self.tb.close()


def _truncate_log(path: Path, start: int) -> None:
    """Keep the records up to iteration ``start`` (a torn last line of a killed run goes too)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("iter", 0) <= start:
            kept.append(line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# The loop


def train(
    cfg: Config,
    *,
    model: nn.Module | None = None,
    train_set: Dataset | None = None,
    val_set: Dataset | None = None,
) -> dict[str, Any]:
    """Train as ``cfg`` says; returns ``{"iteration", "best", "metrics", "work_dir"}``.

    ``model`` / ``train_set`` / ``val_set`` replace what the config would build (tests, notebooks).
    ``val_set`` of ``None`` builds the configured validation split when evaluation is due.
    """
    preflight.check_config(cfg)
    info, device = init_distributed(cfg.run.device)
    work_dir, dir_note = preflight.resolve_work_dir(cfg, info)
    cfg.run.work_dir = str(work_dir)
    set_max_image_pixels(cfg.data.max_image_pixels)
    seed_everything(cfg.run.seed + info.rank)

    # Every split the run uses is opened (and checked) before anything is written or trained.
    train_set = train_set if train_set is not None else build_train_dataset(cfg)
    if val_set is None and cfg.data.val_split:
        val_set = preflight.open_split(cfg, "val_split", eval_transform(cfg))
    preflight.check_classes(train_set, val_set, model)

    ckpt, resume_from, notes = _load_resume(cfg, work_dir, info)
    changes = check_same_run(ckpt["config"], cfg, ckpt["iteration"], resume_from) if ckpt else {}
    evaluates = val_set is not None or bool(cfg.data.val_split)
    complete = (
        ckpt
        and ckpt["iteration"] == cfg.train.iters
        and (not evaluates or (work_dir / FINAL_METRICS).is_file())
    )
    num_classes = int(getattr(train_set, "num_classes", 0) or getattr(model, "num_classes", 0))
    ignore_index = int(getattr(train_set, "ignore_index", 255))
    if ckpt and not complete:
        _check_classes(ckpt, num_classes, resume_from)
    if model is None and not complete:  # built (weights fetched) before the run directory exists
        model, weights_note = build_model(cfg, num_classes)
        notes.append(weights_note)
    log = RunLog(work_dir, info, cfg.run.tensorboard, start=ckpt["iteration"] if ckpt else 0)
    for note in [dir_note, *notes]:
        if note:
            log.info(note)
    if complete:
        return _already_complete(ckpt, resume_from, work_dir, log)  # else only the final evaluation is due
    preflight.record_split(train_set, work_dir, info.is_main)
    _record_labels(model, train_set)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = _prepare_model(model, info, device, log)

    micro_batch = _micro_batch(cfg, info)
    loss_fn = build_loss(cfg, model, ignore_index).to(device)
    optimizer = optim_lib.build_optimizer(
        model, cfg.optim.lr, cfg.optim.betas, cfg.optim.weight_decay,
        head_lr_mult=cfg.optim.head_lr_mult, head_substring_rule=cfg.optim.head_substring_rule,
    )  # fmt: skip
    # Training-only loss parameters (the contrastive projection head): base lr, normal decay.
    for group in optim_lib.build_param_groups(loss_fn, cfg.optim.lr, cfg.optim.weight_decay):
        group["names"] = [f"loss.{n}" for n in group["names"]]
        optimizer.add_param_group(group)
    s = cfg.schedule
    scheduler = optim_lib.build_scheduler(
        optimizer, cfg.train.iters, s.warmup_iters, s.warmup_ratio, s.power, s.min_lr
    )
    amp_dtype = resolve_amp(cfg.train.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    ema = ModelEMA(model, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None

    state, saved_rng = TrainState(), None
    if ckpt:
        _restore(ckpt, resume_from, model, loss_fn, optimizer, scheduler, scaler, ema)
        state, saved_rng = _resumed_state(ckpt, resume_from, work_dir, info, log)
        if changes:
            apply_hyperparameters(optimizer, scheduler, cfg)
            log.info("resumed with changes (run.allow_changes):\n" + _describe(changes))
        log.record("resume", state.iteration, {"from": str(resume_from), "changes": _jsonable(changes)})
    if info.is_main:
        save_config(cfg, work_dir / "config.yaml")
        log.info(f"run directory: {work_dir}\nparameter groups:\n{optim_lib.describe_groups(optimizer)}")

    step_model: nn.Module = _TrainForward(model, loss_fn)
    if info.enabled:
        ids = [device.index] if device.type == "cuda" else None
        step_model = DDP(step_model, device_ids=ids, find_unused_parameters=cfg.train.find_unused_parameters)
    batches = ResumableBatches(
        len(train_set), micro_batch, cfg.train.accum_steps, cfg.run.seed, info, state.iteration
    )
    loader = DataLoader(
        GuardedSamples(train_set, skip=_skip_bad_samples(cfg)), batch_sampler=batches,
        num_workers=cfg.data.num_workers, collate_fn=collate, pin_memory=device.type == "cuda",
        persistent_workers=cfg.data.num_workers > 0,
    )  # fmt: skip
    batch_iter = iter(loader)  # created before restoring the RNG: its base seed draw must not shift it
    if saved_rng is not None:
        set_rng_state(saved_rng)

    ctx = _Context(
        cfg, info, device, work_dir, log, model, loss_fn, optimizer, scheduler, scaler, ema, amp_dtype
    )
    bar = _progress(cfg, state, info)
    t0, seen = time.perf_counter(), 0
    model.train()
    while state.iteration < cfg.train.iters:
        loss = _guarded_step(ctx, step_model, batch_iter, state)
        state.iteration += 1
        seen += cfg.train.batch_size
        lr = optimizer.param_groups[0]["lr"] / optimizer.param_groups[0]["lr_mult"]
        img_s = seen / (time.perf_counter() - t0)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{img_s:.1f}")
        if state.iteration % cfg.train.log_interval == 0 or state.iteration == cfg.train.iters:
            log.record("train", state.iteration, {"loss": loss, "lr": lr, "img_per_s": img_s})
        if state.iteration % cfg.train.ckpt_interval == 0 or state.iteration == cfg.train.iters:
            _save(ctx, state, CKPT_LAST)
        if (
            cfg.eval.interval
            and state.iteration % cfg.eval.interval == 0
            and state.iteration < cfg.train.iters
        ):
            val_set = _maybe_evaluate(ctx, state, val_set)
    bar.close()
    result = {"iteration": state.iteration, "best": state.best, "work_dir": str(work_dir), "metrics": None}
    val_set = _maybe_evaluate(ctx, state, val_set, final=True)
    result["metrics"] = state.best.get("last_metrics")
    result["best"] = {k: v for k, v in state.best.items() if k != "last_metrics"}
    result["skipped"] = state.skipped_samples
    if state.skipped_samples:
        log.info(
            f"{len(state.skipped_samples)} unreadable sample(s) skipped:\n  "
            + "\n  ".join(state.skipped_samples)
        )
    log.close()
    return result


@dataclass
class _Context:
    """The objects one step and one checkpoint need (so that helper signatures stay short)."""

    cfg: Config
    info: DistInfo
    device: torch.device
    work_dir: Path
    log: RunLog
    model: nn.Module
    loss_fn: SegLoss
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    ema: ModelEMA | None
    amp_dtype: torch.dtype | None


def _guarded_step(ctx: _Context, step_model: nn.Module, batch_iter, state: TrainState) -> float:
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


def _save_before_stopping(ctx: _Context, state: TrainState) -> bool:
    """An emergency checkpoint of the steps done since the last one (the weights are those of the
    last finished step); whether one was written. Not under DDP: the other processes cannot join
    a save."""
    if ctx.info.enabled or state.iteration == state.last_iteration_saved:
        return False
    _save(ctx, state, CKPT_LAST)
    return True


def _saved_note(state: TrainState, emergency: bool) -> str:
    if state.last_checkpoint is None:
        return "\nNo checkpoint was written yet"
    kind = "emergency checkpoint" if emergency else "last checkpoint"
    return f"\nThe work is kept: {kind} {_checkpoint_where(state)}"


def _next_batch(ctx: _Context, batch_iter, state: TrainState) -> dict:
    batch = next(batch_iter)
    if "error" in batch:
        raise DataError(batch["error"])
    for msg in batch["skipped"]:
        state.skipped_samples.append(msg)
        ctx.log.info(f"skipped an unreadable sample (data.on_error skip): {msg}")
        ctx.log.record("skipped", state.iteration + 1, {"error": msg})
    return batch


def _train_step(ctx: _Context, step_model: nn.Module, batch_iter, state: TrainState) -> float:
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


def _nonfinite_step(ctx: _Context, loss_value: float) -> str:
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


def _skip_or_stop(ctx: _Context, state: TrainState, bad: str, buffers: list[torch.Tensor] | None) -> None:
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
            + f". {_last_finite(state)}. Try a lower --optim.lr, --train.amp off or --optim.grad_clip "
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


def _last_finite(state: TrainState) -> str:
    return f"Last finite checkpoint: {_checkpoint_where(state) or 'none written yet'}"


def _checkpoint_where(state: TrainState) -> str | None:
    """The last checkpoint written and its iteration, e.g. ``runs/x/last.pt at iteration 2``."""
    if state.last_checkpoint is None:
        return None
    return f"{state.last_checkpoint} at iteration {state.last_iteration_saved}"


def _save(ctx: _Context, state: TrainState, name: str) -> None:
    """Atomic checkpoint (rank 0 writes; every rank contributes its RNG state). Only finite state
    is saved: a NaN or inf anywhere stops the run instead. ``last.pt`` keeps its predecessors
    (``train.keep_checkpoints``) as fallbacks."""
    rngs = [rng_state()]
    if ctx.info.enabled:
        import torch.distributed as dist

        rngs = [None] * ctx.info.world_size
        dist.all_gather_object(rngs, rng_state())
    ckpt = {
        "format": "lightseg-train",
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
            f"or inf: {shown}); not saved. {_last_finite(state)}. Try a lower --optim.lr or --optim.grad_clip "
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


def _maybe_evaluate(
    ctx: _Context, state: TrainState, val_set: Dataset | None, final: bool = False
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
        _save(ctx, state, CKPT_BEST)
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
            (ctx.work_dir / FINAL_METRICS).write_text(json.dumps(metrics, indent=1))
    return val_set


# ----------------------------------------------------------------------------------------------
# Resuming


def _load_resume(cfg: Config, work_dir: Path, info: DistInfo) -> tuple[dict | None, Path | None, list[str]]:
    """The checkpoint this run continues (``run.resume``), its path, and notes for the log.

    ``auto`` takes the newest readable checkpoint of ``work_dir`` (a corrupt ``last.pt`` is set
    aside as ``last.pt.corrupt`` with a warning). A new run never starts over another run's files."""
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
            failed[0].replace(failed[0].with_name(CKPT_LAST + ".corrupt"))
            notes.append(f"warning: set the unreadable {CKPT_LAST} aside as {CKPT_LAST}.corrupt")
        return ckpt, path, notes
    if failed:
        raise CheckpointError(
            f"no readable checkpoint in {work_dir}:\n" + "\n".join(notes) + "\nUse another --run.work_dir or "
            "--resume PATH."
        )
    if (work_dir / CKPT_BEST).is_file() or (work_dir / FINAL_METRICS).is_file():
        refuse_other_run(work_dir, "starting a new run there (it has no last.pt to resume)")
    return None, None, []


def _already_complete(ckpt: dict, path: Path, work_dir: Path, log: RunLog) -> dict[str, Any]:
    log.info(
        f"{path} is at iteration {ckpt['iteration']} = train.iters: this run is complete, nothing to train "
        "(to train longer: --train.iters N --run.allow_changes [train.iters])."
    )
    log.close()
    final = work_dir / FINAL_METRICS
    metrics = json.loads(final.read_text()) if final.is_file() else None
    return {"iteration": ckpt["iteration"], "best": dict(ckpt.get("best", {})), "work_dir": str(work_dir),
            "metrics": metrics, "skipped": []}  # fmt: skip


def _check_classes(ckpt: dict, num_classes: int, path: Path) -> None:
    saved = int(ckpt.get("num_classes") or 0)
    if saved and num_classes and saved != num_classes:
        raise ConfigError(
            f"cannot resume {path}: its model predicts {saved} classes, the dataset has {num_classes}. "
            "Start a new run in another --run.work_dir (or use --model.weights to initialise from it)."
        )


def _restore(ckpt, path, model, loss_fn, optimizer, scheduler, scaler, ema) -> None:
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


def _resumed_state(
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


def _describe(changes: dict[str, tuple[Any, Any]]) -> str:
    return "\n".join(f"  {k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())


def _jsonable(changes: dict[str, tuple[Any, Any]]) -> dict[str, list]:
    return {k: [old, new] for k, (old, new) in changes.items()}


def _skip_bad_samples(cfg: Config) -> bool:
    if cfg.data.on_error not in ("fail", "skip"):
        raise ConfigError(f"data.on_error must be fail or skip, got {cfg.data.on_error!r}")
    return cfg.data.on_error == "skip"


# ----------------------------------------------------------------------------------------------
# Setup helpers


def _prepare_model(model: nn.Module, info: DistInfo, device: torch.device, log: RunLog) -> nn.Module:
    """SyncBN across processes on CUDA; plain per-process BN where SyncBN cannot run (CPU/gloo)."""
    if info.enabled:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            log.info(f"{info.world_size} processes: DDP with SyncBatchNorm")
        else:
            log.info(
                f"{info.world_size} processes on CPU (gloo): SyncBatchNorm needs CUDA, so BatchNorm "
                "statistics are per process (plain BN fallback)"
            )
    return model.to(device)


def _micro_batch(cfg: Config, info: DistInfo) -> int:
    per_step = info.world_size * cfg.train.accum_steps
    if cfg.train.batch_size % per_step:
        raise ConfigError(
            f"train.batch_size {cfg.train.batch_size} must be a multiple of processes x accum_steps = "
            f"{info.world_size} x {cfg.train.accum_steps} = {per_step}"
        )
    return cfg.train.batch_size // per_step


def _progress(cfg: Config, state: TrainState, info: DistInfo):
    from tqdm import tqdm

    return tqdm(
        total=cfg.train.iters, initial=state.iteration, disable=not info.is_main, desc="train",
        unit="it", dynamic_ncols=True, mininterval=1.0,
    )  # fmt: skip
