"""Inference-time graph surgery: fold BatchNorm into neighbouring convolutions, fix input sizes.

In eval mode ``BN(z) = s * z + t`` with ``s = gamma / sqrt(var + eps)`` and ``t = beta - s * mean``,
a per-channel affine map, so it can be merged into an adjacent convolution:

- Conv -> BN (the usual ``ConvBN``/``ConvBNAct`` order): ``W' = s * W`` per output channel,
  ``b' = s * b + t``. Exact for any kernel, stride, padding and groups.
- BN -> Conv with a 1x1 kernel and no padding (e.g. the MLP of CGRSeg's RCM, ``MLP(BN(RCA(x)))``):
  ``W' = W * s`` per input channel, ``b' = b + W @ t``. Only done for groups == 1 and padding 0,
  where it is exact (with zero padding the border pixels would see ``t`` where BN saw zeros).

Pairs are found by tracing the module that owns each BN with torch.fx: a pair folds only when the
first module's output feeds the second and nothing else, so the rewrite cannot change the function.
Folded BNs are replaced by ``nn.Identity`` (names and the rest of the structure stay as they were).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from lightseg.errors import ConfigError

# What optimize_for_inference can do to a model before it runs (see its docstring).
OPTIMIZATIONS = ("none", "fold-bn", "compile")


@dataclass
class FoldReport:
    """What :func:`fold_bn` did: folded pairs (by module path) and BatchNorms left in place."""

    folded: list[str]
    remaining: list[str]

    def __str__(self) -> str:
        return f"folded {len(self.folded)} BatchNorm layers, {len(self.remaining)} left unfolded"


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    return scale, shift


def _conv_bias(conv: nn.Conv2d) -> torch.Tensor:
    if conv.bias is not None:
        return conv.bias.detach().double()
    return torch.zeros(conv.out_channels, dtype=torch.float64, device=conv.weight.device)


def _set_params(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> None:
    dtype = conv.weight.dtype
    conv.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
    conv.bias = nn.Parameter(bias.to(dtype), requires_grad=False)


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Merge ``bn`` into the preceding ``conv`` in place (Conv -> BN order); see the module docstring."""
    scale, shift = _bn_scale_shift(bn)
    w = conv.weight.detach().double() * scale.view(-1, 1, 1, 1)
    _set_params(conv, w, _conv_bias(conv) * scale + shift)


def can_fold_bn_conv(conv: nn.Module) -> bool:
    """Whether a BN in front of ``conv`` folds exactly into it: a 1x1, unpadded, ungrouped Conv2d."""
    return (
        isinstance(conv, nn.Conv2d)
        and conv.kernel_size == (1, 1)
        and conv.groups == 1
        and all(p == 0 for p in conv.padding)
        and conv.padding_mode == "zeros"
    )


def fold_bn_conv(bn: nn.BatchNorm2d, conv: nn.Conv2d) -> None:
    """Merge ``bn`` into the following 1x1 ``conv`` in place (BN -> Conv order)."""
    if not can_fold_bn_conv(conv):
        raise ValueError(f"BN -> {conv} cannot be folded exactly (needs a 1x1, unpadded, ungrouped conv)")
    scale, shift = _bn_scale_shift(bn)
    w = conv.weight.detach().double()  # out x in x 1 x 1
    bias = _conv_bias(conv) + w[:, :, 0, 0] @ shift
    _set_params(conv, w * scale.view(1, -1, 1, 1), bias)


def _is_bn(m: nn.Module) -> bool:
    return isinstance(m, nn.BatchNorm2d) and m.running_var is not None


