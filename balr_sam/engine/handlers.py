"""Ignite handlers: trainable-only atomic checkpoints, resuming, and stopping on a non-finite loss."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver

from balr_sam.networks.balr_sam import BALRSAM
from balr_sam.networks.trainable import load_trainable_state_dict, trainable_state_dict

__all__ = ["TrainableWeights", "AtomicCheckpointSaver", "latest_checkpoint", "StopOnNonFiniteLoss"]

logger = logging.getLogger(__name__)


class TrainableWeights:
    """State-dict view of a BALR-SAM model restricted to its trainable part.

    Checkpoint handlers call ``state_dict()``/``load_state_dict()`` on what they save; giving them
    this object instead of the network stores adapters + CDEN + decoder (tens of MB for ViT-B)
    rather than the whole SAM. DDP-wrapped networks are unwrapped.
    """

    def __init__(self, network: torch.nn.Module) -> None:
        self.network = network

    @property
    def model(self) -> BALRSAM:
        net = self.network
        while hasattr(net, "module") and not isinstance(net, BALRSAM):
            net = net.module
        if not isinstance(net, BALRSAM):
            raise TypeError(f"TrainableWeights needs a BALRSAM network, got {type(net).__name__}")
        return net

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return trainable_state_dict(self.model)

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True) -> None:
        load_trainable_state_dict(self.model, state_dict)


class AtomicCheckpointSaver:
    """Save ``save_dict`` every ``interval`` epochs (and/or iterations), atomically, keeping ``n_saved``.

    Ignite's :class:`~ignite.handlers.Checkpoint` with an atomic :class:`~ignite.handlers.DiskSaver`
    (temporary file + rename): a crash during a save never corrupts the previous checkpoint. Files
    are named ``{prefix}_checkpoint_{iteration}.pt``. Only rank 0 writes under DDP (Ignite's rule).

    Args:
        save_dir: folder of the checkpoints (created).
        save_dict: name -> object with ``state_dict()`` (network via :class:`TrainableWeights`,
            optimizer, lr scheduler, trainer).
        epoch_interval: save every N epochs (0: never at epoch end).
        iteration_interval: also save every N iterations (0: never), for resuming long epochs.
        n_saved: how many recent checkpoints to keep.
        prefix: file name prefix.
    """

    def __init__(self, save_dir: Union[str, Path], save_dict: Mapping[str, Any], epoch_interval: int = 1, iteration_interval: int = 0, n_saved: int = 1, prefix: str = "train") -> None:
        self.save_dir = Path(save_dir)
        self.epoch_interval = epoch_interval
        self.iteration_interval = iteration_interval
        self.checkpoint = Checkpoint(
            dict(save_dict),
            DiskSaver(str(self.save_dir), require_empty=False, atomic=True, create_dir=True),
            filename_prefix=prefix,
            n_saved=n_saved,
            global_step_transform=lambda engine, _: engine.state.iteration,
        )

    def attach(self, engine: Engine) -> None:
        if self.epoch_interval > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.epoch_interval), self.checkpoint)
        if self.iteration_interval > 0:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.iteration_interval), self.checkpoint)


def latest_checkpoint(save_dir: Union[str, Path], prefix: str = "train") -> Optional[str]:
    """Path of the checkpoint with the highest iteration in ``save_dir`` (``None`` if there is none)."""
    folder = Path(save_dir)
    if not folder.is_dir():
        return None
    pattern = re.compile(rf"^{re.escape(prefix)}_checkpoint_(\d+)\.pt$")
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := pattern.match(p.name))]
    return str(max(found)[1]) if found else None


class StopOnNonFiniteLoss:
    """Stop training with a clear error when the loss becomes NaN or infinite.

    The last good checkpoint is left untouched: Ignite runs handlers in the order they were
    attached, so with this handler listed before the checkpoint saver (as the bundle's
    ``train_handlers`` do) the error is raised before a diverged state could be saved.

    Args:
        output_transform: picks the loss from ``engine.state.output`` (MONAI's trainer output is a
            list of dicts, one per sample, or a dict with key ``"loss"``).
    """

    def __init__(self, output_transform=None) -> None:
        self.output_transform = output_transform or _loss_from_output

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        loss = self.output_transform(engine.state.output)
        if loss is not None and not math.isfinite(float(loss)):
            raise FloatingPointError(
                f"training stopped: the loss is {float(loss)} at epoch {engine.state.epoch}, iteration {engine.state.iteration}; "
                "the last checkpoint written before this iteration is intact (lower the learning rate or check the data)"
            )


def _loss_from_output(output: Any) -> Optional[float]:
    if isinstance(output, Mapping):
        loss = output.get("loss")
    elif isinstance(output, (list, tuple)) and output and isinstance(output[0], Mapping):
        loss = output[0].get("loss")
    else:
        loss = output
    if loss is None:
        return None
    return float(loss.detach().item() if isinstance(loss, torch.Tensor) else loss)
