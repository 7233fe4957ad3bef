"""Multiply-accumulate (MAC) counting with two named conventions.

Every figure this module returns is in **MACs** (one multiply-accumulate = 1), never in
"2 FLOPs per MAC" units; ``gmacs_*`` values are MACs / 1e9. The papers call the same number
"GFLOPs".

Conventions
-----------
``"paper"``
    What CGRSeg, SegFormer, SeaFormer, ... report: the module-hook counter of mmcv 1.x
    (``mmcv.cnn.get_model_complexity_info``, a fork of ``ptflops``), reproduced formula for
    formula. A forward hook on each instance of the modules below adds, per call:

    ============================================  ==========================================
    ``nn.Conv1d/2d/3d``                            ``k_prod * C_in * C_out / groups * N * out_spatial``
                                                   ``+ C_out * N * out_spatial`` if it has a bias
    ``nn.ConvTranspose2d``                         ``kh * kw * C_in * C_out / groups * N * H_in * W_in``
                                                   ``+ C_out * N * H_out * H_out`` if bias (sic: mmcv
                                                   multiplies by ``H_out`` twice; kept for parity)
    ``nn.Linear``                                  ``numel(input) * out_features`` (bias not counted)
    ``nn.BatchNorm1d/2d/3d``, ``GroupNorm``,        ``numel(input)``, doubled when the norm has an
    ``InstanceNorm1d/2d/3d``, ``LayerNorm``         affine transform
    ``nn.ReLU``, ``ReLU6``, ``LeakyReLU``,          ``numel(output)``
    ``PReLU``, ``ELU``
    ``nn.{Max,Avg}Pool1d/2d/3d`` and their          ``numel(input)``
    ``Adaptive`` forms
    ``nn.Upsample``                                 ``numel(output)``
    ============================================  ==========================================

    Nothing else is seen: **not** GELU, SiLU, Sigmoid, Hardsigmoid, Softmax, Dropout, functional
    calls (``F.interpolate``, ``F.conv2d``, ``F.adaptive_avg_pool2d``, ``torch.matmul``,
    ``@``, ``einsum``, softmax, SDPA) and elementwise arithmetic. In particular the attention
    matrix products ``q @ k^T`` and ``attn @ v`` are invisible to it. A module called twice is
    counted twice. One deliberate difference: mmcv matches exact types, we match subclasses
    too (``isinstance``), so that e.g. ``nn.SyncBatchNorm`` or a ``Conv2d`` subclass counts the
    same as the plain layer.

``"all"``
    Every matrix product and convolution the model executes, wherever it is called from
    (module or function: convolutions, ``linear``/``addmm``, ``mm``/``bmm``/``matmul``/
    ``einsum``, scaled-dot-product attention), counted at the ATen dispatcher by
    :class:`torch.utils.flop_counter.FlopCounterMode` and halved (it counts 2 FLOPs per MAC),
    **plus** the per-element terms of the paper convention (convolution bias, norms, the listed
    activations, pooling, ``nn.Upsample``). So ``all >= paper`` term by term, and the
    difference is exactly the matrix products that module hooks cannot see. Elementwise ops
    outside the paper's list (GELU, sigmoid, softmax, residual adds, ``F.interpolate``) are in
    neither convention.

Against the published figures: with 150 classes at 512x512 the ``paper`` convention gives
CGRSeg-T/B/L 4.07 / 7.79 / 15.09 G (published 4.0 / 7.6 / 14.9) and ``all`` gives
4.65 / 8.78 / 16.42 G. The remaining gap is the backbone's BatchNorms: the official
EfficientFormerV2 converts them to ``SyncBatchNorm`` when it loads ImageNet weights, and mmcv's
exact-type matching then skips them (T 0.074, B 0.113, L 0.179 G); without them the count is
4.00 / 7.68 / 14.91 G. We count every norm, as the counter means to.

Counting runs one forward pass in eval mode under ``torch.no_grad()`` on whatever device the
model lives on. :func:`profile_model` builds registered models on the ``meta`` device (no
memory, no arithmetic: only shapes), which gives the same numbers as a real run because no
counted quantity depends on tensor values; it falls back to the CPU if a model cannot run
on ``meta``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from lightseg.errors import ConfigError

Convention = Literal["paper", "all"]
CONVENTIONS: tuple[str, ...] = ("paper", "all")
# The keys of ``lightseg flops MODEL --format json`` (a stable interface).
FLOPS_JSON_KEYS: tuple[str, ...] = ("params", "params_backbone", "params_head", "gmacs_paper", "gmacs_all")


@dataclass
class _Tally:
    """Running sums of one counting pass.

    ``total`` is the paper-convention count; ``matmul`` is the part of it that the dispatcher
    also sees (convolution / linear weight MACs, without bias), so it can be swapped for the
    dispatcher's count in the ``all`` convention without counting anything twice.
    """

    total: int = 0
    matmul: int = 0


# ---- per-module formulas of mmcv 1.x ``flops_counter.py`` -------------------------------------
# Each returns (macs, of which weight-matmul macs).


def _conv(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> tuple[int, int]:
    n = inp[0].shape[0]
    positions = n * math.prod(out.shape[2:])
    weight = math.prod(m.kernel_size) * m.in_channels * (m.out_channels // m.groups) * positions
    bias = m.out_channels * positions if m.bias is not None else 0
    return weight + bias, weight


def _deconv(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> tuple[int, int]:
    x = inp[0]
    kh, kw = m.kernel_size
    weight = kh * kw * m.in_channels * (m.out_channels // m.groups) * x.shape[0] * x.shape[2] * x.shape[3]
    # mmcv multiplies the output height by itself here (not by the width); kept for parity.
    bias = m.out_channels * x.shape[0] * out.shape[2] * out.shape[2] if m.bias is not None else 0
    return weight + bias, weight


def _linear(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> tuple[int, int]:
    macs = inp[0].numel() * out.shape[-1]
    return macs, macs


def _norm(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> tuple[int, int]:
    affine = getattr(m, "affine", False) or getattr(m, "elementwise_affine", False)
    return inp[0].numel() * (2 if affine else 1), 0


def _output_numel(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> tuple[int, int]:
    return out.numel(), 0


def _input_numel(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> tuple[int, int]:
    return inp[0].numel(), 0


_Formula = Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], tuple[int, int]]

# Order matters: ConvTranspose is not a Conv subclass in torch, but keep the specific first.
_PAPER_RULES: tuple[tuple[tuple[type[nn.Module], ...], _Formula], ...] = (
    ((nn.ConvTranspose2d,), _deconv),
    ((nn.Conv1d, nn.Conv2d, nn.Conv3d), _conv),
    ((nn.Linear,), _linear),
    (
        (
            nn.modules.batchnorm._BatchNorm,  # BatchNorm1d/2d/3d, SyncBatchNorm
            nn.GroupNorm,
            nn.modules.instancenorm._InstanceNorm,
            nn.LayerNorm,
        ),
        _norm,
    ),
    ((nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU), _output_numel),
    (
        (
            nn.MaxPool1d,
            nn.MaxPool2d,
            nn.MaxPool3d,
            nn.AvgPool1d,
            nn.AvgPool2d,
            nn.AvgPool3d,
            nn.AdaptiveMaxPool1d,
            nn.AdaptiveMaxPool2d,
            nn.AdaptiveMaxPool3d,
            nn.AdaptiveAvgPool1d,
            nn.AdaptiveAvgPool2d,
            nn.AdaptiveAvgPool3d,
        ),
        _input_numel,
    ),
    ((nn.Upsample,), _output_numel),
)


def _formula_for(m: nn.Module) -> _Formula | None:
    for types, formula in _PAPER_RULES:
        if isinstance(m, types):
            return formula
    return None


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    # FlopCounterMode knows the CUDA SDPA kernels but not the CPU flash kernel that
    # F.scaled_dot_product_attention picks on CPU; same formula (2 per MAC).
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _custom_flop_formulas() -> dict[Any, Callable[..., int]]:
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return {op: _sdpa_cpu_flops} if op is not None else {}


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.float32


def _check_size(input_size: Sequence[int]) -> tuple[int, int]:
    if len(input_size) != 2 or any(int(s) <= 0 for s in input_size):
        raise ConfigError(f"input_size must be (height, width) with positive sides, got {tuple(input_size)}")
    return int(input_size[0]), int(input_size[1])


def count_all_conventions(
    model: nn.Module, input_size: Sequence[int] = (512, 512), batch: int = 1, in_chans: int = 3
) -> dict[str, int]:
    """MACs of one forward pass of a ``batch x in_chans x H x W`` input, in every convention.

    Returns ``{"paper": int, "all": int}``, totals for the whole batch (not per image). The
    model runs once, in eval mode and under ``no_grad``, on its own device (``meta`` works);
    every module's training flag is restored afterwards.
    """
    h, w = _check_size(input_size)
    tally = _Tally()

    def hook(formula: _Formula) -> Callable[..., None]:
        def add(m: nn.Module, inp: tuple[torch.Tensor, ...], out: Any) -> None:
            macs, matmul = formula(m, inp, out)
            tally.total += int(macs)
            tally.matmul += int(matmul)

        return add

    handles = []
    for m in model.modules():
        formula = _formula_for(m)
        if formula is not None:
            handles.append(m.register_forward_hook(hook(formula)))
    device, dtype = _model_device_dtype(model)
    x = torch.zeros(batch, in_chans, h, w, device=device, dtype=dtype)
    # Restore each module's own flag afterwards (a frozen BN may sit in a training model).
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_custom_flop_formulas()) as fc:
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        for m, mode in modes.items():
            m.training = mode
    dispatcher_macs = fc.get_total_flops() // 2
    return {"paper": tally.total, "all": tally.total - tally.matmul + dispatcher_macs}


def count_macs(
    model: nn.Module,
    input_size: Sequence[int] = (512, 512),
    convention: Convention = "paper",
    batch: int = 1,
) -> int:
    """MACs of one forward pass on a ``batch x 3 x H x W`` input (whole batch), in ``convention``
    (``"paper"`` or ``"all"``, see the module docstring)."""
    if convention not in CONVENTIONS:
        raise ConfigError(f"unknown MAC convention {convention!r}; choose one of {', '.join(CONVENTIONS)}")
    return count_all_conventions(model, input_size, batch)[convention]


def count_params(module: nn.Module | None) -> int:
    """Number of parameters (all of them, trainable or not); 0 for ``None``."""
    return 0 if module is None else sum(p.numel() for p in module.parameters())


@contextlib.contextmanager
def _skip_weight_init() -> Iterator[None]:
    """Make the ``torch.nn.init`` functions no-ops while a model is built only to be counted.

    Initialising tens of millions of weights (trunc-normal especially) costs seconds on a small
    CPU, and weight values change no MAC count. (The same trick as ``no_init_weights`` in
    Hugging Face transformers.) Models cannot be built on ``meta`` directly because some compute
    index tables with ``.item()`` at construction.
    """
    names = [n for n in dir(nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(nn.init, n) for n in names}
    try:
        for n in names:
            setattr(nn.init, n, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for n, fn in saved.items():
            setattr(nn.init, n, fn)


def _build_and_count(name: str, num_classes: int, size: tuple[int, int]) -> tuple[nn.Module, dict[str, int]]:
    """Build ``name`` on the CPU without weight init, count on ``meta`` (shapes only); if the
    model cannot run on ``meta``, count a real CPU run instead (same numbers, slower)."""
    from lightseg.models.build import create_model

    with _skip_weight_init():
        model = create_model(name, num_classes=num_classes)
    try:
        return model, count_all_conventions(model.to("meta"), size)
    except (NotImplementedError, RuntimeError):
        with _skip_weight_init():
            model = create_model(name, num_classes=num_classes)
        return model, count_all_conventions(model, size)


def profile_model(
    name_or_model: str | nn.Module, size: Sequence[int] = (512, 512), num_classes: int = 150
) -> dict[str, Any]:
    """Parameters and GMACs of a model (a registered name or a module) at ``size``, batch 1.

    Returns ``params``, ``params_backbone``, ``params_head`` (counts; the split is taken from
    the model's ``.backbone`` / ``.head``; a bare backbone is all backbone; ``None`` when a
    module has no such split), ``gmacs_paper``, ``gmacs_all`` (MACs / 1e9, see the module
    docstring), ``size`` ([H, W]), ``num_classes`` and ``kind`` (the registry's, ``None`` for a
    module). A registered name is built on the
    ``meta`` device (fast, no memory); ``num_classes`` only applies to names.
    """
    h, w = _check_size(size)
    if isinstance(name_or_model, str):
        from lightseg.models.registry import get_entry

        kind = get_entry(name_or_model).kind
        model, macs = _build_and_count(name_or_model, num_classes, (h, w))
    else:
        model, kind = name_or_model, None
        macs = count_all_conventions(model, (h, w))
    backbone, head = getattr(model, "backbone", None), getattr(model, "head", None)
    if isinstance(backbone, nn.Module) and isinstance(head, nn.Module):
        params_backbone, params_head = count_params(backbone), count_params(head)
    elif kind == "backbone":
        params_backbone, params_head = count_params(model), 0
    else:
        params_backbone = params_head = None
    return {
        "params": count_params(model),
        "params_backbone": params_backbone,
        "params_head": params_head,
        "gmacs_paper": macs["paper"] / 1e9,
        "gmacs_all": macs["all"] / 1e9,
        "size": [h, w],
        "num_classes": num_classes,
        "kind": kind,
    }


def _millions(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f} M"


def format_profile(name: str, prof: dict[str, Any]) -> str:
    """A short human-readable report of :func:`profile_model`'s result."""
    h, w = prof["size"]
    split, classes = "", ""
    if prof.get("kind") != "backbone":
        classes = f", {prof['num_classes']} classes"
        if prof["params_backbone"] is not None:
            split = (
                f"  (backbone {_millions(prof['params_backbone'])} + head {_millions(prof['params_head'])})"
            )
    return "\n".join(
        [
            f"{name} at {h}x{w}, batch 1{classes}",
            f"params         {_millions(prof['params'])}{split}",
            f"GMACs (paper)  {prof['gmacs_paper']:.2f}   mmcv module-hook counter, as the papers' 'GFLOPs'",
            f"GMACs (all)    {prof['gmacs_all']:.2f}   every matrix product included (attention too)",
            "unit: GMACs = 1e9 multiply-accumulates (what the papers call GFLOPs)",
        ]
    )


