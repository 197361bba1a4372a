"""Exceptions for expected, user-facing failures (bad input files, mismatched checkpoints).

The command line prints these as a single line naming the file and the problem, without a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import Optional, Type, TypeVar

__all__ = ["BalrSamError", "CheckpointError", "DataError", "find_error", "first_line"]


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


def first_line(err: BaseException, *, with_type: bool = False, limit: int = 300) -> str:
    """The one line of ``err`` a user is shown: its first non-blank line, at most ``limit`` characters.

    ITK puts the useful description on its last line, so for ``itk::ERROR`` messages that line is
    taken. ``with_type`` prefixes the exception's class name (``"OSError: ..."``); an exception
    without a message gives its class name alone.
    """
    text = str(err).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    line = (lines[-1] if "itk::ERROR" in text else lines[0])[:limit]
    return f"{type(err).__name__}: {line}" if with_type else line
