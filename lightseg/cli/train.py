"""`lightseg train`.

``lightseg train RECIPE.yaml [--section.field VALUE ...]`` runs a recipe (a pinned, published
setting). ``lightseg train --model NAME --data.root DIR [...]`` needs none: the defaults come from
the model (:func:`recipe_free_config`) and the data (class count and names).
"""

from __future__ import annotations

import argparse
from typing import Any

from lightseg.errors import ConfigError

TRAIN_SECTIONS = ["model", "data", "optim", "schedule", "train", "eval", "run"]


def split_recipe(tokens: list[str]) -> tuple[str | None, list[str]]:
    """``(recipe, overrides)`` from what argparse left: the one token that is not an option or an
    option's value is the recipe."""
    recipe, rest, i = None, [], 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.startswith("--"):
            take = 1 if "=" in tok else 2
            rest += tokens[i : i + take]
            i += take
            continue
        if recipe is not None:
            raise ConfigError(f"one recipe at most, got {recipe!r} and {tok!r}")
        recipe, i = tok, i + 1
    return recipe, rest


def with_fields(
    p: argparse.ArgumentParser, sections: list[str], usage: str, recipe_free: dict[str, str] | None = None
) -> None:
    from lightseg.config import fields_help

    p.usage = usage
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = fields_help(sections, recipe_free)


# The papers' AdamW learning rates with ImageNet-initialised backbones (head x10), per model family
# (the registry's: a head on another backbone keeps its family's rate).
PAPER_LR = {"frm": 6.0e-5, "cgrseg": 1.2e-4}

# What `lightseg train --model NAME --data.root DIR` uses where a field is not given (--help shows it
# beside each field's recipe default; recipe_free_config applies it).
RECIPE_FREE_HELP = {
    "model.pretrained": "true where the backbone has published ImageNet weights (lightseg models --weights)",
    "data.dataset": "folder",
    "train.iters": "20000",
    "train.batch_size": "8",
    "optim.lr": f"{PAPER_LR['frm']:g} (FRM) / {PAPER_LR['cgrseg']:g} (CGRSeg) from ImageNet weights, else 2e-3",
    "optim.head_lr_mult": "10 from ImageNet weights, else 1",
    "schedule.warmup_iters": "train.iters / 10, at most 1500",
    "eval.interval": "train.iters / 4",
    "train.ckpt_interval": "train.iters / 4",
    "train.log_interval": "train.iters / 20, at most 50",
}

# `lightseg train --preset quick --data.root DIR`: a first useful model on a CPU in minutes.
# FRM on the ImageNet EfficientNet-Lite0 (its weights come from a pip package: no download), images
# resized to fit 480 x 360, 256 x 256 crops; measured on CamVid 480x360 in docs/custom-data.md.
PRESETS: dict[str, dict[str, object]] = {
    "quick": {
        "model.name": "frm_effnetlite0",
        "data.crop_size": [256, 256],
        "data.scale": [480, 360],
        "data.test_scale": [480, 360],
        "data.num_workers": 1,
        "train.iters": 250,
        "train.contrastive_weight": 0.1,
        "optim.lr": 5.0e-4,
        "eval.interval": 0,
    },
}


