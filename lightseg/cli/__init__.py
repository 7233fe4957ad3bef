"""The ``lightseg`` command line: each verb parses its arguments and calls one plain typed function.

One module per verb family (``lightseg/cli/<family>.py``) holds its argument code and its ``run``
function; ``_VERBS`` below maps each verb to them. ``run`` returns the process exit status.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from lightseg.cli import bench, data, evaluate, export, models, predict, serve, train
from lightseg.errors import LightsegError

AddArgs = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace, list[str]], int]


# verb -> (help, add_arguments, run, accepts_unknown_args)
_VERBS: dict[str, tuple[str, AddArgs, Run, bool]] = {
    "models": ("list registered models", models.add_models_args, models.run_models, False),
    "flops": (
        "params and GMACs (paper/all conventions) of a model",
        models.add_flops_args,
        models.run_flops,
        False,
    ),
    "train": (
        "train a model from a recipe (runs under torchrun too)",
        train.add_train_args,
        train.run_train,
        True,
    ),
    "eval": (
        "evaluate weights on a dataset split (mIoU, mAcc, aAcc)",
        evaluate.add_eval_args,
        evaluate.run_eval,
        True,
    ),
    "data": (
        "dataset tools: `data check` reports missing/corrupt/mislabelled files",
        data.add_data_args,
        data.run_data,
        True,
    ),
    "predict": (
        "segment images, folders, globs and videos: label PNGs + overlays",
        predict.add_predict_args,
        predict.run_predict,
        False,
    ),
    "export": (
        "export to ONNX (verified against eager with --check) or torch.export",
        export.add_export_args,
        export.run_export,
        False,
    ),
    "bench": (
        "latency benchmark: eager / folded / ONNX Runtime, logits or full-res labels",
        bench.add_bench_args,
        bench.run_bench,
        False,
    ),
    "serve": (
        "HTTP segmentation service with a demo page (POST /v1/segment, GET /v1/model, /)",
        serve.add_serve_args,
        serve.run_serve,
        False,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lightseg", description="Efficient semantic segmentation toolkit.")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, (help_, add_args, _, _) in _VERBS.items():
        add_args(sub.add_parser(verb, help=help_, description=help_))
    return parser


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """(arguments, unknown arguments). Verbs without unknown arguments are parsed again
    intermixed, so positionals may sit on either side of options: ``predict MODEL --weights W
    img.png`` gives the image to ``inputs``, where plain parsing would stop at the option."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if _VERBS[args.verb][3]:
        return args, rest
    help_, add_args = _VERBS[args.verb][:2]
    verb_parser = argparse.ArgumentParser(prog=f"{parser.prog} {args.verb}", description=help_)
    add_args(verb_parser)
    verb_args = verb_parser.parse_intermixed_args(argv[argv.index(args.verb) + 1 :])
    verb_args.verb = args.verb
    return verb_args, []


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, rest = parse(argv)
    run = _VERBS[args.verb][2]
    try:
        return run(args, rest)
    except LightsegError as e:
        # Errors a user can act on: one clear message, no traceback. Anything else is a bug and
        # keeps its traceback.
        print(f"lightseg {args.verb}: error: {_message(e)}", file=sys.stderr)
        return 2


def _message(e: LightsegError) -> str:
    """The error's own message; one re-raised from a DataLoader worker carries the worker's
    traceback before it, which is dropped."""
    msg = str(e)
    head = f"{type(e).__module__}.{type(e).__qualname__}: "
    return msg.rsplit(head, 1)[1].strip() if "Original Traceback" in msg and head in msg else msg


if __name__ == "__main__":
    sys.exit(main())
