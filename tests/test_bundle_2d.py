"""The 2D overrides of the bundle (``configs/isic2017.json``, ``configs/polyp.json``) on the shared real
samples: PH2 dermoscopy for the ISIC 2017 job, Kvasir-SEG for the polyp job.

For each job a tiny BALR-SAM (``vit_t``, img_size 64, random SAM base) trains for a few iterations
through ``monai.bundle run training``, ``evaluate.json`` writes the test predictions and the report,
and ``balr-sam infer --config configs/<job>.json`` segments a folder of images. The reported Dice/IoU
are recomputed from the written masks with the protocol functions of :mod:`balr_sam.metrics`
(ISIC: one confusion matrix pooled over all test pixels; polyp: mean over the images of each test
set). A handful of images only (8 per job), so that the file runs in about a minute on 2 CPU cores.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch
from monai.bundle import run
from PIL import Image

from _tiny_bundle import CONFIGS, META, TRAIN
from balr_sam.cli import main
from balr_sam.data.datalist import write_datalist
from balr_sam.data.io import read_image_2d_size, read_mask_2d
from balr_sam.data.prepare import prepare_images2d
from balr_sam.engine import BinaryProtocolMetrics
from balr_sam.errors import DataError
from balr_sam.evaluation import evaluate_2d_predictions
from balr_sam.metrics import per_image_dice_iou, pooled_confusion_dice_iou

EVALUATE = str(CONFIGS / "evaluate.json")
TINY_2D = {"variant": "vit_t", "img_size": 64, "batch_size": 2, "num_workers": 0}
# PH2 is prepared as a generic "binary" dataset (as `balr-sam prepare images2d` does by default):
# the ISIC protocol must then come from the override's label_set, not from the datalist.
JOBS = {
    "isic2017": {"folder": "dermoscopy-ph2", "mask_suffix": "_lesion", "label_set": "binary"},
    "polyp": {"folder": "polyp-kvasir", "mask_suffix": "", "label_set": "polyp"},
}
# polyp test items get a test_set each, as `balr-sam prepare polyp` writes them (PraNet's sets)
POLYP_SETS = ["Kvasir", "Kvasir", "CVC-ClinicDB"]


def _case(path: str) -> str:
    return Path(path).name.rsplit(".", 1)[0]


def _gt(item: dict) -> np.ndarray:
    return read_mask_2d(item["label"], threshold=127)


def _pred_png(path: Path) -> np.ndarray:
    """A written mask as 0/1 (the files hold 0/255)."""
    arr = np.asarray(Image.open(path))
    assert arr.ndim == 2 and arr.dtype == np.uint8 and set(np.unique(arr).tolist()) <= {0, 255}
    return (arr > 127).astype(np.uint8)


def _check_protocol(summary: dict, job: str, items: list, preds: Dict[str, np.ndarray]) -> None:
    """The summary's numbers are those of the job's protocol on ``preds`` (case -> 0/1 mask)."""
    gts = {_case(it["image"]): _gt(it) for it in items}
    cases = [_case(it["image"]) for it in items]
    assert summary["num_images"] == len(items) and summary["num_failed"] == 0
    if job == "isic2017":
        assert summary["protocol"] == "isic2017" and summary["task"] == "isic2017"
        ref = pooled_confusion_dice_iou([preds[c] for c in cases], [gts[c] for c in cases])
        assert summary["dice"] == pytest.approx(ref["dice"], abs=1e-12)
        assert summary["iou"] == pytest.approx(ref["miou"], abs=1e-12)
        assert {k: summary["confusion"][k] for k in ("tp", "fp", "fn", "tn")} == {k: ref[k] for k in ("tp", "fp", "fn", "tn")}
        assert summary["confusion"]["tp"] + summary["confusion"]["fp"] + summary["confusion"]["fn"] + summary["confusion"]["tn"] == sum(
            g.size for g in gts.values()
        )
    else:
        assert summary["protocol"] == "pranet" and summary["task"] == "polyp"
        sets = {it["test_set"] for it in items}
        assert list(summary["test_sets"]) == [s for s in ("Kvasir", "CVC-ClinicDB") if s in sets]
        for name, entry in summary["test_sets"].items():
            mine = [_case(it["image"]) for it in items if it["test_set"] == name]
            ref = per_image_dice_iou([preds[c] for c in mine], [gts[c] for c in mine])
            assert entry["num_images"] == len(mine)
            assert entry["dice"] == pytest.approx(ref["mean_dice"], abs=1e-12)
            assert entry["iou"] == pytest.approx(ref["mean_iou"], abs=1e-12)
        ref = per_image_dice_iou([preds[c] for c in cases], [gts[c] for c in cases])
        assert summary["dice"] == pytest.approx(ref["mean_dice"], abs=1e-12)
        assert summary["iou"] == pytest.approx(ref["mean_iou"], abs=1e-12)


@pytest.fixture(scope="module", params=sorted(JOBS))
def job(request: pytest.FixtureRequest, shared_data: Path, tiny_dataset: Dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 2D job trained for 2 epochs of 2 iterations and evaluated through the bundle (SAM base: the session's random ``vit_t``)."""
    sam_base = tiny_dataset["sam"]
    name, spec = request.param, JOBS[request.param]
    root = tmp_path_factory.mktemp(name)
    datalist = prepare_images2d(shared_data / spec["folder"], None, mask_suffix=spec["mask_suffix"], label_set=spec["label_set"], seed=0)
    datalist["training"], datalist["validation"], datalist["test"] = datalist["training"][:4], datalist["validation"][:1], datalist["test"][:3]
    if name == "polyp":
        for item, test_set in zip(datalist["test"], POLYP_SETS):
            item["test_set"] = test_set
    path = write_datalist(datalist, root / "datalist.json")
    settings = {**TINY_2D, "dataset_dir": str(path), "sam_checkpoint": sam_base, "bundle_root": str(root / "bundle")}
    config = str(CONFIGS / f"{name}.json")
    run("training", config_file=[TRAIN, config], meta_file=META, max_epochs=2, val_interval=1, **settings)
    run("evaluating", config_file=[TRAIN, config, EVALUATE], meta_file=META, **settings)
    return {"name": name, "root": root, "datalist": path, "config": config, "sam": sam_base, "bundle": root / "bundle", "test": datalist["test"]}


