"""Training faults with real processes and real signals: a run SIGKILLed in the middle of an epoch
resumes to the weights of an uninterrupted run, a kill during a checkpoint write leaves the
previous checkpoint intact, and a NaN loss stops training with one line and nothing overwritten."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pytest
import torch
from ignite.engine import Engine

from _faults import PARTIAL, CodeExecutingPickle
from _tiny_bundle import DEMO, TRAIN, tiny_settings, training_argv
from balr_sam.engine import AtomicCheckpointSaver, RandomStates, ResumeFromCheckpoint, latest_checkpoint, seed_everything

TESTS = Path(__file__).resolve().parent
EPOCH = 4  # iterations per epoch: 4 training volumes, batch size 1
CHECKPOINT = re.compile(r"^train_checkpoint_(\d+)\.pt$")


@pytest.fixture(scope="module")
def fault_data(tiny_synapse: Callable[..., Tuple[Path, Path]], tmp_path_factory: pytest.TempPathFactory) -> Dict[str, str]:
    """Four training volumes (one iteration each), one validation and one test volume."""
    root = tmp_path_factory.mktemp("faults")
    data, sam = tiny_synapse(root, 6, 0.15)
    assert len(json.loads((data / "datalist.json").read_text())["training"]) == EPOCH
    return {"root": str(root), "dataset_dir": str(data), "sam": str(sam)}


def _env() -> Dict[str, str]:
    """Child environment: one thread (deterministic and fair on shared CPUs), ``_faults`` importable."""
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": path}


def _training_command(data: Dict[str, str], bundle_root: Path, extra_configs: Sequence[str] = (), **overrides: object) -> List[str]:
    """``python -m monai.bundle run training`` at the tiny settings; adapter dropout on, so that the
    network itself draws random numbers and the resumed random states matter."""
    settings = tiny_settings(data, bundle_root, **{"batch_size": 1, "network_def#adapter_dropout": 0.1, **overrides})
    return [sys.executable, *training_argv([TRAIN, DEMO, *extra_configs], settings)]


def _train(data: Dict[str, str], bundle_root: Path, extra_configs: Sequence[str] = (), check: bool = True, **overrides: object) -> subprocess.CompletedProcess:
    result = subprocess.run(
        _training_command(data, bundle_root, extra_configs, **overrides), env=_env(), cwd=bundle_root.parent, capture_output=True, text=True, timeout=300
    )
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def _iterations(folder: Path) -> List[int]:
    """Iterations of the complete checkpoints in ``folder``, ascending."""
    names = os.listdir(folder) if folder.is_dir() else []
    return sorted(int(m.group(1)) for name in names if (m := CHECKPOINT.match(name)))


def _kill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 240) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` (polled every few ms); fails if it ends or times out first."""
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail(f"the process ended (status {proc.returncode}) before it could be killed")
            if time.monotonic() > deadline:
                pytest.fail(f"nothing to kill at after {timeout} s")
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # DataLoader workers left behind by the kill
        except ProcessLookupError:
            pass
        proc.wait()


def _assert_same_state(a: Dict[str, object], b: Dict[str, object], what: str) -> None:
    assert a.keys() == b.keys(), what
    for key in a:
        assert torch.equal(a[key], b[key]), f"{what}: {key} differs"