# ---- the model-zoo table (``lightseg models --table``) -------------------------------------------

# Published figures with their own column; any other key of an entry's ``published`` dict goes
# to the last column as ``key=value``.
_PUBLISHED_COLUMNS: tuple[tuple[str, str], ...] = (
    ("ade20k_miou", "pub. ADE20K mIoU"),
    ("params_m", "pub. params (M)"),
    ("gflops", "pub. GFLOPs"),
)


def profile_table(
    names: Sequence[str], size: Sequence[int] = (512, 512), num_classes: int = 150
) -> list[dict[str, Any]]:
    """One row per registered model name: name, kind, :func:`profile_model`'s figures and the
    registry entry's ``published`` dict."""
    from lightseg.models.registry import get_entry

    rows = []
    for name in names:
        entry = get_entry(name)
        rows.append(
            {"name": name, "kind": entry.kind, "published": dict(entry.published)}
            | profile_model(name, size, num_classes)
        )
    return rows


def _fmt(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def render_table(rows: Sequence[dict[str, Any]], fmt: Literal["text", "markdown"] = "text") -> str:
    """Format :func:`profile_table` rows as an aligned text table or a Markdown table, with a
    footnote stating the input size, classes and MAC conventions."""
    header = ["model", "kind", "params (M)", "GMACs paper", "GMACs all"]
    header += [title for _, title in _PUBLISHED_COLUMNS] + ["other published"]
    body = []
    for r in rows:
        pub = r["published"]
        extra = ", ".join(f"{k}={v}" for k, v in pub.items() if k not in dict(_PUBLISHED_COLUMNS))
        body.append(
            [
                r["name"],
                r["kind"],
                f"{r['params'] / 1e6:.2f}",
                f"{r['gmacs_paper']:.2f}",
                f"{r['gmacs_all']:.2f}",
            ]
            + [_fmt(pub.get(key), 1) for key, _ in _PUBLISHED_COLUMNS]
            + [extra or "-"]
        )
    if rows:
        h, w = rows[0]["size"]
        note = (
            f"GMACs at {h}x{w}, batch 1, {rows[0]['num_classes']} classes for segmentors; 1 MAC = one "
            "multiply-accumulate (what papers call a FLOP). 'paper' = mmcv module-hook counter (no "
            "attention matmuls); 'all' = every matrix product included (lightseg.flops)."
        )
    else:
        note = "no models matched"
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join([*lines, "", note])
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body)]
    numeric = [False, False, True, True, True] + [True] * len(_PUBLISHED_COLUMNS) + [False]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(wd) if num else c.ljust(wd) for c, wd, num in zip(cells, widths, numeric)
        ).rstrip()

    return "\n".join([line(header), line(["-" * wd for wd in widths]), *map(line, body), note])