def preset_tokens(name: str) -> list[str]:
    """``--section.field value`` tokens of a preset (the command line's own tokens come after them)."""
    import yaml

    if name not in PRESETS:
        raise ConfigError(f"--preset {name!r}: unknown; presets: {', '.join(PRESETS)}")
    tokens: list[str] = []
    for key, value in PRESETS[name].items():
        tokens += [f"--{key}", yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...")]
    return tokens


def add_train_args(p: argparse.ArgumentParser) -> None:
    presets = "; ".join(
        f"{name}: " + ", ".join(f"{k} {v}" for k, v in values.items()) for name, values in PRESETS.items()
    )
    with_fields(
        p,
        TRAIN_SECTIONS,
        "lightseg train [RECIPE.yaml] [--model NAME] [--resume CKPT] [--section.field VALUE ...]\n"
        "       e.g. lightseg train --model cgrseg_t --data.root my_data --train.iters 4000\n"
        "            lightseg train --preset quick --data.root my_data   (6 minutes on 2 CPU cores)",
        RECIPE_FREE_HELP,
    )
    p.add_argument("--model", dest="model_name", default=None, help="model name (same as --model.name)")
    p.add_argument(
        "--resume", default=None, help="checkpoint to continue from (default: <work_dir>/last.pt if any)"
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help=f"settings for a run without a recipe (your options win): {presets}",
    )


def recipe_free_config(tokens: list[str]) -> Any:
    """The configuration of ``lightseg train --model NAME --data.root DIR [...]`` (``tokens``).

    Data: your own folder (``data.dataset folder``) with the papers' pipeline (512 x 512 crops).
    Model: its backbone's published ImageNet weights where there are some (``model.pretrained``,
    see ``lightseg models --weights``; ``--model.pretrained false`` opts out); then the papers'
    learning rate with the head at x10, else, from random initialisation, 2e-3 for every
    parameter (what trained best from scratch on CamVid here).
    Schedule: ``train.iters`` (default 20000) with a warm-up of 10% of them at most (1500 at most),
    evaluation and a checkpoint every quarter of the run, batch 8. The run directory is
    ``runs/<model>_<folder name>`` (fresh). Whatever ``tokens`` set wins. :data:`RECIPE_FREE_HELP`
    says the same for ``--help``.
    """
    from lightseg.config import Config, apply_overrides, given_fields
    from lightseg.models.registry import get_entry
    from lightseg.weights import list_weights

    given = given_fields(tokens)
    if "data.root" not in given:
        raise ConfigError("training without a recipe needs --data.root DIR (your images and masks)")
    cfg = apply_overrides(Config(), tokens)
    name = cfg.model.name
    entry = get_entry(name)
    if entry.kind != "segmentor":
        raise ConfigError(
            f"--model {name} is a backbone; train a segmentor built on it (see `lightseg models`)"
        )
    if not {"model.pretrained", "model.weights"} & given and list_weights(entry.weights_name):
        cfg.model.pretrained = True  # published ImageNet weights: the largest accuracy lever there is
    imagenet = bool(cfg.model.weights or cfg.model.pretrained)
    iters = cfg.train.iters if "train.iters" in given else 20_000
    defaults = {
        "data.dataset": "folder",
        "train.iters": iters,
        "train.batch_size": 8,
        "optim.lr": PAPER_LR[entry.family] if imagenet else 2.0e-3,
        "optim.head_lr_mult": 10.0 if imagenet else 1.0,
        "schedule.warmup_iters": min(1500, iters // 10),
        "eval.interval": max(iters // 4, 1),
        "train.ckpt_interval": max(iters // 4, 1),
        "train.log_interval": min(50, max(iters // 20, 1)),
    }
    for key, value in defaults.items():
        if key not in given:
            section, field = key.split(".")
            setattr(getattr(cfg, section), field, value)
    return cfg


def run_train(args: argparse.Namespace, rest: list[str]) -> int:
    from lightseg.config import given_fields, load_config
    from lightseg.training import train

    recipe, overrides = split_recipe(rest)
    if args.model_name:
        overrides = ["--model.name", args.model_name, *overrides]
    if args.preset:
        if recipe is not None:
            raise ConfigError(f"--preset {args.preset} replaces a recipe; give one or the other")
        overrides = [*preset_tokens(args.preset), *overrides]
    if recipe is not None:
        cfg = load_config(recipe, overrides)
    elif "model.name" in given_fields(overrides):
        cfg = recipe_free_config(overrides)
    else:
        raise ConfigError(
            "lightseg train needs a recipe (lightseg train RECIPE.yaml) or a model and your data "
            "(lightseg train --model cgrseg_t --data.root DIR); `lightseg models` lists the models"
        )
    if args.resume:
        cfg.run.resume = args.resume
    train(cfg)
    return 0
