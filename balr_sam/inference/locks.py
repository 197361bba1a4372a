"""Per-case lock files of batch inference: one process writes a case at a time, and no lock left
by a killed process keeps a case from ever being segmented.

A lock is ``<output>.lock`` beside the output. It names its owner (:class:`LockOwner`: host, pid,
the process's start time and the machine's boot id, so that a reused pid or a reboot is not taken
for the owner) and is never half-written:

1. the owner's identity is written to a temporary file in the same folder
   (``.<output>.lock.<random>.tmp``);
2. ``os.link`` gives it the lock's name, which fails if a lock exists (atomic on local file
   systems and NFS; on NFS a link whose reply was lost is recognised by the temporary file's
   link count, as ``open(2)`` recommends); file systems without hard links fall back to
   ``O_CREAT | O_EXCL`` and a write;
3. the temporary name is removed.

A lock found in place is judged by :func:`inspect_lock`:

* another host's (or another PID namespace's) lock is never taken over: its process cannot be
  checked from here. It is reported (remove it by hand if that process is gone);
* a lock of this host is stale when its process no longer runs, when its pid now belongs to a
  process started at another time (pid reuse), or when the machine has rebooted since;
* a lock that cannot be read or parsed (empty: a writer of the ``O_EXCL`` fall-back killed
  between create and write; or written by something else) is stale once its modification time
  is ``grace`` seconds old (default 30 s), measured against the file server's clock (the
  modification time of the caller's own freshly written temporary file), not this machine's.

A stale lock is taken over race-safely (:meth:`CaseLock.take_over`): it is renamed to a unique
name, and kept only if the renamed file is the very file judged stale (device, inode,
modification time, size); if another process replaced it in between, the fresh lock is linked
back. Only a lock's owner removes it, and only while it is still its own file.

What every lock and marker file of the product survives is reviewed in
``docs/reliability-locks.md``.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

__all__ = ["DEFAULT_GRACE_S", "LockOwner", "LockStatus", "inspect_lock", "CaseLock"]

#: seconds after which an unreadable or empty lock is taken for the leftover of a killed writer
DEFAULT_GRACE_S = 30.0

# errors of os.link on file systems without hard links
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}

# (device, inode, modification time in ns, size): which file a path named when it was looked at
_Identity = Tuple[int, int, int, int]


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _proc_stat(pid: int) -> Optional[Tuple[str, str]]:
    """``(state, start time)`` of ``pid`` from ``/proc/<pid>/stat`` (Linux), ``None`` where unknown."""
    text = _read(f"/proc/{pid}/stat")
    # "pid (comm) state ppid ... starttime(22nd field) ...": comm may hold spaces and parentheses
    fields = text[text.rfind(")") + 2 :].split() if ")" in text else []
    return (fields[0], fields[19]) if len(fields) > 19 else None


def _namespace(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return ""


@dataclass(frozen=True)
class LockOwner:
    """Who holds a lock: enough to tell later, from the same host, whether that process still runs.

    Attributes:
        host: ``socket.gethostname()``.
        pid: the process id.
        started: the process's start time (clock ticks after boot, Linux), ``""`` where unknown.
        boot: the machine's boot id (``/proc/sys/kernel/random/boot_id``), ``""`` where unknown.
        namespace: the process's PID namespace (containers sharing a host name), ``""`` where unknown.
    """

    host: str
    pid: int
    started: str = ""
    boot: str = ""
    namespace: str = ""

    @classmethod
    def of_process(cls, pid: int) -> "LockOwner":
        """The identity of process ``pid`` of this host (its start time read now)."""
        stat = _proc_stat(pid)
        return cls(socket.gethostname(), int(pid), stat[1] if stat else "", _read("/proc/sys/kernel/random/boot_id"), _namespace(pid))

    @classmethod
    def current(cls) -> "LockOwner":
        """This process's identity."""
        return cls.of_process(os.getpid())

    def to_text(self) -> str:
        """One JSON line (what a lock file holds)."""
        return json.dumps({"host": self.host, "pid": self.pid, "started": self.started, "boot": self.boot, "namespace": self.namespace}) + "\n"

    @classmethod
    def parse(cls, text: str) -> Optional["LockOwner"]:
        """The owner a lock file names (:meth:`to_text`, or the older ``host pid`` line); ``None`` if it names none."""
        try:
            data = json.loads(text)
            return cls(str(data["host"]), int(data["pid"]), str(data.get("started", "")), str(data.get("boot", "")), str(data.get("namespace", "")))
        except (ValueError, TypeError, KeyError):
            pass
        match = re.fullmatch(r"\s*(\S+)\s+(\d+)\s*", text)
        return cls(match.group(1), int(match.group(2))) if match else None

    def same_machine(self, other: "LockOwner") -> bool:
        """Whether ``other``'s processes can be checked from here (same host, same PID namespace)."""
        return self.host == other.host and (not self.namespace or not other.namespace or self.namespace == other.namespace)

    def running(self) -> bool:
        """Whether this process still runs (call only for an owner of this machine, see :meth:`same_machine`)."""
        here = _read("/proc/sys/kernel/random/boot_id")
        if self.boot and here and self.boot != here:
            return False  # the machine has rebooted since the lock was written
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # exists, another user's
        stat = _proc_stat(self.pid)
        if stat is None:
            return True
        state, started = stat
        return state not in ("Z", "X") and not (self.started and started != self.started)

    def describe(self) -> str:
        return f"process {self.pid} on {self.host}"


