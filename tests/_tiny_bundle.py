"""Settings shared by the bundle, inference and distributed tests: the config files, the tiny
model settings (``vit_t`` at img_size 64, CPU, seconds) and :func:`train_tiny`; the session
fixtures ``tiny_dataset`` and ``tiny_trained`` built from them live in ``conftest.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

from monai.bundle import run

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundle" / "configs"
TRAIN = str(CONFIGS / "train.json")
DEMO = str(CONFIGS / "demo.json")
INFER = str(CONFIGS / "inference.json")
META = str(CONFIGS / "metadata.json")
TINY = {"variant": "vit_t", "img_size": 64, "batch_size": 2, "slices_per_volume": 2, "num_workers": 0, "sw_batch_size": 32}


def train_tiny(tiny: Dict[str, str], bundle_root: Path, **overrides: object) -> None:
    """``monai.bundle run training`` with train.json + demo.json at the tiny settings."""
    settings = {**TINY, "dataset_dir": tiny["dataset_dir"], "sam_checkpoint": tiny["sam"], "bundle_root": str(bundle_root), "max_epochs": 2, "val_interval": 1}
    settings.update(overrides)
    run("training", config_file=[TRAIN, DEMO], meta_file=META, **settings)
