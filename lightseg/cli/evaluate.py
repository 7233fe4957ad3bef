"""`lightseg eval`: the metrics of weights (a checkpoint or an exported file) on a dataset split.

Without a recipe the model, and for a training checkpoint the whole configuration, come from the
weights; the metric loop is :func:`lightseg.evaluation.evaluate`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lightseg.cli.options import add_precision_arg, add_runtime_arg, model_facts
from lightseg.cli.train import split_recipe, with_fields
from lightseg.errors import ConfigError


def add_eval_args(p: argparse.ArgumentParser) -> None:
    with_fields(
        p,
        ["data", "eval", "run"],
        "lightseg eval [RECIPE.yaml] --weights W [--split S] [--data.field VALUE ...]\n"
        "       without a recipe the model (and for a training checkpoint the data) come from W",
    )
    p.add_argument(
        "--weights",
        required=True,
        help="checkpoint (training .pt, lightseg safetensors, ...) or exported .onnx / .xml file",
    )
    add_runtime_arg(p, "default: torch for checkpoints, an exported file's own runtime")
    add_precision_arg(p, "Default: fp32 / the file's")
    p.add_argument(
        "--meta", default=None, metavar="JSON", help="model facts for a file exported by another tool"
    )
    p.add_argument("--split", default=None, help="dataset split (default: the recipe's data.val_split)")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.add_argument(
        "--cityscapes-out", default=None, help="also write test-server labelId PNGs to this folder"
    )


def config_from_weights(weights: str, tokens: list[str]) -> Any:
    """The configuration a checkpoint implies: a training checkpoint's own, else its model and
    ``--data.*`` from the command line (your own folder by default)."""
    from lightseg.checkpoint import TRAIN_FORMAT, read_checkpoint
    from lightseg.config import Config, apply_overrides, config_from_dict, given_fields
    from lightseg.deploy.formats import is_exported
    from lightseg.training.checkpoints import load_train_checkpoint
    from lightseg.weights import resolve_path

    if is_exported(weights) or Path(weights).suffix == ".safetensors":
        # Weights without a training configuration: the model from the file, the data from you.
        cfg = Config()
        if not is_exported(weights):
            fields, _ = read_checkpoint(weights)
            cfg.model.name, cfg.model.kwargs = fields["name"], dict(fields.get("options", {}))
        cfg.data.dataset = "folder"
        if "data.root" not in given_fields(tokens):
            raise ConfigError(f"{weights} records no dataset; add --data.root DIR (and --data.dataset NAME)")
        return apply_overrides(cfg, tokens)
    path = resolve_path(weights)
    ckpt = load_train_checkpoint(path)
    if ckpt.get("format") != TRAIN_FORMAT or "config" not in ckpt:
        raise ConfigError(f"{path} carries no configuration; give the recipe it was trained with")
    return apply_overrides(config_from_dict(ckpt["config"], source=str(path)), tokens)


def run_eval(args: argparse.Namespace, rest: list[str]) -> int:
    from lightseg.config import load_config
    from lightseg.deploy.options import RunnerOptions

    recipe, overrides = split_recipe(rest)
    cfg = load_config(recipe, overrides) if recipe else config_from_weights(args.weights, overrides)
    evaluate_weights(
        cfg, args.weights, args.format, args.split, args.cityscapes_out,
        options=RunnerOptions(args.runtime, args.precision), meta=model_facts(args),
    )  # fmt: skip
    return 0


def evaluate_weights(
    cfg: Any,
    weights: str,
    fmt: str = "table",
    split: str | None = None,
    cityscapes_out: str | None = None,
    *,
    options: Any = None,
    meta: Any = None,
) -> dict:
    """Build the split and the model, load ``weights``, evaluate, print.

    ``weights``: a checkpoint (run by torch unless ``options.runtime`` says otherwise) or an
    exported ``.onnx`` / ``.xml`` file (run by its runtime; its class count must match the
    dataset's). ``meta``: the facts of a file exported by another tool.
    """
    import json

    import torch

    from lightseg.deploy.formats import is_exported
    from lightseg.deploy.options import RunnerOptions
    from lightseg.deploy.runners import build_runner
    from lightseg.evaluation import build_eval_dataset, cityscapes_writer, evaluate, json_ready
    from lightseg.metrics import format_table
    from lightseg.models.build import create_model
    from lightseg.training.distributed import init_distributed

    options = options or RunnerOptions()
    runtime, precision = options.runtime, options.precision

    info, device = init_distributed(cfg.run.device)
    dataset = build_eval_dataset(cfg, split or cfg.data.val_split)
    amp_dtype = None
    if is_exported(weights) or runtime not in (None, "torch"):
        if is_exported(weights):
            model = build_runner(weights, options, meta=meta)
        else:
            m = cfg.model
            net = create_model(m.name, num_classes=dataset.num_classes, weights=weights, **m.kwargs)
            model = build_runner(net, options, meta=meta)
        if model.num_classes != dataset.num_classes:
            raise ConfigError(
                f"{weights}: the model has {model.num_classes} classes, the {cfg.data.dataset} split "
                f"{dataset.num_classes}: evaluate it on the dataset it was trained for"
            )
    else:
        m = cfg.model
        model = create_model(m.name, num_classes=dataset.num_classes, weights=weights, **m.kwargs).to(device)
        if precision == "bf16":
            amp_dtype = torch.bfloat16
        elif precision not in (None, "fp32"):
            raise ConfigError(
                f"--precision {precision} runs with --runtime onnxruntime or openvino, not torch"
            )
    hook = cityscapes_writer(cityscapes_out) if cityscapes_out else None
    result = evaluate(
        model, dataset, cfg.eval, device, amp_dtype=amp_dtype, progress=info.is_main and fmt != "json",
        on_prediction=hook,
    )  # fmt: skip
    if info.is_main:
        print(json.dumps(json_ready(result), indent=1) if fmt == "json" else format_table(result))
    return result
