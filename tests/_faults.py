"""Fault injection for ``test_training_faults.py`` and ``test_security.py``: a loss that turns NaN
on a chosen call, the child processes that get killed while they write checkpoints, and a
code-executing pickle payload. Imported by those child processes
(``PYTHONPATH=tests``) and by bundle config overrides (``"_target_": "_faults.NaNLossAt"``)."""

from __future__ import annotations

import io
import os
import sys
import time
from typing import Any

import torch
from ignite.engine import Engine, Events

from balr_sam.engine import AtomicCheckpointSaver

PARTIAL = "PARTIAL"  # the line save_then_block prints once half of a checkpoint is on disk


class NaNLossAt(torch.nn.Module):
    """Wraps a loss; its ``call``-th call in this process (1-based) returns NaN, with a gradient, like a diverged run."""

    def __init__(self, loss: torch.nn.Module, call: int) -> None:
        super().__init__()
        self.loss = loss
        self.call = call
        self.calls = 0

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.calls += 1
        value = self.loss(*args, **kwargs)
        return value * float("nan") if self.calls == self.call else value


def _engine_filling_weights(model: torch.nn.Linear) -> Engine:
    """An engine whose iteration ``i`` sets every weight to ``i`` (so a checkpoint's content names its iteration)."""

    def step(engine: Engine, batch: Any) -> None:
        with torch.no_grad():
            model.weight.fill_(float(engine.state.iteration))

    return Engine(step)


def save_then_block(folder: str) -> None:
    """Save a checkpoint after every iteration; the second save writes half of its file, prints
    ``PARTIAL <temporary file>`` and hangs there until the parent kills the process."""
    model = torch.nn.Linear(256, 256)
    engine = _engine_filling_weights(model)
    AtomicCheckpointSaver(folder, {"model": model}, epoch_interval=0, iteration_interval=1).attach(engine)
    real_save = torch.save

    def half_then_hang(obj: Any, f: str) -> None:
        buffer = io.BytesIO()
        real_save(obj, buffer)
        data = buffer.getvalue()
        with open(f, "wb") as out:
            out.write(data[: len(data) // 2])
            out.flush()
            os.fsync(out.fileno())
        print(f"{PARTIAL} {f}", flush=True)
        time.sleep(600)

    @engine.on(Events.ITERATION_COMPLETED(once=1))
    def block_next_save(_: Engine) -> None:  # attached after the saver: the first save is a normal one
        torch.save = half_then_hang

    engine.run(range(4), max_epochs=1)
    sys.exit("the save did not block")


def save_forever(folder: str) -> None:
    """Save a 16 MB checkpoint after every iteration until killed."""
    model = torch.nn.Linear(2048, 2048)
    engine = _engine_filling_weights(model)
    AtomicCheckpointSaver(folder, {"model": model}, epoch_interval=0, iteration_interval=1).attach(engine)
    engine.run(range(10**6), max_epochs=1)


class CodeExecutingPickle:
    """A crafted payload: unpickling it (without ``weights_only``) runs ``touch <marker>``."""

    def __init__(self, marker: Any) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> Any:
        return (os.system, (f"touch '{self.marker}'",))
