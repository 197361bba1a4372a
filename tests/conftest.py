"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import pytest
import torch
from _tiny_bundle import train_tiny

from balr_sam.data.datalists import prepare_synapse
from balr_sam.data.shared import SHARED_DATA_ENV, shared_data_dir
from balr_sam.data.synthetic import generate_ct_dataset
from balr_sam.networks.variants import build_sam


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real sample data folder (``<repo>/../shared/data`` or ``$BALR_SAM_SHARED_DATA``); skips when absent."""
    path = shared_data_dir()
    if path is None:
        pytest.skip(f"shared sample data not found: set {SHARED_DATA_ENV} or put it at <repo>/../shared/data")
    return path


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
    """Bundle root of a tiny BALR-SAM trained for two epochs through ``monai.bundle run training`` (``models/model.pt`` inside)."""
    bundle_root = Path(tiny_dataset["root"]) / "run"
    train_tiny(tiny_dataset, bundle_root)
    return bundle_root
