"""Batch inference over a folder of CT volumes (NIfTI, DICOM series) or 2D images, through the bundle.

The components (network, preprocessing, inferer, postprocessing) come from the bundle's
``inference.json``; this module drives them case by case with the guarantees an unattended
pipeline needs:

* one label map per case, ``<case>.nii.gz`` (``<case>.png`` for 2D images), in the input's exact
  shape, affine and orientation, plus a ``<case>.json`` sidecar naming the labels;
* finished cases are skipped on a re-run (``overwrite=False``); nothing existing is replaced
  unless asked;
* every file is written to a temporary name in the output folder, flushed to disk and renamed
  into place (:mod:`balr_sam.atomic`, :mod:`balr_sam.inference.writers`), so an interrupted run
  never leaves a half-written output, and a case reported written is on disk;
* a per-case lock file keeps two processes on the same output folder from writing the same case
  (:mod:`balr_sam.inference.locks`: never half-written; locks of dead processes, and unreadable
  ones past a grace period, are taken over; another host's are not);
* no case is silently left out: cases another process holds are waited for (bounded,
  ``wait_for_locks``), then reported as locked, apart from those already done; the command
  exits with :data:`EXIT_LOCKED` (3) then, :data:`EXIT_FAILED` (1) if a case failed;
* a bad case is reported with a one-line error and the others go on;
* optionally the next case is read in a background thread while the current one is segmented
  (``balr-sam infer --prefetch``, on by default on CUDA); volumes are segmented slab by slab, with
  memory bounded by the input (:mod:`balr_sam.inference.streaming`);
* under ``torchrun`` the case list is split across ranks (every case is written exactly once);
  each rank reports (and waits for) its own cases.

Test hook (crash tests only): ``BALR_SAM_FAULT=after:<step>`` makes the process kill itself with
``SIGKILL`` (:func:`balr_sam.atomic.fault_point`) at that step of the first case it writes. The
steps (:data:`FAULT_STEPS`), in the order a case passes them: ``lock-created`` (its lock is in
place), ``sidecar-written`` (``<case>.json`` renamed into place), ``image-temporary-written``
(the label map complete under its temporary name, not yet renamed) and ``renamed`` (the label
map renamed into place, its lock not yet removed). Any other value is refused.
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple

import numpy as np

from balr_sam.atomic import FAULT_ENV, atomic_write_text, fault_point, partial_files
from balr_sam.data.io import IMAGE2D_SUFFIXES, VOLUME_SUFFIXES, is_dicom_series_dir, list_folder, strip_suffix
from balr_sam.errors import BalrSamError, DataError, first_line
from balr_sam.inference.locks import DEFAULT_GRACE_S, CaseLock, LockStatus
from balr_sam.inference.writers import case_sidecar, write_label_nifti, write_label_png
from balr_sam.types import PathLike

__all__ = [
    "EXIT_OK",
    "EXIT_FAILED",
    "EXIT_LOCKED",
    "DEFAULT_WAIT_FOR_LOCKS_S",
    "FAULT_STEPS",
    "InferenceItem",
    "InferenceReport",
    "find_inputs",
    "split_for_rank",
    "rank_and_world_size",
    "StagedPredictor",
    "run_batch_inference",
]

#: exit statuses of ``balr-sam infer``: every case done / a case failed / a case still locked by another process
EXIT_OK, EXIT_FAILED, EXIT_LOCKED = 0, 1, 3
#: how long a run waits by default for the cases another process holds (seconds)
DEFAULT_WAIT_FOR_LOCKS_S = 60.0
#: the steps of ``BALR_SAM_FAULT=after:<step>`` (see the module docstring)
FAULT_STEPS = ("lock-created", "sidecar-written", "image-temporary-written", "renamed")
_LOCK_POLL_S = 1.0  # seconds between retries of locked cases


@dataclass(frozen=True)
class InferenceItem:
    """One case: ``case`` name (output stem), ``image`` path (file or DICOM folder), ``kind`` (``volume``/``image2d``)."""

    case: str
    image: str
    kind: str


@dataclass
class InferenceReport:
    """What a batch run did with the cases it was given.

    Attributes:
        written: cases segmented and written by this run.
        skipped: cases already done (by an earlier run, or by another process while this one waited).
        failed: ``(case, one-line reason)`` of cases that could not be segmented.
        locked: ``(case, who holds the lock)`` of cases another process still held when the wait
            for locks ended: not done, and not done by this run.
    """

    written: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    failed: List[Tuple[str, str]] = field(default_factory=list)
    locked: List[Tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every case has its output (written or skipped)."""
        return not self.failed and not self.locked

    @property
    def exit_status(self) -> int:
        """:data:`EXIT_FAILED` if a case failed, else :data:`EXIT_LOCKED` if a case is still locked, else :data:`EXIT_OK`."""
        return EXIT_FAILED if self.failed else EXIT_LOCKED if self.locked else EXIT_OK

    def summary(self) -> str:
        """``"W written, S skipped, F failed, L locked by another process (a, b)"``."""
        names = f" ({', '.join(case for case, _ in self.locked)})" if self.locked else ""
        return f"{len(self.written)} written, {len(self.skipped)} skipped, {len(self.failed)} failed, {len(self.locked)} locked by another process{names}"