@dataclass(frozen=True)
class LockStatus:
    """What :meth:`CaseLock.inspect` found.

    Attributes:
        exists: there is a lock file.
        stale: it may be taken over (its owner is gone, or it is unreadable and older than the grace period).
        reason: one line for people (who holds it, or why it is stale).
        owner: the owner it names, if it names one.
        identity: ``(device, inode, mtime_ns, size)`` of the file inspected (for :meth:`CaseLock.take_over`).
    """

    exists: bool
    stale: bool = False
    reason: str = ""
    owner: Optional[LockOwner] = None
    identity: Optional[_Identity] = None


def _identity(st: os.stat_result) -> _Identity:
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def inspect_lock(path: Path, *, grace: float = DEFAULT_GRACE_S, now: Optional[float] = None) -> LockStatus:
    """Who holds the lock file ``path`` and whether it is stale (see the module docstring).

    Args:
        path: a lock file (or one of its temporary files: they hold the same text).
        grace: seconds after which an unreadable or empty lock is stale.
        now: the current time on the lock's file system (default: this machine's clock).

    Returns:
        the :class:`LockStatus` (``exists`` False when there is no such file).
    """
    path = Path(path)
    text: Optional[str]  # None: the file cannot be read
    try:
        with open(path, "rb") as handle:
            identity = _identity(os.fstat(handle.fileno()))
            text = handle.read(4096).decode("utf-8", errors="replace")
    except FileNotFoundError:
        return LockStatus(False)
    except OSError:  # unreadable: judged by its age alone
        try:
            identity, text = _identity(os.stat(path)), None
        except FileNotFoundError:
            return LockStatus(False)
    owner = LockOwner.parse(text) if text else None
    if owner is None:
        age = (time.time() if now is None else now) - identity[2] / 1e9
        stale = age >= grace
        what = "unreadable" if text is None else "empty" if not text.strip() else "unparsable"
        reason = f"{what} lock {path.name}, {age:.0f} s old ({'older than' if stale else 'within'} the {grace:g} s grace period)"
        return LockStatus(True, stale, reason, None, identity)
    me = LockOwner.current()
    if not me.same_machine(owner):
        where = "another host" if owner.host != me.host else "another PID namespace (container) of this host"
        reason = f"held by {owner.describe()}, {where}: never taken over from here; remove {path} by hand if that process is gone"
        return LockStatus(True, False, reason, owner, identity)
    if owner.running():
        return LockStatus(True, False, f"held by {owner.describe()}, running", owner, identity)
    return LockStatus(True, True, f"left by {owner.describe()}, which no longer runs", owner, identity)


