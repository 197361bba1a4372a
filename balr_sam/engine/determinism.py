"""Reproducible, resumable training: per-epoch seeding, random-state snapshots, mid-epoch replay.

A training run killed at any point and resumed from its last checkpoint reaches the same weights as
an uninterrupted run with the same seed (to the bit on CPU with the same thread settings; on GPU
as far as its kernels are deterministic), because everything that decides the remaining
iterations is either saved in the checkpoint or a function of what is saved:

- weights, optimizer, LR scheduler, AMP grad scaler and the trainer's epoch and iteration: saved
  by :class:`~balr_sam.engine.AtomicCheckpointSaver`;
- the data order and augmentations of an epoch: a function of ``(seed, epoch)``.
  :class:`SeedEachEpoch` reseeds the torch (CPU and CUDA), NumPy and Python generators and the
  dataset's MONAI random transforms when an epoch starts, before Ignite creates the epoch's
  DataLoader iterator, so the sampler's permutation (``RandomSampler`` draws its seed from torch's
  generator), the workers' seeds (``base_seed``, from which MONAI's ``worker_init_fn`` seeds the
  transforms in each worker) and the transforms' streams of the main process all follow from it;
- the position within the epoch: a run resumed from a checkpoint written after the ``k``-th
  iteration of an epoch replays that epoch's first ``k`` batches (loads them, no forward pass),
  which brings the sampler and the transforms to where the interrupted run was, then restores the
  random states saved in the checkpoint (:class:`RandomStates`), which covers the draws of the
  network itself (dropout) since the epoch started. This is Ignite's ``DeterministicEngine`` idea
  without replacing MONAI's trainer class, and it does not depend on the sampler or the number of
  DataLoader workers.

Replaying costs loading at most one epoch of batches; checkpoints written at epoch ends need none.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Callable, Dict, Iterable, Iterator, Mapping, Optional

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data.utils import set_rnd

__all__ = ["epoch_seed", "seed_everything", "RandomStates", "SeedEachEpoch", "ReplayedEpoch"]

logger = logging.getLogger(__name__)


def epoch_seed(seed: int, epoch: int) -> int:
    """A 32-bit seed for ``epoch`` of a run seeded with ``seed`` (well mixed: runs with nearby seeds do not share epochs)."""
    return int(np.random.SeedSequence([int(seed) % 2**32, int(epoch)]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (torch's on every CUDA device too)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class RandomStates:
    """State-dict view of the global random generators: torch (CPU, current CUDA device), NumPy, Python.

    Stored as tensors and numbers only, so checkpoints holding it still load with
    ``torch.load(..., weights_only=True)``. Under DDP only rank 0's states are saved; every rank
    draws the same sequence from these generators (same seed, same operations), so restoring
    rank 0's states on all ranks is exact. The CUDA state saved is the current device's, which
    is the one each rank uses.
    """

    def state_dict(self) -> Dict[str, Any]:
        _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
        version, python_state, gauss_next = random.getstate()
        states: Dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
            "python": {"version": int(version), "state": torch.tensor(python_state, dtype=torch.int64), "gauss_next": gauss_next},
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            states["cuda"] = torch.cuda.get_rng_state()
        return states

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"].cpu())
        np_state = state_dict["numpy"]
        np.random.set_state(("MT19937", np_state["keys"].cpu().numpy().astype(np.uint32), np_state["pos"], np_state["has_gauss"], np_state["cached_gaussian"]))
        py_state = state_dict["python"]
        random.setstate((py_state["version"], tuple(int(v) for v in py_state["state"].tolist()), py_state["gauss_next"]))
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state(state_dict["cuda"].cpu())


class SeedEachEpoch:
    """Reseed every random generator of training when an epoch starts, from ``(seed, epoch)``.

    Makes each epoch's data order, augmentations and dropout a function of the seed and the epoch
    number alone, so a resumed run (see the module docstring) continues exactly. Attach it to the
    trainer; it runs at ``EPOCH_STARTED``, which Ignite fires before it creates the epoch's
    DataLoader iterator.

    Args:
        seed: the run's seed (the bundle's ``seed``); ``None`` leaves the generators alone (a run
            that is not reproducible, and resumes only approximately).
        dataset: the dataset whose MONAI random transforms are reseeded too (default: the
            dataset of the data the trainer runs on). A ``DataLoader`` with workers reseeds them
            in each worker from its ``base_seed`` anyway; without workers, MONAI's DataLoader
            seeds them only once, when it is built, so this handler does it for every epoch.
    """

    def __init__(self, seed: Optional[int], dataset: Optional[Any] = None) -> None:
        self.seed = seed
        self.dataset = dataset

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if self.seed is None:
            return
        seed = epoch_seed(self.seed, engine.state.epoch)
        seed_everything(seed)
        dataset = self.dataset if self.dataset is not None else getattr(engine.state.dataloader, "dataset", None)
        if dataset is not None:
            set_rnd(dataset, seed)


class ReplayedEpoch:
    """Stands in for the trainer's data for one epoch: skips its first ``skip`` batches, then runs a callback.

    Iterating it the first time puts ``data`` back as the engine's data (later epochs iterate
    ``data`` itself), creates the iterator of ``data``, draws ``skip`` batches from it and calls
    ``then()`` (restoring the checkpoint's random states) before the engine takes the next batch.

    Args:
        engine: the trainer whose ``state.dataloader`` this object replaces.
        data: the trainer's data loader.
        skip: batches already trained on in this epoch.
        then: called once the batches are skipped.
    """

    def __init__(self, engine: Engine, data: Iterable, skip: int, then: Callable[[], None]) -> None:
        self.engine = engine
        self.data = data
        self.skip = skip
        self.then = then

    @property
    def dataset(self) -> Any:
        """The data loader's dataset (for :class:`SeedEachEpoch`)."""
        return getattr(self.data, "dataset", None)

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator:
        self.engine.state.dataloader = self.data
        iterator = iter(self.data)
        for done in range(self.skip):
            try:
                next(iterator)
            except StopIteration:
                raise RuntimeError(
                    f"cannot resume in the middle of the epoch: the data has {done} batches, the checkpoint was written after {self.skip}"
                ) from None
        logger.info("replayed the %d batches of this epoch trained on before the checkpoint", self.skip)
        self.then()
        return iterator
