"""Per-case lock files of batch inference: one process writes a case at a time.

A lock is ``<output>.lock`` beside the output, created atomically (``O_CREAT | O_EXCL``) and
holding ``host pid``. A lock left by a process that no longer runs on this host is taken over,
so a killed run does not block its re-run.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

__all__ = ["CaseLock"]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class CaseLock:
    """An exclusive per-output lock file ``<output>.lock``, created atomically.

    ``acquired`` is False when another live process holds the lock. A lock left by a process
    that no longer runs (on this host) is taken over, so a killed run does not block its re-run.

    Args:
        output: the output file the lock protects.
    """

    def __init__(self, output: Path) -> None:
        self.path = output.with_name(output.name + ".lock")
        self.acquired = False

    def __enter__(self) -> "CaseLock":
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._stale():
                    self.path.unlink(missing_ok=True)
                    continue
                return self
            with os.fdopen(fd, "w") as handle:
                handle.write(f"{socket.gethostname()} {os.getpid()}\n")
            self.acquired = True
            return self
        return self

    def _stale(self) -> bool:
        try:
            host, pid = self.path.read_text().split()
        except (OSError, ValueError):
            return False  # being written right now, or unreadable: not ours to take
        return host == socket.gethostname() and not _pid_alive(int(pid))

    def __exit__(self, *exc: object) -> None:
        if self.acquired:
            self.path.unlink(missing_ok=True)