class CaseLock:
    """The exclusive lock ``<output>.lock`` of one output file (context manager).

    ``acquired`` tells whether this process holds it; if not, ``holder`` says who does. A stale
    lock (see the module docstring) is taken over on the way.

    Args:
        output: the output file the lock protects.
        grace: seconds after which an unreadable or empty lock is stale.
    """

    def __init__(self, output: Path, *, grace: float = DEFAULT_GRACE_S) -> None:
        self.path = Path(output).with_name(Path(output).name + ".lock")
        self.grace = float(grace)
        self.acquired = False
        self.holder: Optional[LockStatus] = None
        self._mine: Optional[Tuple[int, int]] = None

    def __enter__(self) -> "CaseLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _scratch(self, kind: str) -> Path:
        return self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:16]}.{kind}")

    def acquire(self, attempts: int = 3) -> bool:
        """Create the lock, taking over a stale one; returns (and sets) ``acquired``."""
        me = LockOwner.current()
        tmp = self._scratch("tmp")
        with open(tmp, "x", encoding="utf-8") as handle:
            handle.write(me.to_text())
        try:
            for _ in range(attempts):
                if self._link(tmp, me):
                    self.acquired, self.holder = True, None
                    return True
                # the file server's "now": our temporary file was just written there
                status = self.inspect(now=os.stat(tmp).st_mtime)
                self.holder = status
                if status.exists and not status.stale:
                    return False
                if status.exists:
                    self.take_over(status)
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def _link(self, tmp: Path, me: LockOwner) -> bool:
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            # NFS: a retransmitted link may fail although the first one succeeded
            if os.stat(tmp).st_nlink != 2:
                return False
        except OSError as err:
            if err.errno not in _NO_HARD_LINKS:
                raise
            return self._create_exclusive(me)
        st = os.stat(tmp)
        self._mine = (st.st_dev, st.st_ino)
        return True

    def _create_exclusive(self, me: LockOwner) -> bool:
        """Fall-back without hard links: create the lock with ``O_EXCL`` and write into it (an empty lock is possible, see ``grace``)."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(me.to_text())
            st = os.fstat(handle.fileno())
        self._mine = (st.st_dev, st.st_ino)
        return True

    def inspect(self, now: Optional[float] = None) -> LockStatus:
        """Who holds the lock and whether it is stale (:func:`inspect_lock`)."""
        return inspect_lock(self.path, grace=self.grace, now=now)

    def take_over(self, status: LockStatus) -> bool:
        """Remove the stale lock ``status`` describes, unless it has been replaced since; returns whether it was removed."""
        if not (status.exists and status.stale and status.identity is not None):
            return False
        aside = self._scratch("stale")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False  # released, or taken over by another process first
        try:
            if _identity(os.stat(aside)) == status.identity:
                return True
            # another process took the stale lock over first and this is its fresh lock: give it back
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass  # yet another lock in the meantime; the case may be written twice, each write complete
            return False
        except FileNotFoundError:
            return False
        finally:
            aside.unlink(missing_ok=True)

    def release(self) -> None:
        """Remove the lock if this process holds it (and it is still its own file)."""
        if not self.acquired:
            return
        self.acquired = False
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return
        if (st.st_dev, st.st_ino) == self._mine:
            self.path.unlink(missing_ok=True)

    def clear_stale(self) -> None:
        """Remove a stale lock (:meth:`take_over`) and :meth:`remove_leftovers`: the clean-up for a case found done."""
        if self.path.exists():
            self.take_over(self.inspect())
        self.remove_leftovers()

    def remove_leftovers(self) -> None:
        """Remove the temporary and set-aside files of this lock that processes killed while locking left.

        A file is removed only when it names no running owner of this host (or names none and is
        older than the grace period), so that another process's lock in the making is left alone.
        """
        pattern = re.compile(rf"^\.{re.escape(self.path.name)}\.[0-9a-f]{{16}}\.(tmp|stale)$")
        for path in self.path.parent.iterdir():
            if pattern.match(path.name) and inspect_lock(path, grace=self.grace).stale:
                path.unlink(missing_ok=True)
