"""Every datalist format trains and validates through the bundle, as a new user runs it.

For each dataset layout ``balr-sam prepare`` accepts (raw BTCV volumes, TransUNet's ``train_npz``
+ ``test_vol_h5``, ISIC 2017, PraNet polyps), a tiny synthetic tree in exactly that layout is
prepared with ``balr-sam prepare`` and trained with ``python -m monai.bundle run training`` (the
documented configs: ``train.json``, plus ``isic2017.json``/``polyp.json`` for the 2D tasks) for
one epoch with one validation, at the tiny CPU settings (``vit_t``, 64 px).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest
import torch

from _data_factories import make_btcv_tree, make_isic_tree, make_polyp_tree, make_transunet_tree
from _tiny_bundle import CONFIGS, DEMO, TRAIN, tiny_settings, training_argv
from balr_sam.cli import main

Layout = Callable[[Path], Tuple[List[str], List[str]]]


def _btcv(root: Path) -> Tuple[List[str], List[str]]:
    make_btcv_tree(root, [1, 2, 3], shape=(16, 16, 3))  # one case each for training, validation, test
    return ["synapse", str(root), "--val-fraction", "0.34", "--test-fraction", "0.34"], []


def _transunet(root: Path) -> Tuple[List[str], List[str]]:
    make_transunet_tree(root, {5: 3, 6: 2}, test_cases=[1], size=16, depth=3)  # case 5 (3 slices) validates
    return ["synapse", str(root), "--val-fraction", "0.5"], []


def _isic2017(root: Path) -> Tuple[List[str], List[str]]:
    make_isic_tree(root, {"training": 2, "validation": 1, "test": 1})
    return ["isic2017", str(root)], [str(CONFIGS / "isic2017.json")]


def _polyp(root: Path) -> Tuple[List[str], List[str]]:
    make_polyp_tree(root, 3, {"Kvasir": 1})
    return ["polyp", str(root), "--val-fraction", "0.34"], [str(CONFIGS / "polyp.json")]


#: layout -> (tree writer + ``balr-sam prepare`` arguments and extra configs, datalist format, validation items)
LAYOUTS: Dict[str, Tuple[Layout, str, int]] = {
    "btcv": (_btcv, "volume", 1),
    "transunet": (_transunet, "transunet", 3),  # three slices of one case, validated as one volume
    "isic2017": (_isic2017, "image2d", 1),
    "polyp": (_polyp, "image2d", 1),
}


def _errors(stderr: str) -> str:
    """The exception lines of a failed run (a bundle run prints each chained exception), then its tail."""
    lines = [line for line in stderr.splitlines() if "Error:" in line]
    return "\n".join(lines[-8:]) + "\n...\n" + stderr[-2000:]


@pytest.mark.slow  # four bundle runs, each in its own interpreter: 20-50 s each on a CPU
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_bundle_trains_and_validates_each_datalist_format(layout: str, tmp_path: Path, tiny_dataset: Dict[str, str]) -> None:
    write, fmt, n_validation = LAYOUTS[layout]
    data = tmp_path / "data"
    prepare_args, configs = write(data)
    assert main(["prepare", *prepare_args, "--output", str(data / "datalist.json")]) == 0
    datalist = json.loads((data / "datalist.json").read_text())
    assert datalist["format"] == fmt and datalist["numTraining"] >= 1 and datalist["numValidation"] == n_validation

    settings = tiny_settings(tiny_dataset, tmp_path / "bundle", dataset_dir=str(data), max_epochs=1, val_interval=1)
    done = subprocess.run([sys.executable, *training_argv([TRAIN, DEMO, *configs], settings)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, _errors(done.stderr)
    # the validation ran after the one epoch, scored the validation split and kept that model
    best = torch.load(tmp_path / "bundle" / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert best["extra"]["epoch"] == 1 and math.isfinite(best["extra"]["value"])
    assert best["extra"]["metric"] == ("val_mean_dice" if fmt != "image2d" else "val_dice")
