"""Whole CT volumes through the product's own inference path, as ``balr-sam infer`` runs it.

A synthetic CT volume (int16 noise in [-1000, 1000) HU, 0.8 x 0.8 x 3 mm, RAS, written with
nibabel; not timed) is segmented by :func:`segment_file`, which is what ``balr-sam infer``'s
``BundlePredictor`` does for a volume: the bundle's ``ct_inference_preprocessing`` (read the
NIfTI, reorient, HU window, resize in-plane to the model's size) feeds a
:class:`~balr_sam.inference.StreamingVolumeSegmenter` (slabs of ``infer_batch`` slices
through the network, the in-plane resize undone on the logits, argmax into ``uint8`` labels,
the reorientation undone on the labels), and :func:`~balr_sam.inference.write_label_nifti`
writes the label map in the input's geometry.

* :func:`measure_volume`: seconds for one volume, end to end, per trained configuration (each in
  its inference form), interleaved;
* :func:`measure_batch_inference`: seconds for ``batch_cases`` volumes through
  :func:`~balr_sam.inference.run_batch_inference` (BALR-SAM), reading the next case ahead or not.
"""

from __future__ import annotations

import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from balr_sam.benchmark.baselines import TRAIN_CONFIGS, build_config, inference_form
from balr_sam.benchmark.measurements import Log, Settings
from balr_sam.benchmark.timing import median, sync, timed
from balr_sam.data.pipelines import ct_inference_preprocessing
from balr_sam.inference import InferenceItem, find_inputs, run_batch_inference, write_label_nifti
from balr_sam.inference.streaming import LoadedVolume, StreamingVolumeSegmenter

__all__ = ["write_synthetic_ct", "volume_segmenter", "segment_file", "measure_volume", "measure_batch_inference"]

#: Voxel spacing (mm) of the synthetic CT volumes.
SPACING = (0.8, 0.8, 3.0)


def write_synthetic_ct(path: Path, shape: Sequence[int], seed: int = 0) -> Path:
    """Write an ``X x Y x Z`` int16 NIfTI of uniform noise in [-1000, 1000) HU (RAS, :data:`SPACING`).

    Returns:
        ``path``.
    """
    import nibabel as nib

    data = np.random.default_rng(seed).integers(-1000, 1000, size=tuple(int(s) for s in shape), dtype=np.int16)
    affine = np.diag([*SPACING, 1.0])
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, str(path))
    return path


def volume_segmenter(model: nn.Module, settings: Settings) -> StreamingVolumeSegmenter:
    """The streamed segmenter ``balr-sam infer`` builds, around ``model`` (in inference form).

    ``ct_inference_preprocessing(img_size)`` as the bundle's ``inference.json``, slabs of
    ``infer_batch`` slices, autocast when ``amp`` is set on CUDA.
    """
    preprocessing = ct_inference_preprocessing(img_size=settings["img_size"])
    return StreamingVolumeSegmenter(model, preprocessing, settings["infer_batch"], torch.device(settings["device"]), settings["amp"])


def segment_file(segmenter: StreamingVolumeSegmenter, source: Path, output: Path) -> np.ndarray:
    """Segment the volume ``source`` and write its label map to ``output`` (NIfTI, the input's geometry).

    Returns:
        the ``X x Y x Z`` uint8 labels written.
    """
    labels, affine = segmenter(str(source))
    write_label_nifti(output, labels, affine)
    return labels


def measure_volume(settings: Settings, log: Log) -> Dict[str, Any]:
    """End-to-end seconds of :func:`segment_file` for one ``volume_shape`` volume per trained
    configuration (inference form; BALR-SAM with SDPA unless ``fast_attention`` is off),
    median of ``volume_repeats`` interleaved rounds.

    Returns:
        ``{config: {"seconds", "shape"}}``.

    Raises:
        RuntimeError: a label map does not have the input's shape.
    """
    shape = tuple(int(s) for s in settings["volume_shape"])
    segmenters = {}
    for name in TRAIN_CONFIGS:
        sdpa = name == "balr_sam" and settings["fast_attention"] != "off"
        model = inference_form(build_config(name, settings["variant"], settings["img_size"], settings["num_classes"], settings["device"], sdpa))
        segmenters[name] = volume_segmenter(model, settings)
    times: Dict[str, List[float]] = {name: [] for name in segmenters}
    with tempfile.TemporaryDirectory() as tmp:
        source = write_synthetic_ct(Path(tmp) / "ct.nii.gz", shape)  # not timed
        for i in range(settings["volume_repeats"]):
            for name, segmenter in segmenters.items():
                output = Path(tmp) / f"{name}.nii.gz"
                times[name].append(timed(settings["device"], partial(segment_file, segmenter, source, output)))
            log(f"volume round {i + 1}/{settings['volume_repeats']}")
        for name in segmenters:
            written = _nifti_shape(Path(tmp) / f"{name}.nii.gz")
            if written != shape:
                raise RuntimeError(f"volume benchmark: {name} wrote a {written} label map for a {shape} volume")
    return {name: {"seconds": median(t), "shape": list(shape)} for name, t in times.items()}


def _nifti_shape(path: Path) -> Tuple[int, ...]:
    import nibabel as nib

    return tuple(int(s) for s in nib.load(str(path)).shape)


class _StagedCases:
    """``balr-sam infer``'s staged predictor protocol (``load`` + ``segment``) over a segmenter."""

    def __init__(self, segmenter: StreamingVolumeSegmenter) -> None:
        self.segmenter = segmenter

    def load(self, item: InferenceItem) -> LoadedVolume:
        return self.segmenter.load(item.image)

    def segment(self, item: InferenceItem, loaded: LoadedVolume) -> Tuple[np.ndarray, np.ndarray]:
        return self.segmenter.segment(loaded)

    def __call__(self, item: InferenceItem) -> Tuple[np.ndarray, np.ndarray]:
        return self.segment(item, self.load(item))


def measure_batch_inference(settings: Settings, log: Log) -> Dict[str, Any]:
    """Seconds for ``batch_cases`` volumes through the product's batch path
    (:func:`~balr_sam.inference.run_batch_inference` with the streamed segmenter, BALR-SAM in
    inference form), reading the next case ahead or not, interleaved.

    Returns:
        ``{"cases", "shape", "sequential", "read_ahead"}`` (median seconds).

    Raises:
        RuntimeError: a case failed.
    """
    sdpa = settings["fast_attention"] != "off"
    model = inference_form(build_config("balr_sam", settings["variant"], settings["img_size"], settings["num_classes"], settings["device"], sdpa))
    predictor = _StagedCases(volume_segmenter(model, settings))
    times: Dict[str, List[float]] = {"sequential": [], "read_ahead": []}
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "in"
        inputs.mkdir()
        for i in range(settings["batch_cases"]):
            write_synthetic_ct(inputs / f"case{i}.nii.gz", settings["volume_shape"])  # not timed
        items = find_inputs(inputs)
        for i in range(settings["volume_repeats"]):
            for mode in times:
                out = Path(tmp) / f"out_{mode}_{i}"
                sync(settings["device"])
                start = time.perf_counter()
                report = run_batch_inference(items, out, predictor, {0: "background"}, progress=False, prefetch=mode == "read_ahead")
                sync(settings["device"])
                times[mode].append(time.perf_counter() - start)
                if not report.ok:
                    raise RuntimeError(f"batch inference benchmark failed: {report.failed}")
            log(f"batch round {i + 1}/{settings['volume_repeats']}")
    return {"cases": settings["batch_cases"], "shape": list(settings["volume_shape"]), **{mode: median(t) for mode, t in times.items()}}
