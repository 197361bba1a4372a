"""Timing primitives of the benchmark: device synchronisation, autocast, median, one timed call.

Every figure of ``balr-sam benchmark`` is wall-clock time between two device synchronisations
(:func:`timed`), and the median over repetitions (:func:`median`), so that an asynchronous CUDA
launch is never mistaken for the work itself.
"""

from __future__ import annotations

import statistics
import time
from contextlib import nullcontext
from typing import Any, Callable, ContextManager, Sequence

import torch

__all__ = ["sync", "autocast", "median", "timed"]


def sync(device: str) -> None:
    """Wait for the queued work of ``device`` (CUDA); nothing on CPU."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def autocast(device: str, amp: bool) -> ContextManager[Any]:
    """bf16 autocast on CUDA when ``amp`` is set, else a no-op context."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if amp and device.startswith("cuda") else nullcontext()


def median(values: Sequence[float]) -> float:
    """The median of ``values`` (NaN when empty)."""
    return float(statistics.median(values)) if values else float("nan")


def timed(device: str, run: Callable[[], Any]) -> float:
    """Seconds taken by ``run()``, measured between two synchronisations of ``device``."""
    sync(device)
    start = time.perf_counter()
    run()
    sync(device)
    return time.perf_counter() - start
