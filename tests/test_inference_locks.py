"""Issue 17: a killed batch inference never leaves a case that no later run segments.

Locks are never half-written and name their owner (host, pid, start time, boot); an empty or
unreadable lock is taken over once older than the grace period, a dead owner's at once, a live
owner's and another host's never; a take-over cannot steal a lock renewed meanwhile. A run asked
for cases that another process still holds after the bounded wait lists them apart from those
already done and exits 3. ``BALR_SAM_FAULT`` kills ``balr-sam infer`` at each step of writing a
case; the re-run then writes every case and leaves no temporary file or lock behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List

import nibabel as nib
import numpy as np
import pytest

from _tiny_bundle import copy_tiny_cases
from balr_sam.cli import main
from balr_sam.inference import CaseLock, InferenceItem, run_batch_inference
from balr_sam.inference.batch import EXIT_LOCKED, FAULT_STEPS
from balr_sam.inference.locks import LockOwner

OTHER_HOST = "another-host.invalid"


@pytest.fixture()
def sleeper() -> Iterator[subprocess.Popen]:
    """A live process of this host (not this one), ended after the test."""
    proc = subprocess.Popen(["sleep", "600"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _write_lock(output: Path, text: str, age: float = 0.0) -> Path:
    lock = output.with_name(output.name + ".lock")
    lock.write_text(text)
    if age:
        when = time.time() - age
        os.utime(lock, (when, when))
    return lock


def _owner_text(pid: int, **changes: object) -> str:
    owner = LockOwner.of_process(pid)
    return LockOwner(**{**owner.__dict__, **changes}).to_text()


# --- the lock itself ------------------------------------------------------------------------------


def test_a_lock_is_complete_when_it_appears_and_names_its_owner(tmp_path: Path) -> None:
    out = tmp_path / "case.nii.gz"
    with CaseLock(out) as lock:
        assert lock.acquired
        assert LockOwner.parse(lock.path.read_text()) == LockOwner.current()
        assert LockOwner.current().started  # the start time is what tells a reused pid apart
        assert [p.name for p in tmp_path.iterdir()] == ["case.nii.gz.lock"]  # the temporary name is gone
    assert list(tmp_path.iterdir()) == []


def test_an_empty_lock_is_taken_over_only_after_the_grace_period(tmp_path: Path) -> None:
    out = tmp_path / "case.nii.gz"
    lock_file = _write_lock(out, "")
    with CaseLock(out, grace=30) as young:
        assert not young.acquired
        assert young.holder is not None and "empty lock" in young.holder.reason
    assert lock_file.exists() and lock_file.read_text() == ""
    _write_lock(out, "", age=31)
    with CaseLock(out, grace=30) as old:
        assert old.acquired
    assert list(tmp_path.iterdir()) == []


def test_a_live_owner_keeps_its_lock_and_a_reused_pid_does_not(tmp_path: Path, sleeper: subprocess.Popen) -> None:
    out = tmp_path / "case.nii.gz"
    lock_file = _write_lock(out, _owner_text(sleeper.pid), age=3600)
    with CaseLock(out) as lock:
        assert not lock.acquired and lock.holder is not None
        assert f"process {sleeper.pid}" in lock.holder.reason and "running" in lock.holder.reason
    assert LockOwner.parse(lock_file.read_text()).pid == sleeper.pid
    # the same pid, but a process started at another time: the lock's owner is gone
    _write_lock(out, _owner_text(sleeper.pid, started="1"))
    with CaseLock(out) as lock:
        assert lock.acquired
    # the same pid, written before the machine last booted
    _write_lock(out, _owner_text(sleeper.pid, boot="00000000-0000-0000-0000-000000000000"))
    with CaseLock(out) as lock:
        assert lock.acquired


def test_another_hosts_lock_is_never_taken_over(tmp_path: Path) -> None:
    out = tmp_path / "case.nii.gz"
    text = json.dumps({"host": OTHER_HOST, "pid": 999999, "started": "1", "boot": "x"}) + "\n"
    lock_file = _write_lock(out, text, age=10 * 24 * 3600)
    with CaseLock(out, grace=0) as lock:
        assert not lock.acquired and lock.holder is not None
        assert OTHER_HOST in lock.holder.reason and "never taken over" in lock.holder.reason
    assert lock_file.read_text() == text


def test_a_take_over_never_steals_a_lock_renewed_meanwhile(tmp_path: Path) -> None:
    out = tmp_path / "case.nii.gz"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_lock(out, f"{os.uname().nodename} {dead.pid}\n")
    slow, fast = CaseLock(out), CaseLock(out)
    judged = slow.inspect()
    assert judged.stale
    assert fast.acquire()  # takes the stale lock over first
    renewed = os.stat(fast.path)
    assert not slow.take_over(judged)  # what it judged stale is not there any more
    assert os.stat(fast.path).st_ino == renewed.st_ino and not slow.acquired
    assert not slow.acquire() and "running" in slow.holder.reason
    fast.release()
    assert list(tmp_path.iterdir()) == []


def test_leftovers_of_killed_lockers_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    out = tmp_path / "case.nii.gz"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = tmp_path / ".case.nii.gz.lock.0123456789abcdef.tmp"
    left.write_text(f"{os.uname().nodename} {dead.pid}\n")
    in_flight = tmp_path / ".case.nii.gz.lock.fedcba9876543210.tmp"
    in_flight.write_text(LockOwner.current().to_text())
    with CaseLock(out) as lock:
        lock.remove_leftovers()
    assert not left.exists() and in_flight.exists()


# --- the batch runner -----------------------------------------------------------------------------


class _Volumes:
    """A predictor of fixed tiny label maps; segmenting ``on_case`` first calls ``action``."""

    def __init__(self, on_case: str = "", action=lambda: None) -> None:
        self.on_case, self.action = on_case, action

    def __call__(self, item: InferenceItem) -> tuple:
        if item.case == self.on_case:
            self.action()
        return np.zeros((4, 4, 2), np.uint8), np.eye(4)


def _items(tmp_path: Path, *names: str) -> List[InferenceItem]:
    return [InferenceItem(name, str(tmp_path / f"{name}.nii.gz"), "volume") for name in names]


def test_a_case_held_by_another_process_is_waited_for_and_then_written(tmp_path: Path, sleeper: subprocess.Popen) -> None:
    out = tmp_path / "out"
    out.mkdir()
    _write_lock(out / "a.nii.gz", _owner_text(sleeper.pid))

    def end_the_holder() -> None:  # while b is segmented, the process holding a's lock ends
        sleeper.kill()
        sleeper.wait()

    report = run_batch_inference(
        _items(tmp_path, "a", "b"), out, _Volumes("b", end_the_holder), {0: "background"}, progress=False, log=lambda _: None, wait_for_locks=60
    )
    assert report.written == ["b", "a"] and report.ok and report.exit_status == 0, report
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "a.nii.gz", "b.json", "b.nii.gz"]


def test_a_case_still_held_after_the_wait_is_reported_not_skipped(tmp_path: Path, sleeper: subprocess.Popen) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "done.nii.gz").write_bytes(b"finished earlier")
    _write_lock(out / "held.nii.gz", _owner_text(sleeper.pid))
    messages: List[str] = []
    report = run_batch_inference(
        _items(tmp_path, "done", "held", "new"), out, _Volumes(), {0: "background"}, progress=False, log=messages.append, wait_for_locks=0.2
    )
    assert report.written == ["new"] and report.skipped == ["done"] and not report.failed
    assert [case for case, _ in report.locked] == ["held"] and f"process {sleeper.pid}" in report.locked[0][1]
    assert not report.ok and report.exit_status == EXIT_LOCKED == 3
    assert report.summary() == "1 written, 1 skipped, 0 failed, 1 locked by another process (held)"
    assert any("waiting up to 0.2 s: held" in m for m in messages)


# --- balr-sam infer -------------------------------------------------------------------------------


def _infer(inputs: Path, out: Path, infer_args: List[str], *extra: str) -> int:
    return main(["infer", str(inputs), str(out), *infer_args, *extra])


def _assert_complete(inputs: Path, out: Path) -> None:
    """Every input has its readable label map (input's shape) and sidecar, and nothing else is in ``out``."""
    cases = sorted(p.name[: -len(".nii.gz")] for p in inputs.glob("*.nii.gz"))
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{c}{ext}" for c in cases for ext in (".json", ".nii.gz"))
    for case in cases:
        assert np.asarray(nib.load(out / f"{case}.nii.gz").dataobj).shape == nib.load(inputs / f"{case}.nii.gz").shape
        assert json.loads((out / f"{case}.json").read_text())["case"] == case


def test_an_old_empty_lock_does_not_keep_its_case_from_being_segmented(tiny_dataset: Dict[str, str], infer_args: List[str], tmp_path: Path) -> None:
    inputs = copy_tiny_cases(tiny_dataset, tmp_path / "in", 3)
    out = tmp_path / "out"
    out.mkdir()
    _write_lock(out / "case01.nii.gz", "", age=3600)  # a kill between creating the lock and writing into it
    assert _infer(inputs, out, infer_args) == 0
    _assert_complete(inputs, out)


def test_a_young_empty_lock_is_reported_and_the_run_fails(
    tiny_dataset: Dict[str, str], infer_args: List[str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    inputs = copy_tiny_cases(tiny_dataset, tmp_path / "in", 2)
    out = tmp_path / "out"
    out.mkdir()
    _write_lock(out / "case01.nii.gz", "")
    assert _infer(inputs, out, infer_args, "--wait-for-locks", "0.2") == 3
    captured = capsys.readouterr()
    assert "1 written, 0 skipped, 0 failed, 1 locked by another process (case01)" in captured.out
    assert "locked: case01: empty lock" in captured.err
    assert (out / "case00.nii.gz").exists() and not (out / "case01.nii.gz").exists()


def test_a_case_a_live_process_holds_is_reported_and_the_run_fails(
    tiny_dataset: Dict[str, str], infer_args: List[str], tmp_path: Path, sleeper: subprocess.Popen, capsys: pytest.CaptureFixture
) -> None:
    inputs = copy_tiny_cases(tiny_dataset, tmp_path / "in", 2)
    out = tmp_path / "out"
    out.mkdir()
    _write_lock(out / "case00.nii.gz", _owner_text(sleeper.pid), age=3600)
    assert _infer(inputs, out, infer_args, "--wait-for-locks", "0.2") == 3
    captured = capsys.readouterr()
    assert "1 written, 0 skipped, 0 failed, 1 locked by another process (case00)" in captured.out
    assert f"locked: case00: held by process {sleeper.pid}" in captured.err
    assert not (out / "case00.nii.gz").exists() and (out / "case01.nii.gz").exists()


def test_another_hosts_lock_is_reported_never_taken(tiny_dataset: Dict[str, str], infer_args: List[str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    inputs = copy_tiny_cases(tiny_dataset, tmp_path / "in", 2)
    out = tmp_path / "out"
    out.mkdir()
    text = f"{OTHER_HOST} 1\n"  # also the lock format of earlier versions
    lock_file = _write_lock(out / "case01.nii.gz", text, age=3600)
    assert _infer(inputs, out, infer_args, "--wait-for-locks", "0.2") == 3
    captured = capsys.readouterr()
    assert "1 locked by another process (case01)" in captured.out
    assert f"locked: case01: held by process 1 on {OTHER_HOST}" in captured.err
    assert lock_file.read_text() == text and not (out / "case01.nii.gz").exists()


# what each step leaves for the re-run: (file that must exist, file that must not) for the first case
_LEFT_AT = {
    "lock-created": (["case00.nii.gz.lock"], ["case00.json", "case00.nii.gz"]),
    "sidecar-written": (["case00.nii.gz.lock", "case00.json"], ["case00.nii.gz"]),
    "image-temporary-written": (["case00.nii.gz.lock", "case00.json", ".case00.nii.gz.*.part.nii.gz"], ["case00.nii.gz"]),
    "renamed": (["case00.nii.gz.lock", "case00.json", "case00.nii.gz"], []),
}


@pytest.mark.parametrize("step", FAULT_STEPS)
def test_a_run_killed_at_each_step_is_completed_by_the_next(step: str, tiny_dataset: Dict[str, str], infer_args: List[str], tmp_path: Path) -> None:
    inputs = copy_tiny_cases(tiny_dataset, tmp_path / "in", 2)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "balr_sam", "infer", str(inputs), str(out), *infer_args]
    killed = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, "BALR_SAM_FAULT": f"after:{step}"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    present, absent = _LEFT_AT[step]
    for pattern in present:
        assert list(out.glob(pattern)), (step, pattern, sorted(p.name for p in out.iterdir()))
    for name in absent:
        assert not (out / name).exists(), (step, name)
    assert not (out / "case01.nii.gz").exists()  # killed at the first case it wrote
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    _assert_complete(inputs, out)


def test_an_unknown_fault_step_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BALR_SAM_FAULT", "after:lock-creatd")
    with pytest.raises(Exception, match="BALR_SAM_FAULT=after:lock-creatd: not a step"):
        run_batch_inference(_items(tmp_path, "a"), tmp_path / "out", _Volumes(), {0: "background"}, progress=False)
