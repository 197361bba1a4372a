"""Ignite handlers: trainable-only atomic checkpoints, resuming, and stopping on a non-finite loss."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from ignite.handlers.checkpoint import BaseSaveHandler

from balr_sam.atomic import atomic_write, partial_files
from balr_sam.engine.determinism import RandomStates, ReplayedEpoch
from balr_sam.errors import CheckpointError, find_error
from balr_sam.inference.weights import load_trained_weights, unwrap_balr_sam
from balr_sam.networks.balr_sam import BALRSAM
from balr_sam.networks.checkpoint import safe_torch_load
from balr_sam.networks.trainable import load_trainable_state_dict, save_trainable_checkpoint, trainable_state_dict

__all__ = [
    "TrainableWeights",
    "LoadTrainedModel",
    "AtomicCheckpointSaver",
    "ResumeFromCheckpoint",
    "SaveBestModel",
    "SaveFinalModel",
    "latest_checkpoint",
    "remove_partial_checkpoints",
    "NonFiniteLossError",
    "StopOnNonFiniteLoss",
    "run_training",
]

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
        return unwrap_balr_sam(self.network)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return trainable_state_dict(self.model)

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True) -> None:
        load_trainable_state_dict(self.model, state_dict)


class _AtomicTorchSave(BaseSaveHandler):
    """Ignite save handler: ``torch.save`` to a temporary file beside the target, renamed into place.

    A process killed during a save leaves the previous checkpoint intact and, at worst, a hidden
    ``.{name}.XXXX.part`` file that :func:`remove_partial_checkpoints` deletes. Only rank 0 writes.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Optional[Mapping] = None) -> None:
        if _rank() == 0:
            atomic_write(self.folder / filename, lambda tmp: torch.save(checkpoint, tmp))

    def remove(self, filename: str) -> None:
        """Nothing: Ignite's ``Checkpoint`` removes the oldest file *before* writing the new one, so a
        kill during that write would leave no checkpoint at all; :meth:`AtomicCheckpointSaver.save`
        deletes old files once the new one is in place instead."""


