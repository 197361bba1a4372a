"""Multi-process training (``multi_gpu_train.json``) and batch inference under ``torchrun``: two CPU
processes with the gloo backend stand in for two GPUs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, Tuple

import pytest
import torch

from _tiny_bundle import DEMO, TRAIN, copy_tiny_cases, tiny_infer_args, tiny_settings, training_argv

MULTI = str(Path(TRAIN).with_name("multi_gpu_train.json"))


def _torchrun(args: list, cwd: Path, port: int, timeout: int = 600) -> subprocess.CompletedProcess:
    """torchrun with 2 local processes (rendezvous on 127.0.0.1:``port``); on a hang the whole process group is killed (no orphan ranks)."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        *args,
    ]
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"torchrun did not finish in {timeout} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


@pytest.fixture(scope="module")
def ddp_dataset(tiny_synapse: Callable[..., Tuple[Path, Path]], tmp_path_factory: pytest.TempPathFactory) -> Dict[str, str]:
    """Four training and two validation volumes, so that each of the two ranks gets some of both."""
    root = tmp_path_factory.mktemp("ddp")
    data, sam = tiny_synapse(root, 7, 0.15, val_fraction=0.3, seed=5)
    return {"root": str(root), "dataset_dir": str(data), "sam": str(sam)}


def test_two_process_training_keeps_ranks_identical_and_writes_one_checkpoint(
    ddp_dataset: Dict[str, str], free_port: Callable[[], int], tmp_path: Path
) -> None:
    # a test-only override that also saves each rank's trainable weights at the end
    dump = tmp_path / "dump.json"
    dump.write_text(
        json.dumps(
            {
                "finalize": [
                    "$torch.save(balr_sam.engine.TrainableWeights(@network).state_dict(), @bundle_root + '/rank' + str(dist.get_rank()) + '.pt')",
                    "$dist.destroy_process_group()",
                ]
            }
        )
    )
    root = tmp_path / "run"
    result = _torchrun(training_argv([TRAIN, DEMO, MULTI, dump], tiny_settings(ddp_dataset, root)), tmp_path, free_port())
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(root / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    checkpoints = sorted((root / "models").glob("train_checkpoint_*.pt"))
    assert len(checkpoints) == 1
    assert (root / "models" / "model.pt").is_file()
    datalist = json.loads((Path(ddp_dataset["dataset_dir"]) / "datalist.json").read_text())
    assert len(datalist["training"]) == 4 and len(datalist["validation"]) == 2
    # the 4 training volumes are split across the ranks: 2 epochs x (4 / 2 ranks / batch 2) = 2 iterations
    assert torch.load(checkpoints[0], weights_only=True)["trainer"]["iteration"] == 2
    # logs are written by rank 0 only
    assert len(re.findall(r"Epoch\[1\] Metrics -- .*val_mean_dice", result.stdout + result.stderr)) == 1


def test_two_process_inference_writes_every_case_once(tiny_dataset: Dict[str, str], tiny_trained: Path, free_port: Callable[[], int], tmp_path: Path) -> None:
    inputs = copy_tiny_cases(tiny_dataset, tmp_path / "in", 5)
    out = tmp_path / "out"
    result = _torchrun(["-m", "balr_sam", "infer", str(inputs), str(out), *tiny_infer_args(tiny_dataset, tiny_trained, tmp_path)], tmp_path, free_port())
    assert result.returncode == 0, result.stderr[-3000:]
    counts = re.findall(r"rank (\d) of 2\): (\d+) written, (\d+) skipped, (\d+) failed", result.stdout)
    assert sorted(int(r) for r, *_ in counts) == [0, 1]
    assert sum(int(w) for _, w, _, _ in counts) == 5 and all(int(s) == 0 and int(f) == 0 for _, _, s, f in counts)
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"case{i:02d}.nii.gz" for i in range(5)]
