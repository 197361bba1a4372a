"""Multi-process training (``multi_gpu_train.json``) and batch inference under ``torchrun``: two CPU
processes with the gloo backend stand in for two GPUs."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest
import torch

from _tiny_bundle import DEMO, META, TINY, TRAIN, copy_tiny_cases, tiny_infer_args
from balr_sam.data.datalists import prepare_synapse
from balr_sam.data.synthetic import generate_ct_dataset

MULTI = str(Path(TRAIN).with_name("multi_gpu_train.json"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(args: list, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """torchrun with 2 local processes; on a hang the whole process group is killed (no orphan ranks)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *args]
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"torchrun did not finish in {timeout} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


@pytest.fixture(scope="module")
def ddp_dataset(tiny_dataset: Dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Dict[str, str]:
    """Four training and two validation volumes, so that each of the two ranks gets some of both."""
    data = tmp_path_factory.mktemp("ddp") / "synapse"
    generate_ct_dataset(data, cases=7, seed=5, shape=(48, 48, 8))
    prepare_synapse(data, data / "datalist.json", test_fraction=0.15, val_fraction=0.3, seed=0)
    return {**tiny_dataset, "dataset_dir": str(data)}


def test_two_process_training_keeps_ranks_identical_and_writes_one_checkpoint(ddp_dataset: Dict[str, str], tmp_path: Path) -> None:
    tiny_dataset = ddp_dataset
    # a test-only override that also saves each rank's trainable weights at the end
    dump = tmp_path / "dump.json"
    dump.write_text(json.dumps({"finalize": [
        "$torch.save(balr_sam.engine.TrainableWeights(@network).state_dict(), @bundle_root + '/rank' + str(dist.get_rank()) + '.pt')",
        "$dist.destroy_process_group()",
    ]}))
    root = tmp_path / "run"
    settings = {**TINY, "dataset_dir": tiny_dataset["dataset_dir"], "sam_checkpoint": tiny_dataset["sam"], "bundle_root": str(root), "max_epochs": 2, "val_interval": 1}
    args = ["-m", "monai.bundle", "run", "training", "--config_file", f"['{TRAIN}','{DEMO}','{MULTI}','{dump}']", "--meta_file", META]
    for key, value in settings.items():
        args += [f"--{key}", str(value)]
    result = _torchrun(args, cwd=tmp_path)
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


def test_two_process_inference_writes_every_case_once(tiny_dataset: Dict[str, str], tiny_trained: Path, tmp_path: Path) -> None:
    inputs = copy_tiny_cases(tiny_dataset, tmp_path / "in", 5)
    out = tmp_path / "out"
    result = _torchrun(["-m", "balr_sam", "infer", str(inputs), str(out), *tiny_infer_args(tiny_dataset, tiny_trained, tmp_path)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = re.findall(r"rank (\d) of 2\): (\d+) written, (\d+) skipped, (\d+) failed", result.stdout)
    assert sorted(int(r) for r, *_ in counts) == [0, 1]
    assert sum(int(w) for _, w, _, _ in counts) == 5 and all(int(s) == 0 and int(f) == 0 for _, _, s, f in counts)
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"case{i:02d}.nii.gz" for i in range(5)]
