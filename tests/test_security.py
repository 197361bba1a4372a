"""Loading files never executes code: crafted pickles in every place a weight file is read are
refused with a one-line error, and the code in them does not run."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import pytest
import torch

from _faults import CodeExecutingPickle
from _tiny_bundle import tiny_infer_args
from balr_sam.cli import main
from balr_sam.errors import CheckpointError
from balr_sam.inference import load_balr_sam


def _evil(path: Path, payload: Dict) -> Path:
    torch.save(payload, path)
    return path


def test_malicious_trained_model_is_refused(tiny_dataset: Dict[str, str], tiny_trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "pwned"
    good = torch.load(tiny_trained / "models" / "model.pt", weights_only=True)
    evil = _evil(tmp_path / "model.pt", {**good, "extra": {"note": CodeExecutingPickle(marker)}})
    with pytest.raises(CheckpointError, match=r"model\.pt: cannot read checkpoint: refused"):
        load_balr_sam(evil, tiny_dataset["sam"])
    image = sorted((Path(tiny_dataset["dataset_dir"]) / "img").glob("*.nii.gz"))[0]
    code = main(["infer", str(image), str(tmp_path / "out"), *tiny_infer_args(tiny_dataset, tiny_trained, tmp_path, checkpoint=evil)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    refused = [line for line in err.splitlines() if str(evil) in line and "refused" in line]
    assert len(refused) == 1 and [line for line in err.splitlines() if "error" in line] == refused
    assert not marker.exists()
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_malicious_sam_checkpoint_is_refused(tiny_dataset: Dict[str, str], tiny_trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "pwned"
    sam = torch.load(tiny_dataset["sam"], weights_only=True)
    evil = _evil(tmp_path / "sam_vit_t.pth", {**sam, "image_encoder.neck.0.weight": CodeExecutingPickle(marker)})
    image = sorted((Path(tiny_dataset["dataset_dir"]) / "img").glob("*.nii.gz"))[0]
    code = main(["infer", str(image), str(tmp_path / "out"), *tiny_infer_args(tiny_dataset, tiny_trained, tmp_path, sam=str(evil))])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and str(evil) in err and "refused" in err
    assert not marker.exists()
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