def test_random_states_survive_a_weights_only_round_trip(tmp_path: Path) -> None:
    def draw() -> tuple:
        return random.random(), float(np.random.rand()), float(np.random.randn()), float(torch.rand(1))

    seed_everything(7)
    np.random.randn()  # leaves a cached Gaussian in NumPy's state
    torch.save(RandomStates().state_dict(), tmp_path / "states.pt")
    expected = draw()
    seed_everything(8)
    RandomStates().load_state_dict(torch.load(tmp_path / "states.pt", weights_only=True))
    assert draw() == expected


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_run_killed_mid_epoch_resumes_to_the_weights_of_an_uninterrupted_run(fault_data: Dict[str, str], tmp_path: Path, num_workers: int) -> None:
    reference = tmp_path / "uninterrupted"
    _train(fault_data, reference, num_workers=num_workers)
    assert _iterations(reference / "models") == [2 * EPOCH]

    # the same run, checkpointed after every iteration, killed once it is into the second epoch
    killed = tmp_path / "killed"
    models = killed / "models"
    command = _training_command(fault_data, killed, num_workers=num_workers, checkpoint_iteration_interval=1)
    with open(tmp_path / "killed.log", "w") as log_file:  # a file, not a pipe: a full pipe would stall the child
        proc = subprocess.Popen(command, env=_env(), cwd=tmp_path, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        _kill_when(proc, lambda: any(i > EPOCH for i in _iterations(models)))
    at = _iterations(models)[-1]
    assert at % EPOCH != 0, f"the kill came at the end of an epoch (iteration {at}), not in the middle: too slow a poll"

    resumed = _train(fault_data, killed, num_workers=num_workers, checkpoint_iteration_interval=1)
    log = resumed.stdout + resumed.stderr
    assert f"at epoch 1, iteration {at} ({at - EPOCH} iterations into epoch 2)" in log
    assert f"replayed the {at - EPOCH} batches" in log
    assert _iterations(models) == [2 * EPOCH]
    final, expected = (torch.load(root / "models" / f"train_checkpoint_{2 * EPOCH}.pt", weights_only=True) for root in (killed, reference))
    _assert_same_state(final["network"], expected["network"], "trainable weights")
    for name, moments in expected["optimizer"]["state"].items():
        _assert_same_state(final["optimizer"]["state"][name], moments, f"optimizer state {name}")
    assert final["lr_scheduler"] == expected["lr_scheduler"]
    assert final["best_model"] == expected["best_model"]
    # the deployable model is the same too: the best validation score survived the kill
    model, expected_model = (torch.load(root / "models" / "model.pt", weights_only=True) for root in (killed, reference))
    _assert_same_state(model["model"], expected_model["model"], "model.pt")
    assert model["extra"] == expected_model["extra"]


def _child(function: str, folder: Path, stdout: Optional[int] = None) -> subprocess.Popen:
    code = f"import _faults; _faults.{function}({str(folder)!r})"
    return subprocess.Popen([sys.executable, "-c", code], env=_env(), stdout=stdout, stderr=subprocess.PIPE, text=True, start_new_session=True)


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_checkpoint_and_resume_ignores_the_rest(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    proc = _child("save_then_block", folder, stdout=subprocess.PIPE)
    timer = threading.Timer(120, proc.kill)  # a child that never reaches the write must not hang the test
    timer.start()
    try:
        line = proc.stdout.readline()
    finally:
        timer.cancel()
    assert line.startswith(PARTIAL), proc.stderr.read()[-3000:]
    partial = Path(line.split(maxsplit=1)[1].strip())
    _kill_when(proc, lambda: True)

    # the second save died half-written under a hidden temporary name; the first is whole
    assert sorted(p.name for p in folder.iterdir()) == sorted([partial.name, "train_checkpoint_1.pt"])
    assert partial.name.startswith(".train_checkpoint_2.pt.") and partial.stat().st_size > 0
    with pytest.raises(Exception):  # noqa: B017 - any reader error: the file is truncated
        torch.load(partial, weights_only=True)
    previous = torch.load(folder / "train_checkpoint_1.pt", weights_only=True)
    assert previous["trainer"]["iteration"] == 1 and bool((previous["model"]["weight"] == 1.0).all())
    assert latest_checkpoint(folder) == str(folder / "train_checkpoint_1.pt")

    # resuming loads the whole checkpoint and the next save clears the leftover
    model = torch.nn.Linear(256, 256)
    seen: List[float] = []

    def step(engine: Engine, batch: int) -> None:
        seen.append(model.weight[0, 0].item())
        with torch.no_grad():
            model.weight.fill_(float(engine.state.iteration))

    engine = Engine(step)
    ResumeFromCheckpoint(folder, {"model": model}).attach(engine)
    AtomicCheckpointSaver(folder, {"model": model}, epoch_interval=1).attach(engine)
    engine.run(range(4), max_epochs=1)
    assert seen == [1.0, 2.0, 3.0]  # iterations 2 to 4, starting from checkpoint 1's weights
    assert sorted(p.name for p in folder.iterdir()) == ["train_checkpoint_4.pt"]


def test_checkpoints_saved_in_a_loop_survive_a_kill_at_any_moment(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    proc = _child("save_forever", folder)
    # writing is most of what the child does, so a kill lands in the middle of a save nearly every time
    _kill_when(proc, lambda: any(i >= 3 for i in _iterations(folder)))
    complete = _iterations(folder)
    assert complete
    for iteration in complete:
        state = torch.load(folder / f"train_checkpoint_{iteration}.pt", weights_only=True)
        assert state["trainer"]["iteration"] == iteration
        assert bool((state["model"]["weight"] == float(iteration)).all())


def test_a_fresh_run_replaces_the_checkpoints_of_a_run_it_did_not_resume(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    torch.save({"trainer": {"iteration": 100}}, folder / "train_checkpoint_100.pt")  # an earlier, longer run
    model = torch.nn.Linear(4, 4)
    engine = Engine(lambda engine, batch: None)
    ResumeFromCheckpoint(folder, {"model": model}, enabled=False).attach(engine)
    AtomicCheckpointSaver(folder, {"model": model}, epoch_interval=1).attach(engine)
    engine.run(range(3), max_epochs=1)
    # otherwise a later resume would continue the old run instead of this one
    assert _iterations(folder) == [3]


def test_a_nan_loss_stops_training_with_one_line_and_keeps_the_last_checkpoint(fault_data: Dict[str, str], tmp_path: Path) -> None:
    root = tmp_path / "run"
    models = root / "models"
    _train(fault_data, root, max_epochs=1, checkpoint_iteration_interval=1)
    before = {p.name: p.read_bytes() for p in models.iterdir()}
    assert sorted(before) == ["model.pt", f"train_checkpoint_{EPOCH}.pt"]

    # the loss of the first iteration of epoch 2 is NaN; checkpoints are due after every iteration
    nan = tmp_path / "nan_loss.json"
    nan.write_text(json.dumps({"train#trainer#loss_function": {"_target_": "_faults.NaNLossAt", "loss": "@loss", "call": 1}}))
    result = _train(fault_data, root, extra_configs=[str(nan)], check=False, max_epochs=2, checkpoint_iteration_interval=1)
    assert result.returncode == 1, result.stderr[-3000:]
    messages = [line for line in result.stderr.splitlines() if "training stopped" in line]
    assert messages == [
        f"balr-sam bundle: training stopped: the loss is nan at epoch 2, iteration {EPOCH + 1}; "
        "the last checkpoint, written before this iteration, is intact (lower the learning rate or check the data)"
    ]
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    # nothing was written after the NaN: same files, same bytes, finite weights
    assert {p.name: p.read_bytes() for p in models.iterdir()} == before
    for name, key in ((f"train_checkpoint_{EPOCH}.pt", "network"), ("model.pt", "model")):
        weights = torch.load(models / name, weights_only=True)[key]
        assert all(bool(torch.isfinite(w).all()) for w in weights.values() if w.is_floating_point()), name


def test_a_code_executing_training_checkpoint_is_refused_with_one_line(fault_data: Dict[str, str], tmp_path: Path) -> None:
    """A crafted ``train_checkpoint_*.pt`` in the folder a run resumes from: exit 1, one line naming
    the file, and the code in it never runs."""
    bundle_root = tmp_path / "run"
    models = bundle_root / "models"
    models.mkdir(parents=True)
    marker = tmp_path / "pwned"
    evil = models / "train_checkpoint_3.pt"
    torch.save({"model": {}, "note": CodeExecutingPickle(marker)}, evil)
    result = _train(fault_data, bundle_root, check=False)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if "balr-sam bundle:" in line]
    assert len(lines) == 1 and str(evil) in lines[0] and "refused" in lines[0], result.stderr[-2000:]
    assert not marker.exists()
    assert evil.is_file()  # refused, not deleted: the user decides what to do with it
