"""The ``optprune`` command line. Each area registers its own subcommands."""

from __future__ import annotations

import argparse
import importlib
import sys

from ._extras import missing_extra
from .errors import OptpruneError

# Modules that define ``add_parsers(subparsers)``; each subcommand sets
# ``func(args) -> int`` as its default.
_AREAS = [
    "optprune.alloc.cli",
    "optprune.nn.cli",
    "optprune.encode.cli",
    "optprune.hw.cli",
    "optprune.sprint.cli",
    "optprune.bayes.cli",
    "optprune.train_prune.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="optprune",
        description="Structured pruning of neural networks as exact optimization problems.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for mod in _AREAS:
        try:
            area = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name and mod.startswith(exc.name):
                continue
            raise
        area.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except OptpruneError as exc:
        print(f"optprune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:  # a command of an extra that is not installed
        err = missing_extra(exc)
        if err is None:
            raise
        print(f"optprune {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into head and the like
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
