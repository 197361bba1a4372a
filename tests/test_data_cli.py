"""``balr-sam prepare`` and ``balr-sam synth`` on the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from _data_factories import make_btcv_tree, make_isic_tree, make_polyp_tree, make_transunet_tree, write_png
from balr_sam.cli import main


def test_synth_ct_with_datalist(tmp_path, capsys):
    out = tmp_path / "synth"
    rc = main(["synth", "ct", str(out), "--cases", "3", "--shape", "32", "32", "8", "--seed", "1", "--datalist", str(out / "datalist.json")])
    assert rc == 0
    assert sorted(p.name for p in (out / "label").iterdir()) == ["label0001.nii.gz", "label0002.nii.gz", "label0003.nii.gz"]
    dl = json.loads((out / "datalist.json").read_text())
    assert dl["numTraining"] + dl["numValidation"] + dl["numTest"] == 3
    assert "wrote 3 synthetic ct cases" in capsys.readouterr().out
    assert main(["synth", "ct", str(out), "--cases", "1"]) == 1  # not empty: refused
    assert "--overwrite" in capsys.readouterr().err
    assert main(["synth", "ct", str(out), "--cases", "1", "--shape", "16", "16", "4", "--overwrite"]) == 0
    assert len(list((out / "img").iterdir())) == 1


@pytest.mark.parametrize("kind,expected", [("isic", 5), ("polyp", 4 + 5)])
def test_synth_2d_with_datalist(tmp_path, kind, expected):
    out = tmp_path / kind
    assert (
        main(
            ["synth", kind, str(out), "--cases", "5" if kind == "isic" else "4", "--test-cases", "1", "--size", "32", "40", "--datalist", str(out / "dl.json")]
        )
        == 0
    )
    dl = json.loads((out / "dl.json").read_text())
    assert dl["numTraining"] + dl["numValidation"] + dl["numTest"] == expected


def test_prepare_each_dataset(tmp_path, capsys):
    make_btcv_tree(tmp_path / "btcv", [5, 6, 7, 8])
    assert (
        main(
            [
                "prepare",
                "synapse",
                str(tmp_path / "btcv"),
                "-o",
                str(tmp_path / "s.json"),
                "--verify",
                "--split",
                "fraction",
                "--val-fraction",
                "0.25",
                "--test-fraction",
                "0.25",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "training 2, validation 1, test 1" in text and "verified 4 cases" in text

    make_transunet_tree(tmp_path / "tu", {5: 2}, test_cases=[1])
    assert main(["prepare", "synapse", str(tmp_path / "tu"), "-o", str(tmp_path / "t.json")]) == 0
    assert json.loads((tmp_path / "t.json").read_text())["format"] == "transunet"

    make_isic_tree(tmp_path / "isic", {"training": 2, "validation": 1, "test": 1})
    assert main(["prepare", "isic2017", str(tmp_path / "isic"), "-o", str(tmp_path / "i.json")]) == 0

    make_polyp_tree(tmp_path / "polyp", 2)
    assert main(["prepare", "polyp", str(tmp_path / "polyp"), "-o", str(tmp_path / "p.json"), "--val-fraction", "0.5"]) == 0
    dl = json.loads((tmp_path / "p.json").read_text())
    assert dl["numTraining"] == 1 and dl["numValidation"] == 1 and dl["numTest"] == 10

    for i in range(3):
        write_png(tmp_path / "ph2" / "images" / f"IMD{i:03d}.png", np.zeros((6, 6, 3)))
        write_png(tmp_path / "ph2" / "masks" / f"IMD{i:03d}_lesion.png", np.zeros((6, 6)))
    assert main(["prepare", "images2d", str(tmp_path / "ph2"), "--mask-suffix", "_lesion", "--test-fraction", "1", "-o", str(tmp_path / "ph2.json")]) == 0
    assert json.loads((tmp_path / "ph2.json").read_text())["numTest"] == 3
    for i in range(3):  # the same with each mask beside its image: the suffixed files are masks only
        write_png(tmp_path / "ph2flat" / f"IMD{i:03d}.png", np.zeros((6, 6, 3)))
        write_png(tmp_path / "ph2flat" / f"IMD{i:03d}_lesion.png", np.zeros((6, 6)))
    assert (
        main(
            [
                "prepare",
                "images2d",
                str(tmp_path / "ph2flat"),
                "--images",
                ".",
                "--masks",
                ".",
                "--mask-suffix",
                "_lesion",
                "--test-fraction",
                "1",
                "-o",
                str(tmp_path / "ph2flat.json"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "ph2flat.json").read_text())["numTest"] == 3

    assert (
        main(
            [
                "prepare",
                "nifti",
                str(tmp_path / "btcv" / "RawData" / "Training"),
                "--images",
                str(tmp_path / "btcv" / "RawData" / "Training" / "img"),
                "-o",
                str(tmp_path / "n.json"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "n.json").read_text())["numTest"] == 4  # no labels: all for inference

    # refuses to overwrite, invalid option values are usage errors
    assert main(["prepare", "polyp", str(tmp_path / "polyp"), "-o", str(tmp_path / "p.json")]) == 1
    assert main(["prepare", "polyp", str(tmp_path / "polyp"), "-o", str(tmp_path / "p.json"), "--overwrite"]) == 0
    assert main(["prepare", "images2d", str(tmp_path / "ph2"), "--mask-suffix", "_lesion", "--test-fraction", "2", "-o", str(tmp_path / "bad.json")]) == 2
