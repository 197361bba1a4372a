"""The ``balr-sam`` command line.

Each subcommand lives in its own module under :mod:`balr_sam.commands` and exposes
``register(subparsers)``, which adds an ``argparse`` parser whose ``func`` default is called with
the parsed arguments and returns the process exit status. Expected errors are raised as
:class:`balr_sam.errors.BalrSamError` and printed as one line without a traceback, also when
MONAI wrapped them in its own error on the way up.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from balr_sam import __version__
from balr_sam.errors import find_error

__all__ = ["COMMAND_MODULES", "build_parser", "main"]

# Subcommand modules, in the order ``balr-sam --help`` lists them.
COMMAND_MODULES = (
    "balr_sam.commands.summary",
    "balr_sam.commands.prepare",
    "balr_sam.commands.synth",
    "balr_sam.commands.evaluate",
    "balr_sam.commands.infer",
    "balr_sam.commands.demo",
    "balr_sam.commands.benchmark",
    "balr_sam.commands.label_deploy",
)


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(prog="balr-sam", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"balr-sam {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:  # the subcommand is not part of this build
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status (0 success, 1 failure, 2 usage)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Exception as err:
        expected = find_error(err)  # also when MONAI wrapped it (config parsing, Compose)
        if expected is None:
            raise
        print(f"balr-sam {args.command}: error: {expected}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
