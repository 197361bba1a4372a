"""Atomic file writes: write to a temporary file beside the target, then rename it into place.

Every file the product writes for later use (trained models, checkpoints, datalists, label maps,
sidecars, evaluation reports and overlays) goes through :func:`atomic_write`, so an interrupted
process never leaves a half-written file under the final name.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Callable, List, Union

__all__ = ["atomic_write", "atomic_write_text", "partial_files"]

# ".{final name}.{mkstemp's random part}.part{suffix}", as atomic_write names its temporary files
_PARTIAL = re.compile(r"^\.(?P<final>.+)\.[A-Za-z0-9_]+\.part")


def atomic_write(path: Union[str, "os.PathLike[str]"], write: Callable[[str], None], suffix: str = "") -> Path:
    """Call ``write(tmp_path)`` for a temporary file in ``path``'s folder, then rename it to ``path``.

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
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Union[str, "os.PathLike[str]"], text: str, suffix: str = "") -> Path:
    """:func:`atomic_write` of ``text`` in UTF-8 (JSON, CSV, Markdown)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), suffix)


def partial_files(folder: Union[str, "os.PathLike[str]"], final: Callable[[str], bool]) -> List[Path]:
    """The temporary files of :func:`atomic_write` calls that were killed mid-write in ``folder``,
    for the final file names ``final`` accepts (``[]`` when the folder does not exist)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if (m := _PARTIAL.match(p.name)) and final(m.group("final"))]
