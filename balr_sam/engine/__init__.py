"""Ignite/MONAI engine parts for training and evaluating BALR-SAM from the bundle configs."""

from balr_sam.engine.handlers import AtomicCheckpointSaver, StopOnNonFiniteLoss, TrainableWeights, latest_checkpoint
from balr_sam.engine.schedulers import warmup_poly_lr

__all__ = ["AtomicCheckpointSaver", "StopOnNonFiniteLoss", "TrainableWeights", "latest_checkpoint", "warmup_poly_lr"]