class AtomicCheckpointSaver:
    """Save everything training needs to resume, every ``epoch_interval`` epochs and/or ``iteration_interval`` iterations.

    Files are named ``{prefix}_checkpoint_{iteration}.pt``; the ``n_saved`` most recent are kept
    (older ones, and those of an earlier run that was not resumed, are deleted once the new one is
    in place: Ignite's own order, delete then write, could leave no checkpoint at all). Each is
    written atomically (temporary file + rename, :func:`balr_sam.atomic.atomic_write`), so a kill
    during a save never leaves a partial file under a checkpoint's name. Besides ``save_dict``, a
    checkpoint holds the attached engine under ``"trainer"`` (epoch, iteration), the global random
    generators under ``"random_states"`` (:class:`~balr_sam.engine.determinism.RandomStates`) and,
    with AMP, MONAI's ``GradScaler`` under ``"grad_scaler"``, so configs need not reference the
    trainer from its own handlers. Only rank 0 writes under DDP.

    A save due at the last iteration of an epoch is made at ``EPOCH_COMPLETED`` instead, after
    the epoch-end handlers listed before this one (validation, best-model selection), so a run
    resumed from it never skips an epoch's validation.

    Args:
        save_dir: folder of the checkpoints (created).
        save_dict: name -> object with ``state_dict()`` (network via :class:`TrainableWeights`,
            optimizer, lr scheduler).
        epoch_interval: save every N epochs (0: never at epoch end, unless an iteration save falls there).
        iteration_interval: also save every N iterations (0: never), so that an interrupted long
            epoch resumes where it was (see :mod:`balr_sam.engine.determinism`).
        n_saved: how many recent checkpoints to keep.
        prefix: file name prefix.
    """

    def __init__(
        self,
        save_dir: Union[str, Path],
        save_dict: Mapping[str, Any],
        epoch_interval: int = 1,
        iteration_interval: int = 0,
        n_saved: int = 1,
        prefix: str = "train",
    ) -> None:
        if epoch_interval < 0 or iteration_interval < 0:
            raise ValueError(f"checkpoint intervals must be >= 0, got epoch_interval={epoch_interval}, iteration_interval={iteration_interval}")
        self.save_dir = Path(save_dir)
        self.save_dict = dict(save_dict)
        self.epoch_interval = epoch_interval
        self.iteration_interval = iteration_interval
        self.n_saved = n_saved
        self.prefix = prefix
        self.checkpoint: Optional[Checkpoint] = None

    def attach(self, engine: Engine) -> None:
        to_save = {**self.save_dict, "trainer": engine, "random_states": RandomStates()}
        scaler = _grad_scaler(engine)
        if scaler is not None:
            to_save["grad_scaler"] = scaler
        self.save_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint = Checkpoint(
            to_save,
            _AtomicTorchSave(self.save_dir),
            filename_prefix=self.prefix,
            n_saved=self.n_saved,
            global_step_transform=lambda eng, _: eng.state.iteration,
        )
        if self.iteration_interval > 0:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        if self.epoch_interval > 0 or self.iteration_interval > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _iteration_completed(self, engine: Engine) -> None:
        iteration, epoch_length = engine.state.iteration, engine.state.epoch_length
        if iteration % self.iteration_interval == 0 and not (epoch_length and iteration % epoch_length == 0):
            self.save(engine)

    def _epoch_completed(self, engine: Engine) -> None:
        by_epoch = self.epoch_interval > 0 and engine.state.epoch % self.epoch_interval == 0
        by_iteration = self.iteration_interval > 0 and engine.state.iteration % self.iteration_interval == 0
        if by_epoch or by_iteration:
            self.save(engine)

    def save(self, engine: Engine) -> None:
        """Write a checkpoint, then delete older ones beyond ``n_saved`` and leftovers of interrupted saves.

        Checkpoints of a higher iteration than this run's are deleted too: they belong to an earlier
        run this one did not resume (``resume: false``), and would otherwise be what the next
        resume picks up.
        """
        assert self.checkpoint is not None, "attach() first"
        self.checkpoint(engine)
        if _rank() == 0:
            found = _checkpoints(self.save_dir, self.prefix)  # ascending iterations
            keep = [path for iteration, path in found if iteration <= engine.state.iteration][-self.n_saved :]
            for _, path in found:
                if path not in keep:
                    path.unlink(missing_ok=True)
            remove_partial_checkpoints(self.save_dir, self.prefix)


