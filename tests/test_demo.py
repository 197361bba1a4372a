"""The one-command demo, shortened: synthetic phantoms -> bundle training -> batch inference -> evaluation.

The full demo (``balr-sam demo``: 24 phantoms, 50 epochs at 256 px) reaches a mean Dice above
0.8 on its held-out phantoms (README); this shortened run (fewer cases and epochs, 128 px) must
still show that the pipeline learns, and produce every output the demo promises.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib

from balr_sam.commands.demo import run_demo


def test_shortened_demo_learns_and_writes_every_output(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = run_demo(out, cases=10, epochs=40, val_interval=40, extra_overrides={"img_size": 128, "batch_size": 2, "slices_per_volume": 6})
    paths = result["paths"]
    assert Path(paths["trained_model"]).is_file()
    summary = json.loads((Path(paths["evaluation"]) / "summary.json").read_text())
    assert summary["num_failed"] == 0 and summary["num_cases"] == 2
    assert result["mean_dice"] == summary["mean"]["dice"]
    assert result["mean_dice"] >= 0.3, result["mean_dice"]  # untrained: 0
    assert list(Path(paths["overlays"]).glob("*.png"))
    predictions = sorted(Path(paths["predictions"]).glob("*.nii.gz"))
    assert len(predictions) == summary["num_cases"]
    for prediction in predictions:
        source = nib.load(out / "test_images" / prediction.name)
        assert nib.load(prediction).shape == source.shape
    assert json.loads((out / "demo_result.json").read_text())["paths"] == paths
