"""``python -m balr_sam.benchmark``: ``balr-sam benchmark``, or one memory child process.

``--child-memory NAME --child-args JSON`` (used by
:func:`~balr_sam.benchmark.measurements.memory_in_child`) trains configuration ``NAME`` with the
run's settings and prints :func:`~balr_sam.benchmark.measurements.child_train_memory`'s result
as one JSON line; any other arguments go to ``balr-sam benchmark``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

__all__ = ["main"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the memory child (``--child-memory``) or ``balr-sam benchmark`` with ``argv``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--child-memory" not in argv:
        from balr_sam.cli import main as cli_main

        return cli_main(["benchmark", *argv])
    from balr_sam.benchmark.measurements import child_train_memory

    parser = argparse.ArgumentParser(prog="python -m balr_sam.benchmark", description="memory child process of balr-sam benchmark")
    parser.add_argument("--child-memory", required=True, help="configuration to train")
    parser.add_argument("--child-args", required=True, help="the run's settings as JSON")
    args = parser.parse_args(argv)
    print(json.dumps(child_train_memory(args.child_memory, json.loads(args.child_args))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