def test_training_runs_a_few_iterations_and_keeps_the_best_2d_model(job: dict) -> None:
    models = job["bundle"] / "models"
    best = torch.load(models / "model.pt", weights_only=True)
    assert best["config"]["num_classes"] == 2 and best["config"]["img_size"] == 64
    assert best["extra"]["metric"] == "val_dice" and 0.0 <= best["extra"]["value"] <= 1.0
    state = torch.load(next(models.glob("train_checkpoint_*.pt")), weights_only=True)
    assert state["trainer"]["iteration"] == 4  # 2 epochs x (4 images / batch 2)


def test_evaluation_reports_dice_and_iou_by_the_protocol(job: dict) -> None:
    report = job["bundle"] / "runs" / "evaluation"
    summary = json.loads((report / "summary.json").read_text())
    preds = {}
    for item in job["test"]:
        case = _case(item["image"])
        written = job["bundle"] / "runs" / "predictions" / f"{case}.png"
        preds[case] = _pred_png(written)
        assert preds[case].shape == read_image_2d_size(item["image"])  # the image's original rows x columns
    _check_protocol(summary, job["name"], job["test"], preds)
    table = (report / "summary.md").read_text()
    if job["name"] == "isic2017":
        assert "| Method | Dice (%) | mIoU (%) |" in table
        assert f"| BALR-SAM | {100 * summary['dice']:.2f} | {100 * summary['iou']:.2f} |" in table
    else:
        assert "| Method | Test set | Images | mDice | mIoU |" in table
        for name, entry in summary["test_sets"].items():
            assert f"| BALR-SAM | {name} | {entry['num_images']} | {entry['dice']:.3f} | {entry['iou']:.3f} |" in table
    assert (report / "per_image.csv").read_text().count("\n") == 1 + len(job["test"])
    assert sorted(p.name.split("_")[0] for p in (report / "overlays").glob("*.png")) == ["best", "worst", "worst"]


def test_infer_cli_writes_one_png_per_image_at_the_original_size(job: dict, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for item in job["test"]:
        shutil.copy(item["image"], images)
    tiny = tmp_path / "tiny.json"
    tiny.write_text(json.dumps({"variant": "vit_t", "img_size": 64, "num_workers": 0}))
    out = tmp_path / "pred"
    args = [
        "infer",
        str(images),
        str(out),
        "--checkpoint",
        str(job["bundle"] / "models" / "model.pt"),
        "--sam-checkpoint",
        job["sam"],
        "--config",
        job["config"],
        "--config",
        str(tiny),
        "--no-progress",
    ]
    assert main(args) == 0
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f"{_case(it['image'])}.png" for it in job["test"])
    for item in job["test"]:
        case = _case(item["image"])
        mask = _pred_png(out / f"{case}.png")
        assert mask.shape == read_image_2d_size(item["image"])
        # the same model and preprocessing as the bundle evaluator: the same mask
        np.testing.assert_array_equal(mask, _pred_png(job["bundle"] / "runs" / "predictions" / f"{case}.png"))
        sidecar = json.loads((out / f"{case}.json").read_text())
        assert sidecar["labels"] == {"0": "background", "1": "lesion" if job["name"] == "isic2017" else "polyp"}
    # the folder of PNG masks scores the same through the command line
    assert (
        main(
            [
                "evaluate",
                "--datalist",
                str(job["datalist"]),
                "--pred",
                str(out),
                "--output",
                str(tmp_path / "report"),
                "--labels",
                job["name"],
                "--overlays",
                "0",
            ]
        )
        == 0
    )
    again = json.loads((tmp_path / "report" / "summary.json").read_text())
    first = json.loads((job["bundle"] / "runs" / "evaluation" / "summary.json").read_text())
    assert (again["dice"], again["iou"]) == (first["dice"], first["iou"])


