"""Fixtures of the main suite (``shared_data`` and ``tiny_synapse`` are in the repository's root conftest)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest

from _segmenting import make_segmenting
from _tiny_bundle import tiny_infer_args, train_tiny


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory, tiny_synapse: Callable[..., Tuple[Path, Path]]) -> Dict[str, str]:
    root = tmp_path_factory.mktemp("tiny_bundle")
    data, sam = tiny_synapse(root, 5, 0.2)
    return {"root": str(root), "dataset_dir": str(data), "sam": str(sam)}


@pytest.fixture(scope="session")
def tiny_trained(tiny_dataset: Dict[str, str]) -> Path:
    """Bundle root of a tiny BALR-SAM trained for two epochs through ``monai.bundle run training``
    (``models/model.pt`` inside), whose class hypernetworks are then seeded so that it segments the
    dataset's volumes (:func:`_segmenting.make_segmenting`: at least 3 labels and 5-95 % foreground on
    every slice); two epochs alone leave it predicting background. Read-only for the tests: a test
    that trains or evaluates into a bundle copies it first."""
    from balr_sam.data.pipelines import ct_inference_preprocessing

    bundle_root = Path(tiny_dataset["root"]) / "run"
    train_tiny(tiny_dataset, bundle_root)
    preprocessing = ct_inference_preprocessing(img_size=64)
    probes = [
        preprocessing({"image": str(volume)})["image"][0].permute(2, 0, 1)[:, None].float()
        for volume in sorted((Path(tiny_dataset["dataset_dir"]) / "img").glob("*.nii.gz"))
    ]
    make_segmenting(bundle_root / "models" / "model.pt", probes, min_classes=3, sam_checkpoint=tiny_dataset["sam"])
    return bundle_root


@pytest.fixture(scope="module")
def infer_args(tiny_dataset: Dict[str, str], tiny_trained: Path, tmp_path_factory: pytest.TempPathFactory) -> List[str]:
    """``balr-sam infer`` options for the tiny trained bundle (:func:`_tiny_bundle.tiny_infer_args`), on the config's default device."""
    return tiny_infer_args(tiny_dataset, tiny_trained, tmp_path_factory.mktemp("cfg"))