class ResumeFromCheckpoint:
    """Resume training from the latest checkpoint in ``save_dir`` when the engine starts.

    Loads ``load_dict``, the engine's own state (epoch, iteration) and what
    :class:`AtomicCheckpointSaver` adds (AMP grad scaler, random states) with
    ``torch.load(..., weights_only=True)``; with no checkpoint in the folder it does nothing, and
    leftovers of interrupted saves are never taken for checkpoints. The ``max_epochs`` of the
    current configuration wins, so a longer run continues a finished one.

    A checkpoint written in the middle of an epoch (``iteration_interval``) resumes at the next
    iteration of that epoch: the epoch's data is replayed up to there and the random states are
    restored afterwards (:class:`~balr_sam.engine.determinism.ReplayedEpoch`). With
    :class:`~balr_sam.engine.determinism.SeedEachEpoch` attached too, the resumed run then
    reaches the weights of an uninterrupted one.

    Args:
        save_dir: the :class:`AtomicCheckpointSaver` folder.
        load_dict: the same names as the saver's ``save_dict``.
        enabled: ``False`` to start from scratch even if checkpoints exist.
        map_location: device for the loaded tensors.
        prefix: the saver's file name prefix.
    """

    def __init__(
        self, save_dir: Union[str, Path], load_dict: Mapping[str, Any], enabled: bool = True, map_location: Any = "cpu", prefix: str = "train"
    ) -> None:
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
        checkpoint = safe_torch_load(path, map_location=self.map_location)
        to_load = {**self.load_dict, "trainer": engine}
        scaler = _grad_scaler(engine)
        if scaler is not None and checkpoint.get("grad_scaler"):
            to_load["grad_scaler"] = scaler
        missing = sorted(set(to_load) - set(checkpoint))
        if missing:
            raise CheckpointError(f"{path}: no {', '.join(missing)} in this checkpoint; move it away or set resume to false to start from scratch")
        max_epochs = engine.state.max_epochs
        Checkpoint.load_objects(to_load=to_load, checkpoint={k: checkpoint[k] for k in to_load})
        engine.state.max_epochs = max_epochs
        epoch_length = engine.state.epoch_length
        done = engine.state.iteration % epoch_length if epoch_length else 0
        data = engine.state.dataloader
        if done and data is not None:
            if hasattr(data, "__len__") and len(data) != epoch_length:
                logger.warning(
                    "%s: written with %d iterations per epoch, the data now gives %d; the resumed epoch will not match the interrupted one",
                    path,
                    epoch_length,
                    len(data),
                )
            states = checkpoint.get("random_states")
            restore = (lambda: RandomStates().load_state_dict(states)) if states is not None else (lambda: None)
            engine.state.dataloader = ReplayedEpoch(engine, data, done, restore)
        logger.info(
            "resumed from %s at epoch %d, iteration %d (%d iterations into epoch %d)",
            path,
            engine.state.epoch,
            engine.state.iteration,
            done,
            engine.state.epoch + 1,
        )


class SaveBestModel:
    """Write the deployable model (``models/model.pt``) whenever the evaluator's key metric improves.

    The file is a trainable-only BALR-SAM checkpoint (:func:`save_trainable_checkpoint`: weights,
    configuration and base-weight fingerprint, written atomically) that ``inference.json`` and
    ``balr-sam infer`` load on top of the SAM checkpoint. The best value so far is its state
    (``state_dict()``), which the bundle saves with the training checkpoints: a resumed run
    replaces ``model.pt`` only with a better model, as the uninterrupted run would.

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

    def state_dict(self) -> Dict[str, float]:
        return {"best": float(self.best)}

    def load_state_dict(self, state_dict: Mapping[str, float]) -> None:
        self.best = float(state_dict["best"])

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


class LoadTrainedModel:
    """Handler form of :func:`balr_sam.inference.load_trained_weights`: loads ``checkpoint`` when the engine starts.

    Args:
        network: the (possibly wrapped) network of the bundle's ``network_def``.
        checkpoint: the trained ``models/model.pt``.
        merge: fold the adapters into the encoder weights after loading.
        check_base: refuse a checkpoint trained on other SAM base weights.
    """

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


def _grad_scaler(engine: Engine) -> Optional[Any]:
    """The AMP ``GradScaler`` MONAI's trainers create when ``amp=True``, if it is active (it is disabled without CUDA)."""
    scaler = getattr(engine, "scaler", None)
    return scaler if scaler is not None and scaler.is_enabled() else None


def _trainer_epoch(engine: Engine) -> int:
    return int(getattr(engine.state, "epoch", 0))


def latest_checkpoint(save_dir: Union[str, Path], prefix: str = "train") -> Optional[str]:
    """Path of the checkpoint with the highest iteration in ``save_dir`` (``None`` if there is none).

    Only complete files count: :class:`AtomicCheckpointSaver` writes under a hidden temporary
    name and renames, so an interrupted save never matches ``{prefix}_checkpoint_{N}.pt``.
    """
    found = _checkpoints(Path(save_dir), prefix)
    return str(found[-1][1]) if found else None


