"""The wheel (``pip install .``, not editable): what it contains, and ``balr-sam demo`` and
``balr-sam infer`` from it in a fresh virtual environment, run outside the repository.

The fresh environment gets the dependencies through a ``.pth`` line naming this environment's
site-packages (a path line does not run that folder's own ``.pth`` files, so this environment's
editable ``balr_sam`` stays invisible: checked before the wheel is installed)."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Dict, List

import nibabel as nib
import numpy as np
import pytest

import balr_sam

REPO = Path(__file__).resolve().parents[1]
#: what a wheel is built from (the sdist's files); copied so that the build writes nothing into the checkout
SOURCES = ("pyproject.toml", "MANIFEST.in", "README.md", "LICENSE", "requirements.txt", "balr_sam", "bundle")
#: a user's weights and run outputs in the bundle folder: never shipped
NOT_SHIPPED = ("models", "runs", "eval")


def _run(cmd: List[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """``cmd`` without this test run's ``PYTHONPATH`` (nothing may come from the checkout)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built (no build isolation: this environment's setuptools) from a copy of the sources, with a
    user's ``models/``, ``runs/`` and ``eval/`` in the bundle folder that must stay out of it."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", *NOT_SHIPPED))
        else:
            shutil.copy2(REPO / name, source / name)
    for name in NOT_SHIPPED:
        (source / "bundle" / name).mkdir()
        (source / "bundle" / name / "model.pt").write_bytes(b"a user's file")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(root / "dist"), str(source)], root)
    (built,) = (root / "dist").glob("balr_sam-*.whl")
    return built


def test_wheel_carries_the_package_and_the_bundle_configs(wheel: Path) -> None:
    assert wheel.name == f"balr_sam-{balr_sam.__version__}-py3-none-any.whl"
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {f"balr_sam/{p.relative_to(REPO / 'balr_sam').as_posix()}" for p in (REPO / "balr_sam").rglob("*.py")}
    bundle = {
        f"balr_sam/bundle/{p.relative_to(REPO / 'bundle').as_posix()}"
        for p in (REPO / "bundle").rglob("*")
        if p.is_file() and p.relative_to(REPO / "bundle").parts[0] not in NOT_SHIPPED
    }
    assert {"balr_sam/bundle/configs/inference.json", "balr_sam/bundle/configs/logging.conf", "balr_sam/bundle/LICENSE"} <= bundle
    assert "balr_sam/resources/label_maps.json" in names
    assert modules <= names, sorted(modules - names)
    assert bundle <= names, sorted(bundle - names)
    assert not [n for n in names if n.startswith(tuple(f"balr_sam/bundle/{d}/" for d in NOT_SHIPPED))]
    metadata = zipfile.ZipFile(wheel).read(f"balr_sam-{balr_sam.__version__}.dist-info/METADATA").decode()
    assert f"Version: {balr_sam.__version__}\n" in metadata and "Requires-Dist: monai" in metadata


def _installed_files(package: Path) -> Dict[str, float]:
    return {p.relative_to(package).as_posix(): p.stat().st_mtime for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


@pytest.mark.slow
def test_installed_wheel_runs_demo_and_infer_outside_the_repository(wheel: Path, tmp_path: Path) -> None:
    fresh, work = tmp_path / "fresh", tmp_path / "work"
    work.mkdir()
    _run([sys.executable, "-m", "venv", "--without-pip", str(fresh)], work)
    python = fresh / "bin" / "python"
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], work).stdout.strip())
    (purelib / "dependencies.pth").write_text("".join(f"{p}\n" for p in site.getsitepackages()))

    probe = "import importlib.util as u; print(u.find_spec('monai') is not None, u.find_spec('pip') is not None, u.find_spec('balr_sam') is None)"
    assert _run([str(python), "-c", probe], work).stdout.split() == ["True", "True", "True"], "the fresh environment must see the dependencies, not balr_sam"
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "--no-compile", str(wheel)], work)
    where = "import balr_sam; from balr_sam.bundle_location import bundle_dir; print(balr_sam.__file__); print(bundle_dir())"
    module, bundle = map(Path, _run([str(python), "-c", where], work).stdout.split())
    assert module == purelib / "balr_sam" / "__init__.py"
    assert bundle == (purelib / "balr_sam" / "bundle").resolve()
    installed = _installed_files(purelib / "balr_sam")

    cli = str(fresh / "bin" / "balr-sam")
    demo = work / "demo"
    _run([cli, "demo", "--output", str(demo), "--cases", "4", "--epochs", "1", "--val-interval", "1"], work)
    paths = json.loads((demo / "demo_result.json").read_text())["paths"]
    model, sam = Path(paths["trained_model"]), Path(paths["sam_base_checkpoint"])
    assert model.is_file() and sam.is_file() and (Path(paths["evaluation"]) / "summary.json").is_file()
    demo_predictions = sorted(Path(paths["predictions"]).glob("*.nii.gz"))
    assert len(demo_predictions) == 1

    out = work / "infer"
    # demo.json named as a config of the installed bundle (the model was trained with train.json + demo.json)
    done = _run(
        [
            cli,
            "infer",
            str(demo / "test_images"),
            str(out),
            "--checkpoint",
            str(model),
            "--sam-checkpoint",
            str(sam),
            "--config",
            "demo.json",
            "--device",
            "cpu",
            "--no-progress",
        ],
        work,
    )
    assert "1 written, 0 skipped, 0 failed" in done.stdout
    for prediction in demo_predictions:
        ours = nib.load(out / prediction.name)
        assert ours.shape == nib.load(demo / "test_images" / prediction.name).shape
        assert (np.asarray(ours.dataobj) == np.asarray(nib.load(prediction).dataobj)).mean() >= 0.999  # demo and infer: the same bundle predictor
        assert json.loads((out / prediction.name.replace(".nii.gz", ".json")).read_text())
    assert _installed_files(purelib / "balr_sam") == installed, "running the installed package wrote into site-packages"
    assert sorted(p.name for p in work.iterdir()) == ["demo", "infer"]
