"""Batch inference (``balr-sam infer``): inputs, exact geometry on real CT (NIfTI and DICOM), skipping,
locks, bad cases, and a run killed mid-way that leaves no partial file and completes on re-run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from _segmenting import assert_segments
from _tiny_bundle import copy_tiny_cases
from balr_sam.cli import main
from balr_sam.errors import DataError
from balr_sam.inference import CaseLock, find_inputs, split_for_rank


def test_find_inputs_lists_volumes_images_and_dicom_series(tmp_path: Path, shared_data: Path) -> None:
    shutil.copy(shared_data / "ct-abdomen-nifti" / "image.nii.gz", tmp_path / "ct one.nii.gz")
    shutil.copytree(shared_data / "ct-abdomen-dicom" / "series", tmp_path / "series_a")
    shutil.copy(next((shared_data / "polyp-kvasir" / "images").iterdir()), tmp_path / "polyp.jpg")
    (tmp_path / "notes.txt").write_text("ignored")
    items = {it.case: it.kind for it in find_inputs(tmp_path)}
    assert items == {"ct one": "volume", "series_a": "volume", "polyp": "image2d"}


def test_find_inputs_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        find_inputs(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty.*empty folder"):
        find_inputs(tmp_path / "empty")


def test_rank_split_is_disjoint_and_complete(tmp_path: Path) -> None:
    for i in range(7):
        (tmp_path / f"c{i}.nii.gz").write_bytes(b"")
    items = find_inputs(tmp_path)
    parts = [split_for_rank(items, r, 3) for r in range(3)]
    assert sorted(c.case for part in parts for c in part) == sorted(c.case for c in items)
    assert sum(len(p) for p in parts) == len(items)


def test_case_lock_is_exclusive_and_dead_owners_are_taken_over(tmp_path: Path) -> None:
    out = tmp_path / "case.nii.gz"
    with CaseLock(out) as first:
        assert first.acquired
        with CaseLock(out) as second:
            assert not second.acquired
    assert not first.path.exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    first.path.write_text(f"{os.uname().nodename} {dead.pid}\n")
    with CaseLock(out) as third:
        assert third.acquired


def _assert_same_geometry(written: Path, shape: tuple, affine: np.ndarray) -> np.ndarray:
    image = nib.load(written)
    assert image.shape == shape
    np.testing.assert_allclose(image.affine, affine, atol=1e-4)
    data = np.asarray(image.dataobj)
    assert data.dtype == np.uint8 and set(np.unique(data)) <= set(range(9))
    assert_segments(data, 3, str(written))
    return data


def test_real_ct_nifti_and_dicom_series_keep_their_geometry(shared_data: Path, infer_args: List[str], tmp_path: Path) -> None:
    nifti = shared_data / "ct-abdomen-nifti" / "image.nii.gz"
    out = tmp_path / "out"
    assert main(["infer", str(nifti), str(out), *infer_args]) == 0
    reference = nib.load(nifti)
    _assert_same_geometry(out / "image.nii.gz", reference.shape, reference.affine)

    series = shared_data / "ct-abdomen-dicom" / "series"
    assert main(["infer", str(series), str(out), *infer_args]) == 0
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series)))
    volume = reader.Execute()  # the series' own voxel grid (x, y, z), LPS world
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = lps_to_ras @ (np.asarray(volume.GetDirection()).reshape(3, 3) * np.asarray(volume.GetSpacing()))
    affine[:3, 3] = lps_to_ras @ np.asarray(volume.GetOrigin())
    _assert_same_geometry(out / "series.nii.gz", volume.GetSize(), affine)
    assert volume.GetSize() == (512, 512, 20)
    sidecar = json.loads((out / "series.json").read_text())
    assert sidecar["labels"]["7"] == "aorta" and sidecar["input"].endswith("series")


def test_bad_case_is_reported_and_others_still_run(tiny_dataset: Dict[str, str], infer_args: List[str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    good = sorted((Path(tiny_dataset["dataset_dir"]) / "img").glob("*.nii.gz"))[:2]
    for src in good:
        shutil.copy(src, inputs / src.name)
    (inputs / "broken.nii.gz").write_bytes(good[0].read_bytes()[:300])
    out = tmp_path / "out"
    assert main(["infer", str(inputs), str(out), *infer_args]) == 1
    err = capsys.readouterr().err
    assert "case broken failed" in err and "broken.nii.gz" in err and "Traceback" not in err
    assert sorted(p.name for p in out.glob("*.nii.gz")) == sorted(p.name for p in good)


def test_killed_run_leaves_no_partial_output_and_resumes(tiny_dataset: Dict[str, str], infer_args: List[str], tmp_path: Path) -> None:
    inputs = copy_tiny_cases(tiny_dataset, tmp_path / "in", 12)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "balr_sam", "infer", str(inputs), str(out), *infer_args]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def finished() -> List[Path]:  # final names only: a writer's temporary file is hidden (".case.nii.gz.*.part.nii.gz")
        return sorted(p for p in out.glob("*.nii.gz") if not p.name.startswith("."))

    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and len(finished()) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = finished()
    assert 0 < len(done) < 12, "the run must be killed mid-way for this test to mean anything"
    for path in done:  # whatever exists under a final name is complete
        assert np.asarray(nib.load(path).dataobj).shape == nib.load(inputs / path.name).shape
    assert subprocess.run(command, capture_output=True, timeout=600).returncode == 0
    assert [p.name for p in finished()] == sorted(p.name for p in inputs.glob("*.nii.gz"))
    assert sorted(p.name for p in out.iterdir()) == sorted(n for p in finished() for n in (p.name, p.name[: -len(".nii.gz")] + ".json"))


def test_a_rerun_removes_what_a_killed_writer_left(tiny_dataset: Dict[str, str], infer_args: List[str], tmp_path: Path) -> None:
    inputs = copy_tiny_cases(tiny_dataset, tmp_path / "in", 2)
    out = tmp_path / "out"
    out.mkdir()
    # what a kill in the middle of atomic_write leaves: empty temporaries under hidden names
    leftovers = [out / ".case00.nii.gz.k1ll3d.part.nii.gz", out / ".case00.json.x9y8z7.part.json"]
    other = out / ".notes.txt"  # not a writer's temporary: must stay
    for path in [*leftovers, other]:
        path.write_bytes(b"")
    assert main(["infer", str(inputs), str(out), *infer_args]) == 0
    assert not any(p.exists() for p in leftovers)
    assert other.exists()
    assert sorted(p.name for p in out.glob("case*.nii.gz")) == ["case00.nii.gz", "case01.nii.gz"]
