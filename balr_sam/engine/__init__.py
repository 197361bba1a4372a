"""Ignite/MONAI engine parts for training and evaluating BALR-SAM from the bundle configs: handlers,
Ignite metrics, determinism, schedulers."""

from balr_sam.engine.determinism import RandomStates, ReplayedEpoch, SeedEachEpoch, epoch_seed, seed_everything
from balr_sam.engine.handlers import (
    AtomicCheckpointSaver,
    LoadTrainedModel,
    NonFiniteLossError,
    ResumeFromCheckpoint,
    SaveBestModel,
    SaveFinalModel,
    StopOnNonFiniteLoss,
    TrainableWeights,
    latest_checkpoint,
    remove_partial_checkpoints,
    run_training,
)
from balr_sam.engine.metrics import BinaryProtocolMetrics, SegmentationMetrics
from balr_sam.engine.schedulers import warmup_poly_lr

__all__ = [
    "AtomicCheckpointSaver",
    "BinaryProtocolMetrics",
    "LoadTrainedModel",
    "NonFiniteLossError",
    "RandomStates",
    "ReplayedEpoch",
    "ResumeFromCheckpoint",
    "SaveBestModel",
    "SaveFinalModel",
    "SegmentationMetrics",
    "SeedEachEpoch",
    "StopOnNonFiniteLoss",
    "TrainableWeights",
    "epoch_seed",
    "latest_checkpoint",
    "remove_partial_checkpoints",
    "run_training",
    "seed_everything",
    "warmup_poly_lr",
]
