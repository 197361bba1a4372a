"""The bundle in MONAI Label 0.8.5's ``monaibundle`` sample app, through the real server over HTTP.

Set-up (module fixtures, about a minute on 2 CPU cores): a tiny synthetic CT dataset, a random
``vit_t`` SAM base checkpoint, a BALR-SAM trained on them for one epoch through
``monai.bundle run training`` (img_size 64), the app deployed by ``scripts/setup_monailabel.sh``
exactly as a user does it (``--no-install``: this environment is already the label environment),
a datastore (studies folder) with the synthetic volumes and their labels in the bundle's ids
under ``labels/final/`` plus the real CT sample, and ``monailabel start_server`` on 127.0.0.1 at a
free port, stopped in a ``finally`` block.

Run with the label environment: ``.venv-label/bin/python -m pytest -q tests_label``. Skips when
MONAI Label is not importable; the inference test on the real CT skips when ``../shared/data`` is
absent (the inference after training then uploads a synthetic volume instead).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Tuple

import numpy as np
import pytest

pytest.importorskip("monailabel", reason="MONAI Label is not installed in this environment: run under .venv-label (bash scripts/setup_monailabel.sh)")
requests = pytest.importorskip("requests")

import nibabel as nib  # noqa: E402
import torch  # noqa: E402
from monai.bundle import run as bundle_run  # noqa: E402

from balr_sam.labels import get_label_set, remap_labels  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundle" / "configs"
MODEL = "balr_sam"
CT_ID = "ct_abdomen"  # the real CT's image id in the datastore
#: the bundle's values for the tiny CPU model, trained with them and written into the deployment
TINY = {"variant": "vit_t", "img_size": 64, "batch_size": 2, "slices_per_volume": 2, "num_workers": 0, "sw_batch_size": 32}
START_TIMEOUT = 180  # seconds for the server to answer /info/
TRAIN_TIMEOUT = 300  # seconds for one training epoch through /train/


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _log_tail(path: Path, lines: int = 60) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, tiny_synapse: Callable[..., Tuple[Path, Path]], shared_data_dir: Optional[Path]) -> Dict[str, Path]:
    """Tiny trained model deployed into a fresh monaibundle app, and a datastore for it."""
    root = tmp_path_factory.mktemp("monailabel")
    data, sam = tiny_synapse(root, 4, 0.25)
    run_dir = root / "run"
    bundle_run(
        "training",
        config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "demo.json")],
        meta_file=str(CONFIGS / "metadata.json"),
        dataset_dir=str(data),
        sam_checkpoint=str(sam),
        bundle_root=str(run_dir),
        max_epochs=1,
        val_interval=1,
        **TINY,
    )
    assert (run_dir / "models" / "model.pt").is_file()

    app = root / "app"
    sets = [arg for key, value in {**TINY, "warmup_iterations": 2}.items() for arg in ("--set", f"{key}={value}")]
    cmd = [
        "bash",
        str(REPO / "scripts" / "setup_monailabel.sh"),
        "--no-install",
        "--venv",
        sys.prefix,
        "--app",
        str(app),
        "--sam-checkpoint",
        str(sam),
        "--model",
        str(run_dir / "models" / "model.pt"),
        *sets,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    bundle = app / "model" / MODEL
    assert (app / "main.py").is_file() and (bundle / "configs" / "inference.json").is_file()

    # MONAI Label's local datastore: images in the folder, final labels (the bundle's ids) in labels/final/
    studies = root / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    for case in range(1, 5):
        shutil.copy(data / "img" / f"img{case:04d}.nii.gz", studies / f"synth{case:04d}.nii.gz")
        label = nib.load(str(data / "label" / f"label{case:04d}.nii.gz"))
        ids = remap_labels(np.asarray(label.dataobj), "synapse", "btcv").astype(np.uint8)
        nib.save(nib.Nifti1Image(ids, label.affine, label.header), str(studies / "labels" / "final" / f"synth{case:04d}.nii.gz"))
    if shared_data_dir is not None and (shared_data_dir / "ct-abdomen-nifti" / "image.nii.gz").is_file():
        shutil.copy(shared_data_dir / "ct-abdomen-nifti" / "image.nii.gz", studies / f"{CT_ID}.nii.gz")
    return {"root": root, "app": app, "bundle": bundle, "studies": studies}


@pytest.fixture(scope="module")
def server(deployment: Dict[str, Path], free_port: Callable[[], int]) -> Iterator[str]:
    """``monailabel start_server`` on 127.0.0.1 with the deployed bundle; yields its base URL."""
    import psutil

    port = free_port()
    log = deployment["root"] / "server.log"
    # what the `monailabel` launcher script runs (it takes `python` from PATH, so not used here)
    cmd = [
        sys.executable,
        "-m",
        "monailabel.main",
        "start_server",
        "--app",
        str(deployment["app"]),
        "--studies",
        str(deployment["studies"]),
        "--conf",
        "models",
        MODEL,
        "--conf",
        "zoo_source",
        "local",
        "--conf",
        "sam2",
        "false",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    env = {
        **os.environ,
        "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false",
        "MONAI_LABEL_AUTO_UPDATE_SCORING": "false",
        "MONAI_LABEL_SESSION_PATH": str(deployment["root"] / "sessions"),
    }
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(deployment["root"]))
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"MONAI Label server exited with {proc.returncode}:\n{_log_tail(log)}")
            try:
                if requests.get(f"{url}/info/", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"MONAI Label server did not answer /info/ within {START_TIMEOUT} s:\n{_log_tail(log)}")
            time.sleep(1)
        yield url
    finally:
        try:  # a background training still running (a failed test) is the server's child
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        for child in children:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass


def _infer_geometry_checks(result: Path, reference: Path) -> np.ndarray:
    """The label map has the input's shape and affine and integer values in 0..8; returns it."""
    ref, out = nib.load(str(reference)), nib.load(str(result))
    labels = np.asarray(out.dataobj)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out.affine, ref.affine, atol=1e-3)
    assert np.array_equal(labels, np.rint(labels))
    assert set(np.unique(labels).astype(int).tolist()) <= set(range(9))
    return labels


