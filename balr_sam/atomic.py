"""Atomic, durable file writes: write a temporary file beside the target, flush it to disk, rename
it into place, flush the folder.

Every file the product writes for later use (trained models, checkpoints, datalists, label maps,
sidecars, evaluation reports and overlays) goes through :func:`atomic_write`, so an interrupted
process never leaves a half-written file under the final name, and a file reported written
survives a power loss too: the temporary file is ``fsync``-ed before the rename and the folder
after it (a few milliseconds per ``fsync`` on the development VM's disk: about 11-14 ms per
case of batch inference, see ``docs/reliability-locks.md``).

:func:`fault_point` is a test hook for crash tests: with the environment variable
``BALR_SAM_FAULT=after:<step>`` set, the process kills itself with ``SIGKILL`` (no clean-up, no
``finally``) the first time it reaches ``<step>``. The steps are named by the code that calls it
(batch inference: :mod:`balr_sam.inference.batch`). Nothing happens when the variable is unset.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import tempfile
from pathlib import Path
from typing import Callable, List

from balr_sam.types import PathLike

__all__ = ["atomic_write", "atomic_write_text", "partial_files", "fsync_directory", "fault_point", "FAULT_ENV"]

#: the environment variable of :func:`fault_point`
FAULT_ENV = "BALR_SAM_FAULT"

# ".{final name}.{mkstemp's random part}.part{suffix}", as atomic_write names its temporary files
_PARTIAL = re.compile(r"^\.(?P<final>.+)\.[A-Za-z0-9_]+\.part")

# a folder that cannot be fsync-ed (some network and FUSE file systems): nothing more can be done
_NO_DIRECTORY_SYNC = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF}


def atomic_write(path: PathLike, write: Callable[[str], None], suffix: str = "") -> Path:
    """Call ``write(tmp_path)`` for a temporary file in ``path``'s folder, then rename it to ``path``.

    The temporary file is ``fsync``-ed before the rename and the folder after it, so once this
    returns the file is on disk under its final name.

    Args:
        path: the final file (its folder is created).
        write: writes the whole content to the path it is given.
        suffix: ending of the temporary name, for writers that infer the format from it
            (``".nii.gz"``, ``".png"``).

    Returns:
        ``path``. The temporary file is removed if ``write`` fails; the file gets the usual
        permissions (``0666`` minus the umask), not ``mkstemp``'s ``0600``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{suffix}", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
    return path


def atomic_write_text(path: PathLike, text: str, suffix: str = "") -> Path:
    """:func:`atomic_write` of ``text`` in UTF-8 (JSON, CSV, Markdown)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), suffix)


def partial_files(folder: PathLike, final: Callable[[str], bool]) -> List[Path]:
    """The temporary files of :func:`atomic_write` calls that were killed mid-write in ``folder``,
    for the final file names ``final`` accepts (``[]`` when the folder does not exist)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if (m := _PARTIAL.match(p.name)) and final(m.group("final"))]


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(folder: PathLike) -> None:
    """Flush ``folder``'s entries (a rename or a new file in it) to disk; a no-op where folders
    cannot be opened or synced (Windows, some network file systems)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in _NO_DIRECTORY_SYNC:
            raise
    finally:
        os.close(fd)


def fault_point(step: str) -> None:
    """Test hook: ``SIGKILL`` this process here when ``$BALR_SAM_FAULT`` is ``after:<step>`` (see the module docstring)."""
    if os.environ.get(FAULT_ENV) == f"after:{step}":
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))