def remove_partial_checkpoints(save_dir: Union[str, Path], prefix: str = "train") -> List[Path]:
    """Delete the temporary files that saves killed mid-write left in ``save_dir``; returns them."""
    pattern = _checkpoint_name(prefix)
    removed = partial_files(save_dir, lambda name: pattern.match(name) is not None)
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def _checkpoints(folder: Path, prefix: str) -> List[Tuple[int, Path]]:
    """``(iteration, path)`` of the saver's checkpoints in ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    pattern = _checkpoint_name(prefix)
    return sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := pattern.match(p.name)))


def _checkpoint_name(prefix: str) -> "re.Pattern[str]":
    """The saver's file names, ``{prefix}_checkpoint_{iteration}.pt`` (group 1: the iteration)."""
    return re.compile(rf"^{re.escape(prefix)}_checkpoint_(\d+)\.pt$")


class NonFiniteLossError(FloatingPointError):
    """Training met a NaN or infinite loss (raised by :class:`StopOnNonFiniteLoss`)."""


class StopOnNonFiniteLoss:
    """Stop training with a one-line error when the loss becomes NaN or infinite.

    Raises :class:`NonFiniteLossError` ("training stopped: the loss is nan at epoch E, iteration
    I; ...") at ``ITERATION_COMPLETED``. The last good checkpoint is left untouched: Ignite runs
    handlers in the order they were attached, so with this handler listed first (as the bundle's
    ``train_handlers`` do) the error is raised before the LR scheduler steps or a checkpoint saver
    could save the diverged weights, and ``COMPLETED`` handlers (final model) never run. Under DDP
    the ranks agree on it (one all-reduce per iteration): a NaN on one rank spreads to every
    rank's weights through the gradient all-reduce, so every rank must stop, rank 0 included.

    It also takes the engine's first ``EXCEPTION_RAISED`` slot and re-raises there, so that this
    error is not logged again with a traceback by handlers attached later (MONAI's
    ``StatsHandler``); Ignite stops at the first such handler that raises, and any other exception
    still propagates unchanged. :func:`run_training` turns the error into a clean process exit.

    Args:
        output_transform: picks the loss from ``engine.state.output`` (MONAI's trainer output is a
            list of dicts, one per sample, or a dict with key ``"loss"``).
    """

    def __init__(self, output_transform: Optional[Callable[[Any], Optional[float]]] = None) -> None:
        self.output_transform = output_transform or _loss_from_output

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.EXCEPTION_RAISED, _reraise)

    def __call__(self, engine: Engine) -> None:
        loss = self.output_transform(engine.state.output)
        value = float(loss) if loss is not None else 0.0
        finite = math.isfinite(value)
        if not _all_ranks_true(finite):
            where = f"at epoch {engine.state.epoch}, iteration {engine.state.iteration}"
            what = f"the loss is {value} {where}" if not finite else f"the loss is not finite on another process {where}"
            raise NonFiniteLossError(
                f"training stopped: {what}; the last checkpoint, written before this iteration, is intact (lower the learning rate or check the data)"
            )


def _reraise(engine: Engine, error: BaseException) -> None:
    """``EXCEPTION_RAISED`` handler that only lets the error through (see :class:`StopOnNonFiniteLoss`)."""
    raise error


def _all_ranks_true(flag: bool) -> bool:
    """``flag`` AND-ed over the ranks of the default process group (``flag`` itself without one)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    bad = torch.tensor([0.0 if flag else 1.0], device=device)
    dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    return bool(bad.item() == 0.0)


def run_training(trainer: Engine) -> None:
    """Run ``trainer``; a :class:`NonFiniteLossError` or an expected :class:`~balr_sam.errors.BalrSamError`
    (unreadable checkpoint, bad input file) ends the process with its message (exit status 1), not a traceback.

    The bundle's ``run`` section calls this instead of ``trainer.run()``: unattended pipelines see
    the failure in the exit status, people see one line naming the epoch, iteration and loss.
    """
    try:
        trainer.run()
    except Exception as err:
        # a diverged loss, or an expected error (bad checkpoint, bad input file) that Ignite or
        # MONAI may have wrapped: one line; anything else is a bug and keeps its traceback
        expected = err if isinstance(err, NonFiniteLossError) else find_error(err)
        if expected is None:
            raise
        raise SystemExit(f"balr-sam bundle: {expected}") from None


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
