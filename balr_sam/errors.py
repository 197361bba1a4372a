"""Exceptions for expected, user-facing failures (bad input files, mismatched checkpoints).

The command line prints these as a single line naming the file and the problem, without a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import Optional, Type, TypeVar

__all__ = ["BalrSamError", "CheckpointError", "DataError", "find_error"]


class BalrSamError(Exception):
    """Base class of every expected error of the product."""


class CheckpointError(BalrSamError):
    """A SAM or BALR-SAM checkpoint is missing, unreadable, unsafe or of the wrong model."""


class DataError(BalrSamError):
    """An input image, label or folder is unreadable or inconsistent."""


E = TypeVar("E", bound=BaseException)


def find_error(exc: Optional[BaseException], kind: Type[E] = BalrSamError) -> Optional[E]:  # type: ignore[assignment]
    """The first ``kind`` exception in ``exc``'s cause/context chain, or ``None``.

    MONAI wraps what a transform or a config component raises in ``RuntimeError``; the expected
    error inside is what the user needs to see.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kind):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
