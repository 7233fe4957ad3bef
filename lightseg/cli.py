"""The ``lightseg`` command line: each verb parses its arguments and calls one plain typed function.

Verbs register themselves in ``_VERBS`` below (name -> (add_arguments, run)); ``run`` returns the
process exit status.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

AddArgs = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace, list[str]], int]


def _add_models_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default="*", help="shell-style name filter (default: all)")
    p.add_argument("--kind", choices=["segmentor", "backbone"], default=None)


def _run_models(args: argparse.Namespace, rest: list[str]) -> int:
    from lightseg.models.registry import list_models

    for name in list_models(args.pattern, kind=args.kind):
        print(name)
    return 0


# verb -> (help, add_arguments, run, accepts_unknown_args)
_VERBS: dict[str, tuple[str, AddArgs, Run, bool]] = {
    "models": ("list registered models", _add_models_args, _run_models, False),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lightseg", description="Efficient semantic segmentation toolkit.")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, (help_, add_args, _, _) in _VERBS.items():
        add_args(sub.add_parser(verb, help=help_, description=help_))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    _, _, run, accepts_rest = _VERBS[args.verb]
    if rest and not accepts_rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return run(args, rest)
    except (FileNotFoundError, KeyError, ValueError) as e:
        # User-facing errors (bad names, files, checkpoints, sizes): one clear line, no traceback.
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"lightseg {args.verb}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