def find_inputs(source: PathLike) -> List[InferenceItem]:
    """Cases in ``source``: a volume file, a 2D image, a DICOM series folder, or a folder of those.

    A folder is scanned one level deep: volume files (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``),
    2D images (``.png``, ``.jpg``, ...) and sub-folders that hold a DICOM series. Hidden files are
    ignored. Case names are file names without suffix (folder names for DICOM series).

    Raises:
        DataError: ``source`` does not exist, or holds nothing to segment.
    """
    path = Path(source)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file() or is_dicom_series_dir(path):
        item = _item(path)
        if item is None:
            raise DataError(f"{path}: not a volume ({', '.join(VOLUME_SUFFIXES)}), a 2D image or a DICOM series folder")
        return [item]
    items = [it for p in list_folder(path) if not p.name.startswith(".") and (it := _item(p)) is not None]
    if not items:
        raise DataError(f"{path}: empty folder: no NIfTI/NRRD/MHA volume, 2D image or DICOM series in it")
    names = [it.case for it in items]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"{path}: several inputs would write the same output: {', '.join(duplicates)}")
    return items


def _item(path: Path) -> Optional[InferenceItem]:
    name = path.name.lower()
    if path.is_dir():
        return InferenceItem(path.name, str(path), "volume") if is_dicom_series_dir(path) else None
    if name.endswith(VOLUME_SUFFIXES):
        return InferenceItem(strip_suffix(path.name), str(path), "volume")
    if name.endswith(IMAGE2D_SUFFIXES):
        return InferenceItem(strip_suffix(path.name), str(path), "image2d")
    return None


def split_for_rank(items: Sequence[InferenceItem], rank: int, world_size: int) -> List[InferenceItem]:
    """The items rank ``rank`` of ``world_size`` processes handles (round robin, disjoint, complete)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"invalid rank {rank} of world size {world_size}")
    return list(items[rank::world_size])


def rank_and_world_size() -> Tuple[int, int]:
    """``(rank, world_size)`` from ``torch.distributed`` if initialised, else from torchrun's variables."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class StagedPredictor(Protocol):
    """A predictor split in two stages, so that reading case ``i + 1`` overlaps segmenting case ``i``."""

    def load(self, item: InferenceItem) -> Any:
        """Read and preprocess ``item`` (runs in a background thread)."""

    def segment(self, item: InferenceItem, loaded: Any) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """``(labels, affine)`` from what :meth:`load` returned."""


