"""Fixtures of the main suite (``shared_data`` and ``tiny_synapse`` are in the repository's root conftest)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Tuple

import pytest
from _tiny_bundle import train_tiny


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory, tiny_synapse: Callable[[Path, int, float], Tuple[Path, Path]]) -> Dict[str, str]:
    root = tmp_path_factory.mktemp("tiny_bundle")
    data, sam = tiny_synapse(root, 5, 0.2)
    return {"root": str(root), "dataset_dir": str(data), "sam": str(sam)}


@pytest.fixture(scope="session")
def tiny_trained(tiny_dataset: Dict[str, str]) -> Path:
    """Bundle root of a tiny BALR-SAM trained for two epochs through ``monai.bundle run training`` (``models/model.pt`` inside)."""
    bundle_root = Path(tiny_dataset["root"]) / "run"
    train_tiny(tiny_dataset, bundle_root)
    return bundle_root
