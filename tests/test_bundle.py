"""The MONAI bundle: MONAI's own checks, training through ``monai.bundle run``, resuming, evaluation,
export and batch inference, on a tiny synthetic dataset (small SAM variant, CPU)."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow, ckpt_export, run, verify_metadata, verify_net_in_out

from _segmenting import assert_segments
from _tiny_bundle import CONFIGS, DEMO, INFER, META, REPO, TINY, TRAIN, train_tiny

# MONAI's official metadata schema (meta_schema_20220324.json), kept in the repository: the suite never
# goes to the network.
SCHEMA = REPO / "bundle" / "schema" / "metadata_schema.json"


def test_train_and_infer_workflows_have_every_required_property(tiny_dataset: dict, tmp_path: Path) -> None:
    train = ConfigWorkflow(config_file=TRAIN, meta_file=META, workflow_type="train", dataset_dir=tiny_dataset["dataset_dir"], bundle_root=str(tmp_path))
    train.initialize()
    assert train.check_properties() == []
    images = str(Path(tiny_dataset["dataset_dir"]) / "img")
    infer = ConfigWorkflow(
        config_file=INFER, meta_file=META, workflow_type="infer", dataset_dir=images, variant="vit_t", img_size=64, bundle_root=str(tmp_path)
    )
    infer.initialize()
    assert infer.check_properties() == []


def test_metadata_validates_against_the_bundle_schema() -> None:
    schema_file = SCHEMA
    verify_metadata(meta_file=META, filepath=str(schema_file))  # MONAI's own check
    meta = json.loads(Path(META).read_text())
    channels = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert channels == {
        "0": "background",
        "1": "spleen",
        "2": "kidney_right",
        "3": "kidney_left",
        "4": "gallbladder",
        "5": "liver",
        "6": "stomach",
        "7": "aorta",
        "8": "pancreas",
    }
    broken = copy.deepcopy(meta)
    del broken["network_data_format"]["outputs"]["pred"]["num_channels"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, json.loads(schema_file.read_text()))


def test_verify_net_in_out() -> None:
    verify_net_in_out(net_id="network_def", meta_file=META, config_file=INFER, n=1, any=40, device="cpu", variant="vit_t", img_size=64)


def test_training_without_a_dataset_names_prepare_and_demo(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", TRAIN, "--meta_file", META, "--bundle_root", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "balr-sam prepare" in result.stderr and "balr-sam demo" in result.stderr
    assert "Traceback" not in result.stderr


def test_training_writes_trainable_checkpoints_and_resumes(tiny_dataset: dict, tiny_trained: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "run"
    shutil.copytree(tiny_trained, bundle)  # resuming trains on: never in the session's bundle
    models = bundle / "models"
    best = torch.load(models / "model.pt", weights_only=True)
    assert best["format"] == "balr-sam-trainable/1" and best["config"]["variant"] == "vit_t"
    assert not any(k.startswith("image_encoder.") and ".lora_" not in k for k in best["model"])
    checkpoints = sorted(models.glob("train_checkpoint_*.pt"))
    assert len(checkpoints) == 1  # n_saved=1, written atomically by Ignite's DiskSaver
    state = torch.load(checkpoints[0], weights_only=True)
    assert {"network", "optimizer", "lr_scheduler", "trainer"} <= set(state)
    epoch_length = state["trainer"]["epoch_length"]
    assert state["trainer"]["iteration"] == 2 * epoch_length  # after epoch 2
    # resuming: a longer run continues from epoch 2 (one more epoch) instead of starting again
    train_tiny(tiny_dataset, bundle, max_epochs=3)
    files = sorted(models.glob("train_checkpoint_*.pt"))
    assert [f.name for f in files] == [f"train_checkpoint_{3 * epoch_length}.pt"]
    resumed = torch.load(files[0], weights_only=True)
    assert resumed["trainer"]["iteration"] == 3 * epoch_length
    assert resumed["lr_scheduler"]["last_epoch"] == 3 * epoch_length  # the LR schedule resumed too


def test_evaluate_config_writes_predictions_and_reports(tiny_dataset: dict, tiny_trained: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "run"
    shutil.copytree(tiny_trained / "models", bundle / "models")  # the evaluation writes runs/ into the bundle
    run(
        "evaluating",
        config_file=[TRAIN, DEMO, str(CONFIGS / "evaluate.json")],
        meta_file=META,
        **{**TINY, "dataset_dir": tiny_dataset["dataset_dir"], "sam_checkpoint": tiny_dataset["sam"], "bundle_root": str(bundle)},
    )
    report = bundle / "runs" / "evaluation"
    summary = json.loads((report / "summary.json").read_text())
    assert summary["num_cases"] == 1 and summary["num_failed"] == 0
    assert (report / "per_case.csv").read_text().count("\n") == 1 + 8
    assert (
        "| Method | Mean DSC | Mean HD95 | Aorta | Gallbladder | Kidney L | Kidney R | Liver | Pancreas | Spleen | Stomach |"
        in (report / "summary.md").read_text()
    )
    prediction = next((bundle / "runs" / "predictions").glob("*_seg.nii.gz"))
    label = nib.load(summary["cases"][0]["label"])
    assert_segments(np.asarray(nib.load(prediction).dataobj), 3, "evaluated prediction")
    assert nib.load(prediction).shape == label.shape
    np.testing.assert_allclose(nib.load(prediction).affine, label.affine, atol=1e-4)


def test_ckpt_export_torchscript_with_merged_adapters(tiny_dataset: dict, tiny_trained: Path, tmp_path: Path) -> None:
    from balr_sam.inference import load_balr_sam

    ts = tmp_path / "model.ts"
    ckpt_export(
        net_id="network_export",
        filepath=str(ts),
        ckpt_file=str(tiny_trained / "models" / "model.pt"),
        meta_file=META,
        config_file=INFER,
        key_in_ckpt="model",
        use_trace=True,
        input_shape=[1, 1, 64, 64],
        variant="vit_t",
        img_size=64,
        sam_checkpoint=tiny_dataset["sam"],
    )
    exported = torch.jit.load(str(ts))
    reference = load_balr_sam(tiny_trained / "models" / "model.pt", sam_checkpoint=tiny_dataset["sam"]).eval()
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), reference(x), atol=1e-4, rtol=1e-4)


def test_batch_inference_cli_writes_exact_geometry_and_skips_reruns(tiny_dataset: dict, tiny_trained: Path, tmp_path: Path) -> None:
    from balr_sam.cli import main

    images = Path(tiny_dataset["dataset_dir"]) / "img"
    out = tmp_path / "pred"
    args = [
        "infer",
        str(images),
        str(out),
        "--checkpoint",
        str(tiny_trained / "models" / "model.pt"),
        "--sam-checkpoint",
        tiny_dataset["sam"],
        "--config",
        DEMO,
        "--no-progress",
    ]
    overrides_file = tmp_path / "tiny.json"
    overrides_file.write_text(json.dumps({"variant": "vit_t", "img_size": 64, "sw_batch_size": 32, "num_workers": 0}))
    args += ["--config", str(overrides_file)]
    assert main(args) == 0
    for src in sorted(images.glob("*.nii.gz")):
        case = src.name[: -len(".nii.gz")]
        written = nib.load(out / f"{case}.nii.gz")
        original = nib.load(src)
        assert written.shape == original.shape
        np.testing.assert_allclose(written.affine, original.affine, atol=1e-5)
        assert nib.aff2axcodes(written.affine) == nib.aff2axcodes(original.affine)
        labels = np.asarray(written.dataobj)
        assert_segments(labels, 3, f"prediction of {case}")
        assert set(np.unique(labels)) <= set(range(9))
        sidecar = json.loads((out / f"{case}.json").read_text())
        assert sidecar["labels"]["5"] == "liver"
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")}
    assert main(args) == 0  # a re-run skips what exists
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")} == stamps
    assert not list(out.glob(".*part*")) and not list(out.glob("*.lock"))
