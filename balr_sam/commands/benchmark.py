"""``balr-sam benchmark``: full fine-tuning vs SAMed-style LoRA vs BALR-SAM (time, memory, throughput).

See :mod:`balr_sam.benchmark` for what is measured and how. Prints a Markdown table (every figure
with its ratio to the baselines of the same run) and the targets; ``--json FILE`` also writes JSON.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]


def run(args: argparse.Namespace) -> int:
    from balr_sam.benchmark import run_from_args

    return run_from_args(args)


def register(subparsers: Any) -> None:
    from balr_sam.benchmark import add_arguments

    parser = subparsers.add_parser("benchmark", help="full fine-tuning vs SAMed vs BALR-SAM: time, memory, throughput", description=__doc__)
    add_arguments(parser)
    parser.set_defaults(func=run)
