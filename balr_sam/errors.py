"""Exceptions for expected, user-facing failures (bad input files, mismatched checkpoints).

The command line prints these as a single line naming the file and the problem, without a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["BalrSamError", "CheckpointError", "DataError"]


class BalrSamError(Exception):
    """Base class of every expected error of the product."""


class CheckpointError(BalrSamError):
    """A SAM or BALR-SAM checkpoint is missing, unreadable, unsafe or of the wrong model."""


class DataError(BalrSamError):
    """An input image, label or folder is unreadable or inconsistent."""