def test_info_lists_the_eight_organs(server: str) -> None:
    info = requests.get(f"{server}/info/", timeout=30).json()
    organs = {name: i for i, name in get_label_set("synapse").labels.items() if i > 0}
    assert len(organs) == 8
    assert info["models"][MODEL]["labels"] == organs
    assert info["models"][MODEL]["type"] == "segmentation"
    assert MODEL in info["trainers"]
    assert set(organs) <= set(info["labels"])


def test_infer_real_ct_returns_label_map_in_input_geometry(server: str, deployment: Dict[str, Path], shared_data: Path) -> None:
    image = shared_data / "ct-abdomen-nifti" / "image.nii.gz"
    res = requests.post(f"{server}/infer/{MODEL}", params={"image": CT_ID, "output": "image"}, timeout=300)
    assert res.status_code == 200, res.text[:2000]
    result = deployment["root"] / "infer_datastore.nii.gz"
    result.write_bytes(res.content)
    labels = _infer_geometry_checks(result, image)

    # the same segmentation as the product's own batch inference with the deployed bundle
    cli_out = deployment["root"] / "cli_infer"
    done = subprocess.run(
        [sys.executable, "-m", "balr_sam", "infer", str(image), str(cli_out), "--bundle", str(deployment["bundle"]), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    expected = np.asarray(nib.load(str(cli_out / "image.nii.gz")).dataobj)
    assert (labels == expected).mean() >= 0.999  # MONAI Label keeps the adapters unmerged: float-level ties only


def test_train_fine_tunes_then_infers_with_the_new_model(server: str, deployment: Dict[str, Path], shared_data_dir: Optional[Path]) -> None:
    model = deployment["bundle"] / "models" / "model.pt"
    before = _md5(model)
    request = {"max_epochs": 1, "val_split": 0.25, "multi_gpu": False, "device": "cpu"}
    res = requests.post(f"{server}/train/{MODEL}", json=request, timeout=60)
    assert res.status_code == 200, res.text[:2000]
    deadline = time.monotonic() + TRAIN_TIMEOUT
    while True:
        task = requests.get(f"{server}/train/", timeout=30).json()
        if task.get("status") not in ("SUBMITTED", "RUNNING"):
            break
        assert time.monotonic() < deadline, f"training still {task.get('status')} after {TRAIN_TIMEOUT} s"
        time.sleep(1)
    details = "\n".join(task.get("details", []))
    assert task["status"] == "DONE", details
    assert "Restored all variables from" in details  # MONAI Label started from the deployed model.pt
    assert "saved best model" in details  # the bundle's SaveBestModel wrote the fine-tuned model.pt
    assert _md5(model) != before
    trained = torch.load(model, map_location="cpu", weights_only=True)
    assert trained["config"]["variant"] == "vit_t" and trained["extra"]["epoch"] == 1

    # the server picks the new model up; this time the volume is uploaded instead of taken from the datastore
    real = shared_data_dir / "ct-abdomen-nifti" / "image.nii.gz" if shared_data_dir is not None else None
    image = real if real is not None and real.is_file() else deployment["studies"] / "synth0001.nii.gz"
    with open(image, "rb") as fh:
        res = requests.post(f"{server}/infer/{MODEL}", params={"output": "image"}, files={"file": ("image.nii.gz", fh)}, timeout=300)
    assert res.status_code == 200, res.text[:2000]
    result = deployment["root"] / "infer_upload.nii.gz"
    result.write_bytes(res.content)
    _infer_geometry_checks(result, image)
