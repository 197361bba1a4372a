"""Session fixtures shared by the bundle and inference tests: a tiny synthetic Synapse dataset,
a random ``vit_t`` SAM base checkpoint, and a BALR-SAM trained on them for two epochs through
``monai.bundle run training`` (img_size 64, CPU, a few seconds)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import pytest
import torch
from monai.bundle import run

from balr_sam.data.datalists import prepare_synapse
from balr_sam.data.synthetic import generate_ct_dataset
from balr_sam.networks.variants import build_sam

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


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, str]:
    root = tmp_path_factory.mktemp("tiny_bundle")
    data = root / "synapse"
    generate_ct_dataset(data, cases=5, seed=3, shape=(48, 48, 8))
    prepare_synapse(data, data / "datalist.json", test_fraction=0.2, val_fraction=0.2, seed=0)
    torch.manual_seed(0)
    sam = root / "sam_vit_t.pth"
    torch.save(build_sam("vit_t").state_dict(), sam)
    return {"root": str(root), "dataset_dir": str(data), "sam": str(sam)}


@pytest.fixture(scope="session")
def tiny_trained(tiny_dataset: Dict[str, str]) -> Path:
    """Bundle root of the trained tiny model (``models/model.pt`` inside)."""
    bundle_root = Path(tiny_dataset["root"]) / "run"
    train_tiny(tiny_dataset, bundle_root)
    return bundle_root
