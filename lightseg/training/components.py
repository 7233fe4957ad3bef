"""What a run is made of, built from its config: the training split, the model, the loss, the
optimizer and schedule, the autocast dtype and the per-process batch."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from lightseg.checkpoint import with_classes
from lightseg.config import Config
from lightseg.errors import ConfigError, WeightsNotFoundError
from lightseg.losses import SegLoss, build_seg_loss
from lightseg.training import optim as optim_lib
from lightseg.training import preflight
from lightseg.training.distributed import DistInfo
from lightseg.training.runlog import RunLog


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


def model_from_config(cfg: Config, num_classes: int) -> tuple[nn.Module, str]:
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


class TrainForward(nn.Module):
    """Model + loss as one module: DDP only hooks ``forward``, and wrapping both makes DDP also
    all-reduce the gradients of the loss's own parameters (the contrastive projection head)."""

    def __init__(self, model: nn.Module, loss_fn: SegLoss):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        total, _ = self.loss_fn(self.model.forward_train(x), mask)
        return total


def record_labels(model: nn.Module, dataset: Dataset) -> None:
    """The dataset's class names and palette go into the model's metadata (and its checkpoints).
    A model built by hand (no ``meta``) is left as it is."""
    meta = getattr(model, "meta", None)
    if meta is not None:
        model.meta = with_classes(meta, getattr(dataset, "classes", None), getattr(dataset, "palette", None))


def place_model(model: nn.Module, info: DistInfo, device: torch.device, log: RunLog) -> nn.Module:
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


def micro_batch_size(cfg: Config, info: DistInfo) -> int:
    per_step = info.world_size * cfg.train.accum_steps
    if cfg.train.batch_size % per_step:
        raise ConfigError(
            f"train.batch_size {cfg.train.batch_size} must be a multiple of processes x accum_steps = "
            f"{info.world_size} x {cfg.train.accum_steps} = {per_step}"
        )
    return cfg.train.batch_size // per_step


def skips_bad_samples(cfg: Config) -> bool:
    if cfg.data.on_error not in ("fail", "skip"):
        raise ConfigError(f"data.on_error must be fail or skip, got {cfg.data.on_error!r}")
    return cfg.data.on_error == "skip"


def build_optimizer(cfg: Config, model: nn.Module, loss_fn: SegLoss) -> torch.optim.AdamW:
    """AdamW with the recipe's parameter groups, plus the loss's own training-only parameters (the
    contrastive projection head) at the base lr with normal decay."""
    o = cfg.optim
    optimizer = optim_lib.build_optimizer(
        model, o.lr, o.betas, o.weight_decay,
        head_lr_mult=o.head_lr_mult, head_substring_rule=o.head_substring_rule,
    )  # fmt: skip
    for group in optim_lib.build_param_groups(loss_fn, o.lr, o.weight_decay):
        group["names"] = [f"loss.{n}" for n in group["names"]]
        optimizer.add_param_group(group)
    return optimizer


def build_scheduler(cfg: Config, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """The warm-up + poly schedule of ``cfg.schedule`` over ``train.iters`` steps."""
    s = cfg.schedule
    return optim_lib.build_scheduler(
        optimizer, cfg.train.iters, s.warmup_iters, s.warmup_ratio, s.power, s.min_lr
    )