def run_batch_inference(
    items: Sequence[InferenceItem],
    output_dir: PathLike,
    predict: Callable[[InferenceItem], Tuple[np.ndarray, Optional[np.ndarray]]],
    label_names: Mapping[Any, str],
    model_name: str = "BALR-SAM",
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr),
    prefetch: bool = False,
    wait_for_locks: float = DEFAULT_WAIT_FOR_LOCKS_S,
    lock_grace: float = DEFAULT_GRACE_S,
) -> InferenceReport:
    """Segment ``items`` one by one with ``predict`` and write the results safely.

    Args:
        items: the cases (see :func:`find_inputs`, :func:`split_for_rank`).
        output_dir: created if needed.
        predict: ``item -> (labels, affine)``: ``labels`` is ``X x Y x Z`` (volumes, in the input's
            voxel grid) or ``H x W`` (2D images, ``affine`` None). A :class:`StagedPredictor`
            (``load`` + ``segment`` methods) is pipelined when ``prefetch`` is set.
        label_names: id -> name, written to each case's sidecar.
        model_name: recorded in the sidecars.
        overwrite: replace existing outputs instead of skipping them.
        progress: tqdm progress bar.
        log: where one-line messages go.
        prefetch: read the next case in a background thread while this one is segmented (at most
            two cases in memory); needs a :class:`StagedPredictor`.
        wait_for_locks: after the first pass, how long (seconds) to keep retrying the cases another
            process holds locked (done by it meanwhile: skipped; released or gone stale: segmented here).
        lock_grace: seconds after which an unreadable or empty lock is stale (:class:`CaseLock`).

    Returns:
        the :class:`InferenceReport`; failures carry ``(case, one-line reason)``, cases still
        locked ``(case, who holds the lock)``.

    Raises:
        BalrSamError: ``$BALR_SAM_FAULT`` names no step of this runner (see the module docstring).
    """
    from tqdm.auto import tqdm

    from balr_sam.data.transforms import find_data_error

    fault = os.environ.get(FAULT_ENV)
    if fault and fault not in {f"after:{step}" for step in FAULT_STEPS}:
        raise BalrSamError(f"{FAULT_ENV}={fault}: not a step of batch inference (after:{', after:'.join(FAULT_STEPS)})")
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = InferenceReport()
    staged = prefetch and callable(getattr(predict, "load", None)) and callable(getattr(predict, "segment", None))
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="balr-sam-read") if staged else None
    loads: Dict[int, Future] = {}

    def output_of(item: InferenceItem) -> Path:
        return out_dir / f"{item.case}{'.png' if item.kind == 'image2d' else '.nii.gz'}"

    def schedule(index: int) -> None:
        if executor is not None and index < len(items) and index not in loads and (overwrite or not output_of(items[index]).exists()):
            loads[index] = executor.submit(predict.load, items[index])  # type: ignore[attr-defined]

    def segment(index: int, item: InferenceItem) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        if executor is None:
            return predict(item)
        future = loads.pop(index, None)
        loaded = future.result() if future is not None else predict.load(item)  # type: ignore[attr-defined]
        return predict.segment(item, loaded)  # type: ignore[attr-defined]

    def attempt(index: int, item: InferenceItem, read_ahead: bool) -> Optional[LockStatus]:
        """Settle one case (written, skipped or failed, into ``report``); the lock's status if another process holds it."""
        output = output_of(item)
        lock = CaseLock(output, grace=lock_grace)
        if output.exists() and not overwrite:
            loads.pop(index, None)
            if lock.path.exists():
                lock.clear_stale()  # a run killed after its rename left its lock behind
            report.skipped.append(item.case)
            return None
        with lock:
            if not lock.acquired:
                loads.pop(index, None)
                return lock.holder
            fault_point("lock-created")
            # re-checked under the lock: another process may have finished the case meanwhile
            if output.exists() and not overwrite:
                loads.pop(index, None)
                report.skipped.append(item.case)
                return None
            sidecar = out_dir / f"{item.case}.json"
            # leftovers of a writer killed mid-write: holding the lock, no live process owns them
            for stale in partial_files(out_dir, lambda name: name in (output.name, sidecar.name)):
                stale.unlink(missing_ok=True)
            lock.remove_leftovers()
            if read_ahead:
                schedule(index)
                schedule(index + 1)  # read the next case while this one is segmented
            try:
                labels, affine = segment(index, item)
                text = json.dumps(case_sidecar(item.case, item.image, output, label_names, model_name), indent=2) + "\n"
                atomic_write_text(sidecar, text, ".json")
                fault_point("sidecar-written")
                if item.kind == "image2d":
                    write_label_png(output, labels)
                else:
                    write_label_nifti(output, labels, affine)
                fault_point("renamed")
                report.written.append(item.case)
            except Exception as err:  # one bad case must not stop the others
                data_error = find_data_error(err)
                reason = str(data_error) if data_error is not None else f"{item.image}: {first_line(err, with_type=True)}"
                report.failed.append((item.case, reason))
                log(f"balr-sam infer: case {item.case} failed: {reason}")
        return None

    held: List[Tuple[int, InferenceItem, LockStatus]] = []
    try:
        for index, item in enumerate(tqdm(items, desc="infer", unit="case", disable=not progress)):
            status = attempt(index, item, read_ahead=True)
            if status is not None:
                held.append((index, item, status))
        # cases another process holds: wait (bounded) for it to finish them, or for its lock to go stale
        deadline = time.monotonic() + max(0.0, wait_for_locks)
        if held:
            log(f"balr-sam infer: {len(held)} case(s) locked by another process, waiting up to {wait_for_locks:g} s: {', '.join(it.case for _, it, _ in held)}")
        while held and time.monotonic() < deadline:
            time.sleep(min(_LOCK_POLL_S, max(0.0, deadline - time.monotonic())))
            still = []
            for index, item, _ in held:
                status = attempt(index, item, read_ahead=False)
                if status is not None:
                    still.append((index, item, status))
            held = still
    finally:
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
    report.locked.extend((item.case, status.reason) for _, item, status in held)
    return report
