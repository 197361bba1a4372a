"""``balr-sam evaluate`` end to end on tiny folders written here, and its bad-input handling."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from medpy.metric import binary as mb
from PIL import Image

from balr_sam.cli import main
from balr_sam.errors import DataError
from balr_sam.evaluation import evaluate_case, evaluate_folder, pair_cases, read_label_file
from balr_sam.labels import get_label_set, remap_labels

SPACING = (0.8, 0.9, 2.5)
SHAPE = (24, 20, 10)
SYN = get_label_set("synapse")
PAPER_ORDER = ["Aorta", "Gallbladder", "Kidney L", "Kidney R", "Liver", "Pancreas", "Spleen", "Stomach"]


def _affine(spacing=SPACING, origin=(10.0, -5.0, 30.0)) -> np.ndarray:
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = origin
    return aff


def _save(path: Path, arr: np.ndarray, affine=None, dtype=np.uint8) -> None:
    nib.save(nib.Nifti1Image(arr.astype(dtype), _affine() if affine is None else affine), str(path))


def _phantom(rng: np.random.Generator) -> np.ndarray:
    """Eight box-shaped organs at jittered places."""
    lab = np.zeros(SHAPE, np.uint8)
    corners = [(1, 1), (1, 7), (1, 13), (8, 1), (8, 7), (8, 13), (15, 2), (15, 10)]
    for c, (x, y) in enumerate(corners, start=1):
        dx, dy = rng.integers(0, 2, size=2)
        lab[x + dx : x + dx + 5, y + dy : y + dy + 5, 2 : 2 + int(rng.integers(3, 7))] = c
    return lab


def _perturb(lab: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    pred = np.roll(lab, int(rng.integers(-1, 2)), axis=0)
    noise = rng.random(lab.shape) < 0.02
    pred[noise] = 0
    return pred


@pytest.fixture()
def folders(tmp_path):
    """Three cases: plain errors, an organ missing from the prediction, an organ absent from GT."""
    rng = np.random.default_rng(0)
    dirs = {k: tmp_path / k for k in ("pred", "label", "image")}
    for d in dirs.values():
        d.mkdir()
    cases = {}
    for i in range(3):
        gt = _phantom(rng)
        pred = _perturb(gt, rng)
        if i == 1:
            pred[pred == 4] = 0  # gallbladder missed: prediction empty
        if i == 2:
            gt[gt == 8] = 0  # pancreas absent from GT but predicted
        name = f"case{i:04d}"
        _save(dirs["label"] / f"{name}.nii.gz", gt)
        _save(dirs["pred"] / f"{name}.nii.gz", pred)
        image = rng.normal(0, 20, SHAPE) + 40.0 * (gt > 0)
        _save(dirs["image"] / f"{name}_0000.nii.gz", image, dtype=np.float32)
        cases[name] = (pred, gt)
    return dirs, cases


def _transunet_reference(pred, gt, c):
    p, g = pred == c, gt == c
    if p.any() and g.any():
        return mb.dc(p, g), mb.hd95(p, g, voxelspacing=SPACING), mb.hd95(p, g)
    if p.any():
        return 1.0, 0.0, 0.0
    return 0.0, 0.0, 0.0


def test_evaluate_end_to_end_transunet(folders, tmp_path, capsys):
    dirs, cases = folders
    out = tmp_path / "out"
    rc = main(
        [
            "evaluate",
            "--pred",
            str(dirs["pred"]),
            "--label",
            str(dirs["label"]),
            "--image",
            str(dirs["image"]),
            "--output",
            str(out),
            "--name",
            "BALR-SAM",
            "--no-progress",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0, capsys.readouterr().err

    # per_case.csv: one row per case and organ, papers' order, values as medpy computes them
    with open(out / "per_case.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 * 8
    assert list(rows[0]) == ["case", "class_id", "class_name", "dice", "iou", "hd95_mm", "hd95_voxel", "pred_empty", "gt_empty"]
    assert [r["class_name"] for r in rows[:8]] == PAPER_ORDER
    ref = {}
    for r in rows:
        pred, gt = cases[r["case"]]
        c = int(r["class_id"])
        d, hmm, hvox = _transunet_reference(pred, gt, c)
        ref[(r["case"], c)] = (d, hmm, hvox)
        assert abs(float(r["dice"]) - d) < 1e-6
        assert abs(float(r["hd95_mm"]) - hmm) < 1e-3
        assert abs(float(r["hd95_voxel"]) - hvox) < 1e-3
        assert r["pred_empty"] == str(int(not (pred == c).any()))
        assert r["gt_empty"] == str(int(not (gt == c).any()))
    row = next(r for r in rows if r["case"] == "case0001" and r["class_id"] == "4")
    assert (row["dice"], row["hd95_voxel"], row["pred_empty"]) == ("0", "0", "1")
    row = next(r for r in rows if r["case"] == "case0002" and r["class_id"] == "8")
    assert (row["dice"], row["hd95_mm"], row["gt_empty"]) == ("1", "0", "1")

    # summary.json: mean over cases per class, then over classes
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocol"] == "transunet" and summary["primary_hd95"] == "voxel"
    assert summary["hd95_conventions"] == ["mm", "voxel"]
    assert summary["num_cases"] == 3 and summary["num_failed"] == 0
    per_class_dice, per_class_hd = [], []
    for c in SYN.foreground:
        vals = np.array([ref[(case, c)] for case in cases])
        e = summary["per_class"][str(c)]
        assert abs(e["dice"] - vals[:, 0].mean()) < 1e-6
        assert abs(e["hd95_mm"] - vals[:, 1].mean()) < 1e-3
        assert abs(e["hd95_voxel"] - vals[:, 2].mean()) < 1e-3
        per_class_dice.append(vals[:, 0].mean())
        per_class_hd.append(vals[:, 2].mean())
    assert abs(summary["mean"]["dice"] - np.mean(per_class_dice)) < 1e-6
    assert abs(summary["mean"]["hd95"] - np.mean(per_class_hd)) < 1e-3
    assert summary["empty_counts"]["n_pred_empty"] == 1 and summary["empty_counts"]["n_gt_empty"] == 1
    assert summary["cases"][0]["spacing"] == pytest.approx(list(SPACING))

    # summary.md: the papers' columns
    md = (out / "summary.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| Method"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols == ["Method", "Mean DSC", "Mean HD95"] + PAPER_ORDER
    table_row = md.splitlines()[md.splitlines().index(header) + 2]
    cells = [c.strip() for c in table_row.strip("|").split("|")]
    assert cells[0] == "BALR-SAM" and float(cells[1]) == pytest.approx(100 * np.mean(per_class_dice), abs=0.006)

    # overlays: worst and best, valid PNGs with an image panel
    pngs = sorted((out / "overlays").glob("*.png"))
    assert {p.name.split("_")[0] for p in pngs} == {"worst", "best"}
    assert len(pngs) == 3  # 2 worst + the one remaining best of 3 cases
    for p in pngs:
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size[0] > im.size[1] > 50
    worst = min(summary["cases"], key=lambda c: c["mean_dice"])["case"]
    assert (out / "overlays" / f"worst_1_{worst}.png").exists()

    # an existing result is not overwritten without being asked
    capsys.readouterr()
    args = ["evaluate", "--pred", str(dirs["pred"]), "--label", str(dirs["label"]), "--output", str(out), "--no-progress", "--overlays", "0"]
    assert main(args) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    assert not list((out / "overlays").glob("*.png"))


def test_evaluate_clinical_protocol(folders, tmp_path):
    dirs, cases = folders
    res = evaluate_folder(dirs["pred"], dirs["label"], tmp_path / "out", protocol="clinical", device="cpu", num_overlays=0, progress=False)
    s = res.summary
    assert s["protocol"] == "clinical" and s["primary_hd95"] == "mm"
    gall, pancreas = s["per_class"]["4"], s["per_class"]["8"]
    # gallbladder missed in case 1: Dice 0 counted, HD95 undefined and counted
    d = [mb.dc(p == 4, g == 4) for p, g in cases.values()]
    assert abs(gall["dice"] - np.mean(d)) < 1e-6 and d[1] == 0.0
    assert gall["n_hd95_nan"] == 1 and gall["n_pred_empty"] == 1
    hd = [mb.hd95(p == 4, g == 4, voxelspacing=SPACING) for i, (p, g) in enumerate(cases.values()) if i != 1]
    assert abs(gall["hd95_mm"] - np.mean(hd)) < 1e-3
    # pancreas absent from GT in case 2: false positive is Dice 0, not 1
    assert pancreas["n_gt_empty"] == 1 and pancreas["n_hd95_nan"] == 1
    d = [mb.dc(p == 8, g == 8) for p, g in cases.values()]
    assert abs(pancreas["dice"] - np.mean(d)) < 1e-6
    with open(tmp_path / "out" / "per_case.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["case"] == "case0002" and r["class_id"] == "8"]
    assert rows[0]["dice"] == "0" and rows[0]["hd95_mm"] == "nan"
    assert "NaN" in (tmp_path / "out" / "summary.md").read_text()


def test_bad_pairs_are_reported_and_others_continue(folders, tmp_path, capsys):
    dirs, cases = folders
    bad = dirs["pred"] / "case0001.nii.gz"
    _save(bad, np.zeros((24, 20, 9), np.uint8))  # shape mismatch
    lonely = dirs["pred"] / "case0099.nii.gz"
    _save(lonely, np.zeros(SHAPE, np.uint8))  # no label
    out = tmp_path / "out"
    rc = main(["evaluate", "--pred", str(dirs["pred"]), "--label", str(dirs["label"]), "--output", str(out), "--no-progress", "--overlays", "0"])
    err = capsys.readouterr().err
    assert rc == 1
    assert f"{bad}: shape (24, 20, 9) does not match the label" in err
    assert f"{lonely}: no matching label" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_cases"] == 2 and summary["num_failed"] == 2
    assert {f["case"] for f in summary["failed"]} == {"case0001", "case0099"}
    assert all(str(bad) in f["error"] for f in summary["failed"] if f["case"] == "case0001")
    with open(out / "per_case.csv", newline="") as fh:
        assert {r["case"] for r in csv.DictReader(fh)} == {"case0000", "case0002"}


def test_missing_prediction_is_reported(folders, tmp_path, capsys):
    dirs, _ = folders
    (dirs["pred"] / "case0002.nii.gz").unlink()
    rc = main(["evaluate", "--pred", str(dirs["pred"]), "--label", str(dirs["label"]), "--output", str(tmp_path / "out"), "--no-progress", "--overlays", "0"])
    assert rc == 1
    assert f"{dirs['label'] / 'case0002.nii.gz'}: no matching prediction" in capsys.readouterr().err


@pytest.mark.parametrize(
    "problem, message",
    [
        ("geometry", "geometry does not match the label"),
        ("values", "label values 12 are not ids of label set 'synapse'"),
        ("nan", "NaN or Inf"),
        ("4d", "expected a 2D or 3D label map"),
        ("garbage", "cannot be read as NIfTI"),
    ],
)
def test_bad_file_gives_clear_error_naming_it(folders, tmp_path, problem, message):
    dirs, cases = folders
    path = dirs["pred"] / "case0000.nii.gz"
    pred = cases["case0000"][0]
    if problem == "geometry":
        _save(path, pred, affine=_affine(spacing=(0.8, 0.9, 3.0)))
    elif problem == "values":
        bad = pred.copy()
        bad[0, 0, 0] = 12
        _save(path, bad)
    elif problem == "nan":
        bad = pred.astype(np.float32)
        bad[1, 1, 1] = np.nan
        _save(path, bad, dtype=np.float32)
    elif problem == "4d":
        _save(path, np.stack([pred, pred], axis=-1))
    else:
        path.write_bytes(b"not a nifti file")
    with pytest.raises(DataError) as err:
        evaluate_case("case0000", path, dirs["label"] / "case0000.nii.gz", SYN)
    assert str(err.value).startswith(str(path)) and message in str(err.value)


def test_empty_or_missing_folder(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("nothing here")
    rc = main(["evaluate", "--pred", str(empty), "--label", str(empty), "--output", str(tmp_path / "o"), "--no-progress"])
    assert rc == 1
    assert f"{empty}: no prediction files found" in capsys.readouterr().err
    rc = main(["evaluate", "--pred", str(tmp_path / "nope"), "--label", str(empty), "--output", str(tmp_path / "o")])
    assert rc == 1
    assert f"{tmp_path / 'nope'}: not a directory" in capsys.readouterr().err


def test_pairing_by_name_tags(tmp_path):
    p, lab = tmp_path / "p", tmp_path / "lab"
    p.mkdir()
    lab.mkdir()
    for name in ("case0001_pred.nii.gz", "ISIC_0000000.png", "same.nii"):
        (p / name).write_bytes(b"")
    for name in ("case0001_gt.nii.gz", "ISIC_0000000_segmentation.png", "same.nii"):
        (lab / name).write_bytes(b"")
    pairs, problems = pair_cases(p, lab)
    assert [c for c, _, _ in pairs] == ["ISIC_0000000", "case0001", "same"]
    assert problems == []


def test_png_2d_task_with_0_255_masks(tmp_path, capsys):
    rng = np.random.default_rng(3)
    dirs = {k: tmp_path / k for k in ("pred", "label", "image")}
    for d in dirs.values():
        d.mkdir()
    masks = {}
    for i in range(3):
        gt = np.zeros((40, 48), bool)
        gt[8 + i : 30, 10 : 35 - i] = True
        pred = np.roll(gt, i + 1, axis=1)
        pred[rng.random(gt.shape) < 0.05] = False
        Image.fromarray(gt.astype(np.uint8) * 255).save(dirs["label"] / f"img{i}_mask.png")
        Image.fromarray(pred.astype(np.uint8) * 255).save(dirs["pred"] / f"img{i}.png")
        Image.fromarray((rng.random((40, 48, 3)) * 255).astype(np.uint8)).save(dirs["image"] / f"img{i}.jpg")
        masks[f"img{i}"] = (pred, gt)
    out = tmp_path / "out"
    rc = main(
        [
            "evaluate",
            "--pred",
            str(dirs["pred"]),
            "--label",
            str(dirs["label"]),
            "--image",
            str(dirs["image"]),
            "--labels",
            "polyp",
            "--output",
            str(out),
            "--no-progress",
            "--overlays",
            "1",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    s = json.loads((out / "summary.json").read_text())
    assert s["spatial_dims"] == 2
    assert abs(s["mean"]["dice"] - np.mean([mb.dc(p, g) for p, g in masks.values()])) < 1e-6
    assert abs(s["mean"]["iou"] - np.mean([mb.jc(p, g) for p, g in masks.values()])) < 1e-6
    assert abs(s["mean"]["hd95_voxel"] - np.mean([mb.hd95(p, g) for p, g in masks.values()])) < 1e-3
    header = next(line for line in (out / "summary.md").read_text().splitlines() if line.startswith("| Method"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["Method", "Mean DSC", "Mean IoU", "Mean HD95", "Polyp"]
    assert len(list((out / "overlays").glob("*.png"))) == 2


def test_real_ct_with_totalsegmentator_labels(tmp_path, shared_data):
    """A real CT label map in TotalSegmentator numbering against an eroded copy, checked with medpy."""
    from scipy import ndimage as ndi

    src = nib.load(str(shared_data / "ct-abdomen-nifti" / "label_totalseg.nii.gz"))
    raw = np.asanyarray(src.dataobj)
    syn = remap_labels(raw, "synapse", "totalseg")
    pred = ndi.grey_erosion(syn, size=(3, 3, 1))
    pred[pred == 4] = 0
    for d in ("p", "l", "i"):
        (tmp_path / d).mkdir()
    nib.save(nib.Nifti1Image(pred, src.affine), str(tmp_path / "p" / "ct.nii.gz"))
    nib.save(src, str(tmp_path / "l" / "ct.nii.gz"))
    nib.save(nib.load(str(shared_data / "ct-abdomen-nifti" / "image.nii.gz")), str(tmp_path / "i" / "ct.nii.gz"))
    res = evaluate_folder(
        tmp_path / "p",
        tmp_path / "l",
        tmp_path / "out",
        image_dir=tmp_path / "i",
        label_map="totalseg",
        protocol="clinical",
        device="cpu",
        num_overlays=1,
        progress=False,
    )
    assert res.ok and (tmp_path / "out" / "overlays" / "worst_1_ct.png").exists()
    spacing = read_label_file(tmp_path / "l" / "ct.nii.gz", SYN, "totalseg").spacing
    assert spacing == pytest.approx(tuple(float(z) for z in src.header.get_zooms()[:3]))
    for c in SYN.foreground:
        e = res.summary["per_class"][str(c)]
        p, g = pred == c, syn == c
        if p.any() and g.any():
            assert abs(e["dice"] - mb.dc(p, g)) < 1e-6
            assert abs(e["hd95_mm"] - mb.hd95(p, g, voxelspacing=spacing)) < 1e-3
            assert abs(e["hd95_voxel"] - mb.hd95(p, g)) < 1e-3
        elif g.any():
            assert e["dice"] == 0.0 and e["hd95_mm"] is None
    assert (syn == 4).any() and res.summary["per_class"]["4"]["dice"] == 0.0  # gallbladder removed
    assert res.summary["per_class"]["4"]["n_hd95_nan"] == 1


@pytest.mark.parametrize("label_map, top, valid", [("btcv", 14, 13), ("totalseg", 118, 117)])
def test_source_numbering_refuses_values_outside_it(tmp_path, label_map, top, valid, capsys):
    """``--label-map btcv`` accepts BTCV's 13 organ values and refuses 14 (one past its numbering)."""
    good = np.zeros((6, 5, 4), np.uint8)
    good[1:3, 1:3, 1:3] = valid  # the largest value the numbering defines: read, mapped to background or an organ
    _save(tmp_path / "good.nii.gz", good)
    assert read_label_file(tmp_path / "good.nii.gz", SYN, label_map).data.shape == good.shape
    bad = good.copy()
    bad[0, 0, 0] = top
    _save(tmp_path / "bad.nii.gz", bad)
    with pytest.raises(DataError, match=rf"bad.nii.gz: label value {top} is outside the '{label_map}' numbering \(max {valid}\)"):
        read_label_file(tmp_path / "bad.nii.gz", SYN, label_map)
    # the command says the same in one line
    for name in ("pred", "label"):
        (tmp_path / name).mkdir()
    _save(tmp_path / "pred" / "case0000.nii.gz", np.zeros_like(good))
    _save(tmp_path / "label" / "case0000.nii.gz", bad)
    code = main(
        [
            "evaluate",
            "--pred",
            str(tmp_path / "pred"),
            "--label",
            str(tmp_path / "label"),
            "--label-map",
            label_map,
            "--output",
            str(tmp_path / "out"),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code != 0 and f"label value {top} is outside the '{label_map}' numbering" in err


def test_nrrd_labels_are_read_through_data_io(folders, tmp_path):
    """An NRRD ground truth (LPS world in its header) pairs with a NIfTI prediction of the same geometry."""
    import SimpleITK as sitk

    dirs, cases = folders
    nrrd_dir = tmp_path / "nrrd"
    nrrd_dir.mkdir()
    for name, (_, gt) in cases.items():
        img = sitk.GetImageFromArray(np.ascontiguousarray(gt.transpose(2, 1, 0)))
        img.SetSpacing(SPACING)
        img.SetOrigin((-10.0, 5.0, 30.0))  # the NIfTI origin (10, -5, 30) in LPS
        img.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
        sitk.WriteImage(img, str(nrrd_dir / f"{name}.nrrd"))
    label = read_label_file(nrrd_dir / "case0000.nrrd", SYN)
    np.testing.assert_array_equal(label.data, cases["case0000"][1])
    np.testing.assert_allclose(label.affine, _affine(), atol=1e-6)
    res = evaluate_folder(dirs["pred"], nrrd_dir, tmp_path / "out", device="cpu", num_overlays=0, progress=False)
    assert res.ok and res.summary["num_cases"] == 3
    pred, gt = cases["case0000"]
    assert res.summary["per_class"]["5"]["n_cases"] == 3
    row = res.cases[0]
    assert row.case == "case0000" and abs(row.values[0, 0] - mb.dc(pred == 1, gt == 1)) < 1e-6


def test_datalist_split_through_the_command(tmp_path, capsys):
    """``balr-sam evaluate --datalist`` scores a prepared CT datalist's split, as the bundle's evaluation does."""
    from balr_sam.data.datalist import load_datalist
    from balr_sam.data.io import strip_suffix
    from balr_sam.data.prepare import prepare_synapse
    from balr_sam.data.synthetic import generate_ct_dataset

    data = tmp_path / "synapse"
    generate_ct_dataset(data, cases=3, seed=1, shape=(32, 32, 6))
    datalist = data / "datalist.json"
    prepare_synapse(data, datalist, val_fraction=0.34, test_fraction=0.34, seed=0)
    test = load_datalist(datalist, "test")
    pred = tmp_path / "pred"
    pred.mkdir()
    for item in test:  # predictions = the ground truth in product ids: Dice 1 everywhere it is defined
        src = nib.load(item["label"])
        ids = remap_labels(np.asanyarray(src.dataobj), "synapse", "btcv")
        nib.save(nib.Nifti1Image(ids, src.affine), str(pred / f"{strip_suffix(Path(item['image']).name)}.nii.gz"))
    out = tmp_path / "out"
    args = ["evaluate", "--datalist", str(datalist), "--pred", str(pred), "--output", str(out), "--device", "cpu", "--no-progress", "--overlays", "1"]
    assert main(args) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_cases"] == len(test) >= 1 and summary["num_failed"] == 0
    assert summary["mean"]["dice"] == pytest.approx(1.0) and summary["split"] == "test"
    assert len(list((out / "overlays").glob("*.png"))) == 1
    # a missing prediction is a failed case; --image belongs to --label folders
    missing = next(pred.iterdir())
    missing.unlink()
    capsys.readouterr()
    assert main([*args, "--overwrite"]) == 1
    assert f"{missing}: no prediction for" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--overwrite", "--image", str(pred)])


def test_image_off_the_label_grid_is_left_out_of_the_overlay(folders, tmp_path, capsys):
    """Overlays orient the image by the label's affine: an image of the same shape stored in another
    orientation is not drawn under the labels (one line says why), the overlay is still written."""
    dirs, cases = folders
    for name in cases:
        path = dirs["image"] / f"{name}_0000.nii.gz"
        img = nib.load(str(path))
        flipped = np.diag([-1.0, -1.0, 1.0, 1.0]) @ img.affine  # same voxels, mirrored world positions
        nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), flipped), str(path))
    res = evaluate_folder(dirs["pred"], dirs["label"], tmp_path / "out", image_dir=dirs["image"], device="cpu", num_overlays=1, progress=False)
    err = capsys.readouterr().err
    assert res.ok and len(res.summary["overlays"]) == 2
    assert err.count("voxel-to-world affine does not match the label") == 2 and "overlay without image" in err
    assert all((tmp_path / "out" / o["file"]).is_file() for o in res.summary["overlays"])
