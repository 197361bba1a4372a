"""Batch inference over a folder of CT volumes (NIfTI, DICOM series) or 2D images, through the bundle.

The components (network, preprocessing, inferer, postprocessing) come from the bundle's
``inference.json``; this module drives them case by case with the guarantees an unattended
pipeline needs:

* one label map per case, ``<case>.nii.gz`` (``<case>.png`` for 2D images), in the input's exact
  shape, affine and orientation, plus a ``<case>.json`` sidecar naming the labels;
* finished cases are skipped on a re-run (``overwrite=False``); nothing existing is replaced
  unless asked;
* every file is written to a temporary name in the output folder and renamed into place, so an
  interrupted run never leaves a half-written output (:mod:`balr_sam.inference.writers`);
* a per-case lock file keeps two processes on the same output folder from writing the same case;
  locks of dead processes are taken over (:mod:`balr_sam.inference.locks`);
* a bad case is reported with a one-line error and the others go on; the caller gets the list of
  failures (the command exits non-zero if any);
* optionally the next case is read in a background thread while the current one is segmented
  (``balr-sam infer --prefetch``, on by default on CUDA); volumes are segmented slab by slab, with
  memory bounded by the input (:mod:`balr_sam.inference.streaming`);
* under ``torchrun`` the case list is split across ranks (every case is written exactly once).
"""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple

import numpy as np

from balr_sam.atomic import atomic_write_text, partial_files
from balr_sam.data.io import IMAGE2D_SUFFIXES, VOLUME_SUFFIXES, is_dicom_series_dir, list_folder, strip_suffix
from balr_sam.errors import DataError, first_line
from balr_sam.inference.locks import CaseLock
from balr_sam.inference.writers import case_sidecar, write_label_nifti, write_label_png
from balr_sam.types import PathLike

__all__ = [
    "InferenceItem",
    "InferenceReport",
    "find_inputs",
    "split_for_rank",
    "rank_and_world_size",
    "StagedPredictor",
    "run_batch_inference",
]


@dataclass(frozen=True)
class InferenceItem:
    """One case: ``case`` name (output stem), ``image`` path (file or DICOM folder), ``kind`` (``volume``/``image2d``)."""

    case: str
    image: str
    kind: str


@dataclass
class InferenceReport:
    """What a batch run did: cases written, skipped (done or locked by another process) and failed."""

    written: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    failed: List[Tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


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

    Returns:
        the :class:`InferenceReport`; failures carry ``(case, one-line reason)``.
    """
    from tqdm.auto import tqdm

    from balr_sam.data.transforms import find_data_error

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

    bar = tqdm(items, desc="infer", unit="case", disable=not progress)
    try:
        for index, item in enumerate(bar):
            output = output_of(item)
            if output.exists() and not overwrite:
                loads.pop(index, None)
                report.skipped.append(item.case)
                continue
            with CaseLock(output) as lock:
                # re-checked under the lock: another process may have finished the case meanwhile
                if not lock.acquired or (output.exists() and not overwrite):
                    loads.pop(index, None)
                    report.skipped.append(item.case)
                    continue
                sidecar = out_dir / f"{item.case}.json"
                # leftovers of a writer killed mid-write: holding the lock, no live process owns them
                for stale in partial_files(out_dir, lambda name: name in (output.name, sidecar.name)):
                    stale.unlink(missing_ok=True)
                schedule(index)
                schedule(index + 1)  # read the next case while this one is segmented
                try:
                    if executor is not None:
                        labels, affine = predict.segment(item, loads.pop(index).result())  # type: ignore[attr-defined]
                    else:
                        labels, affine = predict(item)
                    text = json.dumps(case_sidecar(item.case, item.image, output, label_names, model_name), indent=2) + "\n"
                    atomic_write_text(sidecar, text, ".json")
                    if item.kind == "image2d":
                        write_label_png(output, labels)
                    else:
                        write_label_nifti(output, labels, affine)
                    report.written.append(item.case)
                except Exception as err:  # one bad case must not stop the others
                    data_error = find_data_error(err)
                    reason = str(data_error) if data_error is not None else f"{item.image}: {first_line(err, with_type=True)}"
                    report.failed.append((item.case, reason))
                    log(f"balr-sam infer: case {item.case} failed: {reason}")
    finally:
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
    return report