def _call_counts(model: nn.Module, example: torch.Tensor) -> dict[nn.Module, int]:
    """How often each module runs in one forward pass (a module called twice, like CGRSeg's shared
    classifier, must not absorb a BN that only one of its call sites sees)."""
    counts: dict[nn.Module, int] = {}

    def hook(m: nn.Module, *_: object) -> None:
        counts[m] = counts.get(m, 0) + 1

    handles = [m.register_forward_pre_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return counts


def _traced_pairs(root: nn.Module) -> list[tuple[str, str, str]]:
    """(first, second, order) module paths of Conv->BN / BN->Conv pairs in ``root``'s own forward,
    found with torch.fx, where the first module's output feeds the second and nothing else."""
    import torch.fx

    class ShallowTracer(torch.fx.Tracer):
        # Only ``root``'s own forward; children stay opaque calls, so shape checks or data-dependent
        # code inside them (e.g. attention blocks) cannot make the trace fail.
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return True

    try:
        graph = torch.fx.symbolic_trace(root).graph
    except Exception:
        try:
            graph = ShallowTracer().trace(root)
        except Exception:  # data-dependent control flow in root itself: not folded
            return []
    mods = dict(root.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or len(node.users) != 1:
            continue
        (user,) = node.users
        if user.op != "call_module" or user.args[:1] != (node,) or len(user.args) != 1:
            continue
        a, b = mods.get(node.target), mods.get(user.target)
        if type(a) is nn.Conv2d and _is_bn(b):
            pairs.append((node.target, user.target, "conv-bn"))
        elif _is_bn(a) and type(b) is nn.Conv2d and can_fold_bn_conv(b):
            pairs.append((node.target, user.target, "bn-conv"))
    return pairs


def _set_submodule(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, new)


def fold_bn(
    model: nn.Module, inplace: bool = False, example: torch.Tensor | None = None
) -> tuple[nn.Module, FoldReport]:
    """Fold every BatchNorm2d that sits directly after (or, for 1x1 convs, before) a Conv2d.

    Pairs are found by tracing (torch.fx, one module's own forward at a time) the nearest ancestor
    of each BN whose forward feeds a conv into it (or it into a 1x1 conv); a pair folds only if the
    first module's output feeds the second alone and, when ``example`` (an input batch) is given or can be made from
    ``model.size_divisor``, neither module runs more than once per forward.
    Returns the (copied unless ``inplace``) model in eval mode and a :class:`FoldReport`.
    The function computed by the model is unchanged up to float rounding.
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    if example is None and getattr(model, "size_divisor", None):
        example = torch.randn(1, 3, 2 * int(model.size_divisor), 2 * int(model.size_divisor))
    counts = _call_counts(model, example) if example is not None else {}
    folded: list[str] = []
    done: set[str] = set()
    traced: dict[str, list[tuple[str, str, str]]] = {}
    with torch.no_grad():
        for bn_name, bn in list(model.named_modules()):
            if not _is_bn(bn) or bn_name in done:
                continue
            parent, pairs = bn_name, []
            while parent:  # the nearest ancestor whose own forward pairs this BN with a conv
                parent = parent.rpartition(".")[0]
                root = model.get_submodule(parent) if parent else model
                if parent not in traced:
                    traced[parent] = _traced_pairs(root)
                rel = bn_name[len(parent) + 1 :] if parent else bn_name
                if any(rel in (first, second) for first, second, _ in traced[parent]):
                    pairs = traced[parent]
                    break
            prefix = f"{parent}." if parent else ""
            for first, second, order in pairs:
                a, b = root.get_submodule(first), root.get_submodule(second)
                if prefix + first in done or prefix + second in done:
                    continue
                if counts and (counts.get(a, 1) > 1 or counts.get(b, 1) > 1):
                    continue
                if order == "conv-bn":
                    fold_conv_bn(a, b)
                    bn_path = second
                else:
                    fold_bn_conv(a, b)
                    bn_path = first
                _set_submodule(root, bn_path, nn.Identity())
                done.update({prefix + first, prefix + second})
                folded.append(prefix + bn_path)
    remaining = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return model, FoldReport(folded, remaining)


def fix_input_size(model: nn.Module, size: tuple[int, int] | None) -> int:
    """Tell every submodule offering ``fix_input_size`` (e.g. the EfficientFormerV2 backbone, which
    then precomputes its bicubically resized attention-bias tables) the fixed input size ``(H, W)``;
    ``None`` undoes it. Returns how many modules took it."""
    n = 0
    for m in model.modules():
        fn = getattr(m, "fix_input_size", None)
        if callable(fn) and m is not model:
            fn(size)
            n += 1
    return n


def optimize_for_inference(
    model: nn.Module,
    optimize: str = "fold-bn",
    size: tuple[int, int] | None = None,
    channels_last: bool = False,
) -> nn.Module:
    """An eval-mode copy of ``model`` for fast inference.

    ``optimize``: ``"none"`` (a plain eval copy), ``"fold-bn"`` (:func:`fold_bn`, plus fixed
    attention-bias tables when ``size`` is given), ``"compile"`` (``fold-bn`` then ``torch.compile``;
    on this CPU compile has been slower than eager for these models, so it is opt-in).
    """
    if optimize not in OPTIMIZATIONS:
        raise ConfigError(f"optimize must be one of {', '.join(OPTIMIZATIONS)}; got {optimize!r}")
    model = copy.deepcopy(model).eval()
    if optimize == "none":
        return model
    model, _ = fold_bn(model, inplace=True)
    if size is not None:
        fix_input_size(model, size)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if optimize == "compile":
        model = torch.compile(model)
    return model
