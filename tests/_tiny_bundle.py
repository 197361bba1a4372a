"""Settings shared by the bundle, inference and distributed tests: the config files, the tiny
model settings (``vit_t`` at img_size 64, CPU, seconds), :func:`tiny_settings` and :func:`training_argv`
(the training overrides, and as command-line arguments) and :func:`train_tiny`; the session
fixtures ``tiny_dataset`` and ``tiny_trained`` built from them live in ``conftest.py``; and
:func:`tiny_infer_args`, the ``balr-sam infer`` options for that trained bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from monai.bundle import run

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundle" / "configs"
TRAIN = str(CONFIGS / "train.json")
DEMO = str(CONFIGS / "demo.json")
INFER = str(CONFIGS / "inference.json")
META = str(CONFIGS / "metadata.json")
TINY = {"variant": "vit_t", "img_size": 64, "batch_size": 2, "slices_per_volume": 2, "num_workers": 0, "sw_batch_size": 32}


def tiny_settings(tiny: Dict[str, str], bundle_root: Path, **overrides: object) -> Dict[str, object]:
    """Training overrides at the tiny settings (2 epochs, validation every epoch) for the dataset and SAM
    base of ``tiny``, written to ``bundle_root``, updated by ``overrides``."""
    settings: Dict[str, object] = {
        **TINY,
        "dataset_dir": tiny["dataset_dir"],
        "sam_checkpoint": tiny["sam"],
        "bundle_root": str(bundle_root),
        "max_epochs": 2,
        "val_interval": 1,
    }
    settings.update(overrides)
    return settings


def training_argv(configs: Sequence[object], settings: Dict[str, object]) -> List[str]:
    """``-m monai.bundle run training`` arguments (after the interpreter) with the config files ``configs``,
    metadata.json and each of ``settings`` as ``--key value``."""
    files = ",".join(f"'{config}'" for config in configs)
    argv = ["-m", "monai.bundle", "run", "training", "--config_file", f"[{files}]", "--meta_file", META]
    for key, value in settings.items():
        argv += [f"--{key}", str(value)]
    return argv


def train_tiny(tiny: Dict[str, str], bundle_root: Path, **overrides: object) -> None:
    """``monai.bundle run training`` with train.json + demo.json at the tiny settings."""
    run("training", config_file=[TRAIN, DEMO], meta_file=META, **tiny_settings(tiny, bundle_root, **overrides))


def tiny_infer_args(
    tiny: Dict[str, str],
    trained: Path,
    folder: Path,
    name: str = "tiny_infer.json",
    checkpoint: Optional[Path] = None,
    sam: Optional[str] = None,
    **settings: object,
) -> List[str]:
    """``balr-sam infer`` options for the tiny trained bundle: its ``model.pt`` (or ``checkpoint``), its SAM
    base (or ``sam``), ``demo.json`` and an override file ``folder/name`` with the tiny settings updated by ``settings``."""
    config = Path(folder) / name
    config.write_text(json.dumps({"variant": "vit_t", "img_size": 64, "sw_batch_size": 32, "num_workers": 0, **settings}))
    return [
        "--checkpoint",
        str(checkpoint or Path(trained) / "models" / "model.pt"),
        "--sam-checkpoint",
        sam or tiny["sam"],
        "--config",
        DEMO,
        "--config",
        str(config),
        "--no-progress",
    ]


def copy_tiny_cases(tiny: Dict[str, str], folder: Path, count: int) -> Path:
    """``folder`` (created) holding ``count`` copies of the tiny dataset's volumes, ``case00.nii.gz``, ``case01.nii.gz``, ..."""
    folder.mkdir(parents=True)
    sources = sorted((Path(tiny["dataset_dir"]) / "img").glob("*.nii.gz"))
    for i in range(count):
        shutil.copy(sources[i % len(sources)], folder / f"case{i:02d}.nii.gz")
    return folder