def test_protocols_on_imperfect_masks_and_failed_cases(job: dict, tmp_path: Path) -> None:
    """Masks with very different qualities per image, where pooling and averaging over images disagree."""
    preds, folder = {}, tmp_path / "pred"
    folder.mkdir()
    for k, item in enumerate(job["test"]):
        gt = _gt(item)
        pred = [np.roll(gt, gt.shape[0] // 8, axis=0), np.zeros_like(gt), gt.copy()][k % 3]
        if k == 2:
            pred[: gt.shape[0] // 3] = 1  # a good mask plus a band of false positives
        preds[_case(item["image"])] = pred
        Image.fromarray(pred * 255).save(folder / f"{_case(item['image'])}.png")
    summary = evaluate_2d_predictions(job["datalist"], "test", folder, tmp_path / "report", label_set=job["name"])
    _check_protocol(summary, job["name"], job["test"], preds)
    pooled = pooled_confusion_dice_iou(list(preds.values()), [_gt(it) for it in job["test"]])["dice"]
    mean = per_image_dice_iou(list(preds.values()), [_gt(it) for it in job["test"]])["mean_dice"]
    assert abs(pooled - mean) > 0.01  # the two protocols are distinguishable on these masks

    # the validation metric of the override computes the same numbers
    metric = BinaryProtocolMetrics(protocol=summary["protocol"])
    metric.update(([torch.from_numpy(p)[None].float() for p in preds.values()], [torch.from_numpy(_gt(it))[None] for it in job["test"]]))
    assert metric.compute()["dice"] == pytest.approx(pooled if job["name"] == "isic2017" else mean, abs=1e-9)

    # a missing and a mis-sized prediction are failed cases, listed and left out of the metrics
    first, second = (_case(it["image"]) for it in job["test"][:2])
    (folder / f"{first}.png").unlink()
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(folder / f"{second}.png")
    with pytest.raises(DataError, match="already exists"):
        evaluate_2d_predictions(job["datalist"], "test", folder, tmp_path / "report", label_set=job["name"])
    summary = evaluate_2d_predictions(job["datalist"], "test", folder, tmp_path / "report", label_set=job["name"], overwrite=True)
    assert summary["num_images"] == 1 and summary["num_failed"] == 2
    reasons = {f["case"]: f["reason"] for f in summary["failed"]}
    assert "no prediction" in reasons[first] and "original size" in reasons[second]
    assert "not evaluated" in (tmp_path / "report" / "summary.md").read_text()


def test_a_corrupt_image_skips_its_overlay_only(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The images are read for the overlays only: a corrupt one loses its overlay, not the report."""
    rng = np.random.default_rng(0)
    items = []
    for k in range(3):
        for sub in ("img", "msk", "pred"):
            (tmp_path / sub).mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(tmp_path / "img" / f"c{k}.png")
        gt = (rng.random((12, 10)) > 0.5).astype(np.uint8)
        Image.fromarray(gt * 255).save(tmp_path / "msk" / f"c{k}.png")
        Image.fromarray(np.roll(gt, k, axis=0) * 255).save(tmp_path / "pred" / f"c{k}.png")
        items.append({"image": f"img/c{k}.png", "label": f"msk/c{k}.png"})
    (tmp_path / "img" / "c0.png").write_bytes(b"not a png")
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"format": "image2d", "label_set": "polyp", "name": "tiny", "test": items}))
    summary = evaluate_2d_predictions(datalist, "test", tmp_path / "pred", tmp_path / "report", num_overlays=1)
    assert summary["num_images"] == 3 and summary["num_failed"] == 0
    assert json.loads((tmp_path / "report" / "summary.json").read_text())["dice"] == summary["dice"]
    worst = min(summary["cases"], key=lambda c: c["dice"])["case"]  # c0 (a perfect mask) is the best
    assert worst != "c0" and [p.name for p in (tmp_path / "report" / "overlays").glob("*.png")] == [f"worst_1_{worst}.png"]
    err = capsys.readouterr().err
    assert "overlay of case c0 skipped" in err and "c0.png: cannot be read as an image" in err
