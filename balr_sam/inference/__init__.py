"""Inference: segment cases with a trained BALR-SAM bundle.

* :mod:`~balr_sam.inference.batch`: the batch runner (inputs of a folder, the split across
  ``torchrun`` ranks, one case after the other with skipping, locks and per-case errors, and
  the report of what was done);
* :mod:`~balr_sam.inference.locks`: the per-case lock files (never half-written; stale ones taken over);
* :mod:`~balr_sam.inference.writers`: label maps (NIfTI, PNG) and JSON sidecars, written atomically;
* :mod:`~balr_sam.inference.streaming`: whole volumes segmented slab by slab, memory bounded by the input;
* :mod:`~balr_sam.inference.predictor`: the bundle's inference components (``configs/inference.json``)
  with the trained weights, one case at a time;
* :mod:`~balr_sam.inference.weights`: the one loader of trained weights (``models/model.pt``).

``balr-sam infer`` (:mod:`balr_sam.commands.infer`) parses the command line and calls these.
"""

from balr_sam.inference.batch import (
    EXIT_FAILED,
    EXIT_LOCKED,
    EXIT_OK,
    InferenceItem,
    InferenceReport,
    StagedPredictor,
    find_inputs,
    rank_and_world_size,
    run_batch_inference,
    split_for_rank,
)
from balr_sam.inference.locks import CaseLock, LockOwner, LockStatus, inspect_lock
from balr_sam.inference.predictor import BundlePredictor, config_file, default_bundle_dir
from balr_sam.inference.streaming import LoadedVolume, StreamingVolumeSegmenter, transforms_before_resize
from balr_sam.inference.weights import load_balr_sam, load_trained_weights, unwrap_balr_sam
from balr_sam.inference.writers import case_sidecar, write_label_nifti, write_label_png

__all__ = [
    "EXIT_FAILED",
    "EXIT_LOCKED",
    "EXIT_OK",
    "BundlePredictor",
    "CaseLock",
    "InferenceItem",
    "InferenceReport",
    "LoadedVolume",
    "LockOwner",
    "LockStatus",
    "StagedPredictor",
    "StreamingVolumeSegmenter",
    "case_sidecar",
    "config_file",
    "default_bundle_dir",
    "find_inputs",
    "inspect_lock",
    "load_balr_sam",
    "load_trained_weights",
    "rank_and_world_size",
    "run_batch_inference",
    "split_for_rank",
    "transforms_before_resize",
    "unwrap_balr_sam",
    "write_label_nifti",
    "write_label_png",
]
