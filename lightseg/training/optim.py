"""AdamW parameter groups and the warm-up + poly schedule of the CGRSeg recipe (SPEC 1.6).

The original (mmcv ``DefaultOptimizerConstructor`` with ``custom_keys`` ``{'absolute_pos_embed':
decay 0, 'head': lr x10, 'norm': decay 0}``) tests each key as a *substring of the full parameter
name*, longest key first and the first match wins. With mmseg's names (``decode_head.*``,
``backbone.*``) that gives:
- every decode-head parameter: lr x10, normal weight decay (its norms too: "head" matches first);
- backbone parameters containing "talking_head" (EfficientFormerV2's talking-head convs): lr x10 —
  a side effect of the substring rule, kept as the faithful default (``head_substring_rule``);
- other backbone parameters containing "norm": no weight decay;
- everything else: lr x1, normal decay.
Our decode head is ``head.*``, which contains "head" just like ``decode_head.*``, so the same rule
on our names gives the same groups.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

# mmcv sorts custom keys alphabetically, then by length (longest first); first match wins.
_ORIGINAL_KEYS: tuple[tuple[str, float, float], ...] = (
    # (substring, lr_mult, decay_mult)
    ("absolute_pos_embed", 1.0, 0.0),
    ("head", 10.0, 1.0),
    ("norm", 1.0, 0.0),
)


def param_multipliers(
    name: str, head_lr_mult: float = 10.0, head_substring_rule: bool = True
) -> tuple[float, float]:
    """``(lr_mult, decay_mult)`` of a parameter from its full name (SPEC 1.6)."""
    for key, lr_mult, decay_mult in _ORIGINAL_KEYS:
        hit = key in name if (key != "head" or head_substring_rule) else name.startswith("head.")
        if hit:
            return (head_lr_mult if key == "head" else lr_mult), decay_mult
    return 1.0, 1.0


def build_param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    head_lr_mult: float = 10.0,
    head_substring_rule: bool = True,
) -> list[dict]:
    """Parameter groups for AdamW, one per distinct ``(lr_mult, decay_mult)``.

    Each group carries ``lr``, ``weight_decay``, ``lr_mult``, ``decay_mult`` and ``names`` (the
    parameter names, for logs and tests). Frozen parameters are left out.
    """
    groups: dict[tuple[float, float], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lr_mult, decay_mult = param_multipliers(name, head_lr_mult, head_substring_rule)
        g = groups.setdefault(
            (lr_mult, decay_mult),
            {
                "params": [],
                "names": [],
                "lr": lr * lr_mult,
                "weight_decay": weight_decay * decay_mult,
                "lr_mult": lr_mult,
                "decay_mult": decay_mult,
            },
        )
        g["params"].append(p)
        g["names"].append(name)
    return list(groups.values())


def build_optimizer(model: nn.Module, lr: float, betas, weight_decay: float, **rule) -> torch.optim.AdamW:
    """AdamW over :func:`build_param_groups` (``rule``: ``head_lr_mult``, ``head_substring_rule``)."""
    groups = build_param_groups(model, lr, weight_decay, **rule)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay)


def poly_warmup_factor(
    it: int,
    max_iters: int,
    base_lr: float,
    warmup_iters: int,
    warmup_ratio: float,
    power: float,
    min_lr: float,
) -> float:
    """lr(it) / base_lr for iteration ``it`` (0-based, the number of finished iterations).

    mmcv ``PolyLrUpdaterHook`` (``by_epoch=False``): ``regular = (base - min_lr)(1 - it/max)^power +
    min_lr``; during linear warm-up (``it < warmup_iters``) the *regular* lr is scaled by
    ``1 - (1 - it/warmup_iters)(1 - warmup_ratio)``, so iteration 0 uses ``regular * warmup_ratio``.
    """
    regular = (base_lr - min_lr) * (1 - min(it, max_iters) / max_iters) ** power + min_lr
    if it < warmup_iters:
        regular *= 1 - (1 - it / warmup_iters) * (1 - warmup_ratio)
    return regular / base_lr if base_lr else 0.0


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    max_iters: int,
    warmup_iters: int,
    warmup_ratio: float,
    power: float,
    min_lr: float,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration LambdaLR (``scheduler.step()`` once per optimizer step); ``min_lr`` is absolute
    for every group, as in mmcv."""

    def factor(base_lr: float) -> Callable[[int], float]:
        return lambda it: poly_warmup_factor(
            it, max_iters, base_lr, warmup_iters, warmup_ratio, power, min_lr
        )

    fns = [factor(g["lr"]) for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fns)


def describe_groups(optimizer: torch.optim.Optimizer) -> str:
    """One line per group: count, lr multiplier, weight decay — for the run log."""
    lines = []
    for g in optimizer.param_groups:
        n = len(g.get("names", g["params"]))
        lines.append(f"{n:4d} params  lr x{g['lr_mult']:g}  weight_decay {g['weight_decay']:g}")
    return "\n".join(lines)
