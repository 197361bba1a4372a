"""``balr-sam benchmark``: full fine-tuning vs SAMed-style LoRA vs BALR-SAM (time, memory, throughput).

See :mod:`balr_sam.benchmark` for what is measured and how. Prints a Markdown table (every figure
with its ratio to the baselines of the same run) and the targets; ``--json FILE`` also writes JSON.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register", "add_arguments"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``balr-sam benchmark`` (the keyword arguments of :func:`~balr_sam.benchmark.run.run_benchmark`)."""
    from balr_sam.networks.variants import VARIANTS

    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--variant", default="vit_t", choices=sorted(VARIANTS), help="SAM variant (default vit_t)")
    parser.add_argument("--img-size", type=int, default=256, help="model input size (default 256)")
    parser.add_argument("--batch", type=int, default=2, help="training batch (default 2)")
    parser.add_argument("--num-classes", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations before each timing (default 2)")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per configuration (default 5)")
    parser.add_argument("--infer-iters", type=int, default=5, help="timed inference batches per configuration (default 5)")
    parser.add_argument("--infer-batch", type=int, default=None, help="inference batch and volume slab (default: --batch)")
    parser.add_argument(
        "--volume-shape", type=int, nargs=3, default=None, metavar=("X", "Y", "Z"), help="end-to-end CT volume (default 512 512 150 on CUDA, 256 256 20 on CPU)"
    )
    parser.add_argument("--volume-repeats", type=int, default=1)
    parser.add_argument("--batch-cases", type=int, default=3, help="volumes in the batch-inference measurement (read-ahead vs sequential)")
    parser.add_argument("--memory-steps", type=int, default=2, help="training steps in each memory child (default 2)")
    parser.add_argument("--amp", dest="amp", action="store_true", default=None, help="bf16 autocast (default on CUDA)")
    parser.add_argument("--no-amp", dest="amp", action="store_false")
    parser.add_argument(
        "--fast-attention",
        default="infer",
        choices=("off", "infer", "all"),
        help="SDPA encoder attention: off, for BALR-SAM inference (default), or also for training",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile every model")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for the FLOP/s fraction (default: known GPUs)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--json", dest="json_file", default=None, help="also write the results as JSON to this file ('-' = stdout instead of the table)")


def run(args: argparse.Namespace) -> int:
    from balr_sam.benchmark.run import run_from_args

    return run_from_args(args)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("benchmark", help="full fine-tuning vs SAMed vs BALR-SAM: time, memory, throughput", description=__doc__)
    add_arguments(parser)
    parser.set_defaults(func=run)
