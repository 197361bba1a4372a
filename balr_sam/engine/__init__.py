"""Ignite/MONAI engine parts for training and evaluating BALR-SAM from the bundle configs."""

from balr_sam.engine.handlers import (
    AtomicCheckpointSaver,
    LoadTrainedModel,
    ResumeFromCheckpoint,
    SaveBestModel,
    SaveFinalModel,
    StopOnNonFiniteLoss,
    TrainableWeights,
    latest_checkpoint,
    load_trained_weights,
)
from balr_sam.engine.schedulers import warmup_poly_lr

__all__ = [
    "AtomicCheckpointSaver",
    "LoadTrainedModel",
    "ResumeFromCheckpoint",
    "SaveBestModel",
    "SaveFinalModel",
    "StopOnNonFiniteLoss",
    "TrainableWeights",
    "latest_checkpoint",
    "load_trained_weights",
    "warmup_poly_lr",
]
