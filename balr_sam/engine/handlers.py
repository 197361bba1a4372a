"""Ignite handlers: trainable-only atomic checkpoints, resuming, and stopping on a non-finite loss."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver

from balr_sam.networks.balr_sam import BALRSAM
from balr_sam.errors import CheckpointError
from balr_sam.networks.trainable import (
    base_fingerprint,
    fingerprints_match,
    load_trainable_checkpoint,
    load_trainable_state_dict,
    save_trainable_checkpoint,
    trainable_state_dict,
)

__all__ = ["TrainableWeights", "LoadTrainedModel", "load_trained_weights", "AtomicCheckpointSaver", "ResumeFromCheckpoint", "SaveBestModel", "SaveFinalModel", "latest_checkpoint", "StopOnNonFiniteLoss"]

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
    """Save ``save_dict`` and the engine every ``epoch_interval`` epochs (and/or iterations), atomically.

    Ignite's :class:`~ignite.handlers.Checkpoint` with an atomic :class:`~ignite.handlers.DiskSaver`
    (temporary file + rename): a crash during a save never corrupts the previous checkpoint. Files
    are named ``{prefix}_checkpoint_{iteration}.pt``; the ``n_saved`` most recent are kept. The
    engine it is attached to is saved under ``"trainer"`` (epoch, iteration), so configs need not
    reference the trainer from its own handlers. Only rank 0 writes under DDP (Ignite's rule).

    Args:
        save_dir: folder of the checkpoints (created).
        save_dict: name -> object with ``state_dict()`` (network via :class:`TrainableWeights`,
            optimizer, lr scheduler).
        epoch_interval: save every N epochs (0: never at epoch end).
        iteration_interval: also save every N iterations (0: never), for resuming long epochs.
        n_saved: how many recent checkpoints to keep.
        prefix: file name prefix.
    """

    def __init__(self, save_dir: Union[str, Path], save_dict: Mapping[str, Any], epoch_interval: int = 1, iteration_interval: int = 0, n_saved: int = 1, prefix: str = "train") -> None:
        self.save_dir = Path(save_dir)
        self.save_dict = dict(save_dict)
        self.epoch_interval = epoch_interval
        self.iteration_interval = iteration_interval
        self.n_saved = n_saved
        self.prefix = prefix
        self.checkpoint: Optional[Checkpoint] = None

    def attach(self, engine: Engine) -> None:
        self.checkpoint = Checkpoint(
            {**self.save_dict, "trainer": engine},
            DiskSaver(str(self.save_dir), require_empty=False, atomic=True, create_dir=True),
            filename_prefix=self.prefix,
            n_saved=self.n_saved,
            global_step_transform=lambda eng, _: eng.state.iteration,
        )
        if self.epoch_interval > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.epoch_interval), self.save)
        if self.iteration_interval > 0:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.iteration_interval), self.save)

    def save(self, engine: Engine) -> None:
        """Write a checkpoint, then drop older ones beyond ``n_saved``, also those of earlier runs."""
        assert self.checkpoint is not None, "attach() first"
        self.checkpoint(engine)
        if _rank() == 0:
            for old in _checkpoints(self.save_dir, self.prefix)[: -self.n_saved]:
                old[1].unlink(missing_ok=True)


class ResumeFromCheckpoint:
    """Resume training from the latest checkpoint in ``save_dir`` when the engine starts.

    Loads ``load_dict`` and the engine's own state (epoch, iteration) with
    ``torch.load(..., weights_only=True)``; with no checkpoint in the folder it does nothing.

    Args:
        save_dir: the :class:`AtomicCheckpointSaver` folder.
        load_dict: the same names as the saver's ``save_dict``.
        enabled: ``False`` to start from scratch even if checkpoints exist.
        map_location: device for the loaded tensors.
        prefix: the saver's file name prefix.
    """

    def __init__(self, save_dir: Union[str, Path], load_dict: Mapping[str, Any], enabled: bool = True, map_location: Any = "cpu", prefix: str = "train") -> None:
        self.save_dir = Path(save_dir)
        self.load_dict = dict(load_dict)
        self.enabled = enabled
        self.map_location = map_location
        self.prefix = prefix

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        path = latest_checkpoint(self.save_dir, self.prefix) if self.enabled else None
        if path is None:
            return
        checkpoint = torch.load(path, map_location=self.map_location, weights_only=True)
        max_epochs = engine.state.max_epochs
        Checkpoint.load_objects(to_load={**self.load_dict, "trainer": engine}, checkpoint=checkpoint)
        if max_epochs is not None and engine.state.epoch >= max_epochs:
            engine.state.max_epochs = max_epochs  # a longer run continues from the checkpoint
        else:
            engine.state.max_epochs = max_epochs
        logger.info("resumed from %s at epoch %d, iteration %d", path, engine.state.epoch, engine.state.iteration)


class SaveBestModel:
    """Write the deployable model (``models/model.pt``) whenever the evaluator's key metric improves.

    The file is a trainable-only BALR-SAM checkpoint (:func:`save_trainable_checkpoint`: weights,
    configuration and base-weight fingerprint, written atomically) that ``inference.json`` and
    ``balr-sam infer`` load on top of the SAM checkpoint.

    Args:
        network: the (possibly DDP-wrapped) BALR-SAM network.
        path: output file.
        metric_name: the evaluator's metric to maximise (default: its key metric).
    """

    def __init__(self, network: torch.nn.Module, path: Union[str, Path], metric_name: Optional[str] = None) -> None:
        self.weights = TrainableWeights(network)
        self.path = Path(path)
        self.metric_name = metric_name
        self.best = -math.inf

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if _rank() != 0:
            return
        name = self.metric_name or engine.state.key_metric_name
        value = float(engine.state.metrics[name])
        if math.isfinite(value) and value > self.best:
            self.best = value
            size = save_trainable_checkpoint(self.weights.model, self.path, extra={"metric": name, "value": value, "epoch": _trainer_epoch(engine)})
            logger.info("saved best model (%s = %.4f) to %s (%.1f MB)", name, value, self.path, size / 1e6)


# configuration values that change how the network runs, not its weights
_RUNTIME_OPTIONS = ("adapter_dropout", "fast_attention")


def load_trained_weights(network: torch.nn.Module, checkpoint: Union[str, Path], merge: bool = True, check_base: bool = True) -> BALRSAM:
    """Load a trained ``models/model.pt`` into a BALR-SAM network built from the same configuration.

    Args:
        network: the (possibly wrapped) network of the bundle's ``network_def``.
        checkpoint: a file written by :class:`SaveBestModel` / ``save_trainable_checkpoint``.
        merge: fold the adapters into the encoder weights afterwards (inference).
        check_base: refuse a checkpoint trained on other SAM base weights.

    Raises:
        CheckpointError: unreadable file, other architecture (variant, classes, input size,
            ranks), or other SAM base weights.
    """
    model = TrainableWeights(network).model
    payload = load_trainable_checkpoint(checkpoint)
    trained, built = payload["config"], model.config.to_dict()
    different = {k: (trained.get(k), v) for k, v in built.items() if k in trained and trained[k] != v and k not in _RUNTIME_OPTIONS}
    if different:
        detail = ", ".join(f"{k}: checkpoint {a!r}, bundle config {b!r}" for k, (a, b) in sorted(different.items()))
        raise CheckpointError(f"{checkpoint}: was trained with another network configuration ({detail}); set the bundle's values to the checkpoint's")
    if check_base:
        bad = fingerprints_match(payload["base_fingerprint"], base_fingerprint(model))
        if bad:
            raise CheckpointError(
                f"{checkpoint}: was trained on other SAM base weights than the bundle's sam_checkpoint "
                f"({len(bad)} base tensors differ, e.g. {', '.join(bad[:3])}); pass the SAM checkpoint used for training"
            )
    load_trainable_state_dict(model, payload["model"], source=str(checkpoint))
    if merge:
        model.merge_adapters()
    return model


class LoadTrainedModel:
    """Handler form of :func:`load_trained_weights`: loads ``checkpoint`` when the engine starts."""

    def __init__(self, network: torch.nn.Module, checkpoint: Union[str, Path], merge: bool = True, check_base: bool = True) -> None:
        self.network = network
        self.checkpoint = checkpoint
        self.merge = merge
        self.check_base = check_base

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        load_trained_weights(self.network, self.checkpoint, merge=self.merge, check_base=self.check_base)
        logger.info("loaded trained weights from %s", self.checkpoint)


class SaveFinalModel:
    """When training completes, write the deployable model if no validation has written one.

    Runs without a validation split (e.g. the PraNet polyp layout, whose test sets are not used
    for model selection) otherwise end with no ``models/model.pt``; this handler writes the final
    weights there in that case, and leaves a best model chosen by validation untouched.

    Args:
        network: the (possibly DDP-wrapped) BALR-SAM network.
        path: the deployable model file (the same as :class:`SaveBestModel`'s).
    """

    def __init__(self, network: torch.nn.Module, path: Union[str, Path]) -> None:
        self.weights = TrainableWeights(network)
        self.path = Path(path)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if _rank() == 0 and not self.path.exists():
            size = save_trainable_checkpoint(self.weights.model, self.path, extra={"metric": None, "epoch": _trainer_epoch(engine)})
            logger.info("no validation result: saved the final model to %s (%.1f MB)", self.path, size / 1e6)


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _trainer_epoch(engine: Engine) -> int:
    return int(getattr(engine.state, "epoch", 0))


def latest_checkpoint(save_dir: Union[str, Path], prefix: str = "train") -> Optional[str]:
    """Path of the checkpoint with the highest iteration in ``save_dir`` (``None`` if there is none)."""
    found = _checkpoints(Path(save_dir), prefix)
    return str(found[-1][1]) if found else None


def _checkpoints(folder: Path, prefix: str) -> List[Tuple[int, Path]]:
    """``(iteration, path)`` of the saver's checkpoints in ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    pattern = re.compile(rf"^{re.escape(prefix)}_checkpoint_(\d+)\.pt$")
    return sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := pattern.match(p.name)))


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
