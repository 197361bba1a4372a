"""Acceptance 1: each dataset layout, written small in its exact real form, prepares to the right datalist."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from monai.data import load_decathlon_datalist

from _data_factories import (
    affine_for,
    make_btcv_tree,
    make_isic_tree,
    make_polyp_tree,
    make_transunet_tree,
    write_dicom_series,
    write_nifti,
    write_png,
)
from balr_sam.data.datalist import SPLITS, load_datalist, verify_datalist
from balr_sam.data.prepare import prepare_images2d, prepare_isic2017, prepare_nifti, prepare_polyp, prepare_synapse
from balr_sam.data.splits import POLYP_TEST_SETS, TRANSUNET_TEST_IDS, TRANSUNET_TRAIN_IDS, fraction_split
from balr_sam.errors import DataError

SYNAPSE_LABELS = {
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


def _ids(items):
    return sorted(int(c["case_id"]) for c in items)


def test_synapse_raw_transunet_split(tmp_path):
    all30 = list(TRANSUNET_TRAIN_IDS) + list(TRANSUNET_TEST_IDS)
    root = make_btcv_tree(tmp_path / "Abdomen", all30 + [41], unlabeled_ids=[61, 62])
    out = tmp_path / "lists" / "synapse.json"
    dl = prepare_synapse(root, out)
    assert dl["split"] == "transunet" and dl["format"] == "volume" and dl["modality"] == "CT"
    assert _ids(dl["training"]) == sorted(TRANSUNET_TRAIN_IDS) and len(dl["training"]) == 18
    assert _ids(dl["test"]) == sorted(TRANSUNET_TEST_IDS) and len(dl["test"]) == 12
    assert dl["validation"] == []
    assert (dl["numTraining"], dl["numValidation"], dl["numTest"]) == (18, 0, 12)
    assert dl["labels"] == SYNAPSE_LABELS and dl["label_set"] == "synapse" and dl["label_map"] == "btcv"
    # case 41 is labelled but outside TransUNet's split: reported, not mixed in
    assert _ids(dl["ignored"]) == [41]
    assert _ids(dl["unlabeled"]) == [61, 62] and all("label" not in c for c in dl["unlabeled"])
    case = dl["training"][0]
    assert case["label_map"] == "btcv" and case["spacing"] == [0.75, 0.75, 3.0]
    # data outside the datalist's folder: absolute paths
    assert Path(case["image"]).is_absolute() and case["image"].endswith("RawData/Training/img/img0005.nii.gz")
    assert case["label"].endswith("RawData/Training/label/label0005.nii.gz")
    assert json.loads(out.read_text()) == dl


def test_synapse_raw_relative_paths_and_loaders(tmp_path):
    root = make_btcv_tree(tmp_path, [5, 6, 7, 8, 9])
    out = root / "datalist.json"
    dl = prepare_synapse(root, out, seed=3)
    assert dl["split"] == "fraction" and any("fraction" in n for n in dl["notes"])
    assert dl["training"][0]["image"].startswith("RawData/Training/img/")
    assert sum(len(dl[s]) for s in ("training", "validation", "test")) == 5
    assert (len(dl["training"]), len(dl["validation"]), len(dl["test"])) == (3, 1, 1)
    ours = load_datalist(out, "training")
    monai = load_decathlon_datalist(str(out), is_segmentation=True, data_list_key="training")
    assert [c["image"] for c in ours] == [c["image"] for c in monai]
    assert all(Path(c["image"]).is_file() and Path(c["label"]).is_file() for c in ours)
    assert verify_datalist(out) == 5
    # deterministic for a seed, different for another
    again = prepare_synapse(root, None, seed=3)
    assert _ids(again["test"]) == _ids(dl["test"])
    assert load_datalist(out, "unlabeled") == []


def test_synapse_raw_explicit_transunet_split_with_missing_cases(tmp_path):
    root = make_btcv_tree(tmp_path, [1, 5, 6, 50])
    dl = prepare_synapse(root, None, split="transunet", val_fraction=0.5)
    assert _ids(dl["test"]) == [1]
    assert sorted(_ids(dl["training"]) + _ids(dl["validation"])) == [5, 6]
    assert len(dl["validation"]) == 1
    assert _ids(dl["ignored"]) == [50]
    assert any("missing" in n for n in dl["notes"])


def test_synapse_transunet_npz_layout(tmp_path):
    root = make_transunet_tree(
        tmp_path / "Synapse",
        {5: 3, 6: 2},
        test_cases=[1, 2],
        train_list=["case0005_slice000", "case0005_slice001", "case0006_slice000", "case0006_slice001"],
    )
    dl = prepare_synapse(root, root / "datalist.json")
    assert dl["format"] == "transunet" and dl["label_map"] == "identity" and dl["labels"] == SYNAPSE_LABELS
    assert len(dl["training"]) == 4  # train.txt lists 4 of the 5 slices
    assert any("not in train.txt" in n for n in dl["notes"])
    first = dl["training"][0]
    assert first == {"case_id": "0005", "slice": 0, "image": "train_npz/case0005_slice000.npz", "label": "train_npz/case0005_slice000.npz"}
    assert [c["case_id"] for c in dl["test"]] == ["0001", "0002"]
    assert dl["test"][0]["image"] == "test_vol_h5/case0001.npy.h5" and "label_map" not in dl["test"][0]
    assert verify_datalist(root / "datalist.json") == 6
    # validation by whole cases
    dl2 = prepare_synapse(root, None, val_fraction=0.5, seed=1)
    assert {c["case_id"] for c in dl2["validation"]}.isdisjoint({c["case_id"] for c in dl2["training"]})
    assert len({c["case_id"] for c in dl2["validation"]}) == 1


def test_isic2017_layout(tmp_path):
    root = make_isic_tree(tmp_path / "ISIC2017", {"training": 4, "validation": 2, "test": 3})
    dl = prepare_isic2017(root, root / "isic.json")
    assert (dl["numTraining"], dl["numValidation"], dl["numTest"]) == (4, 2, 3)
    assert dl["split"] == "official" and dl["format"] == "image2d" and dl["tensorImageSize"] == "2D"
    assert dl["labels"] == {"0": "background", "1": "lesion"} and dl["label_set"] == "isic2017"
    assert dl["mask_threshold"] == 127 and dl["modality"] == "dermoscopy"
    c = dl["training"][0]
    assert c == {
        "case_id": "ISIC_0000000",
        "image": "ISIC-2017_Training_Data/ISIC_0000000.jpg",
        "label": "ISIC-2017_Training_Part1_GroundTruth/ISIC_0000000_segmentation.png",
    }
    every = [x["image"] for s in ("training", "validation", "test") for x in dl[s]]
    assert not any("superpixels" in p for p in every)
    assert dl["test"][0]["image"].startswith("ISIC-2017_Test_v2_Data/")
    assert verify_datalist(root / "isic.json") == 9


def test_isic2017_without_validation_folders(tmp_path):
    root = make_isic_tree(tmp_path, {"training": 2, "test": 1})
    dl = prepare_isic2017(root)
    assert dl["numValidation"] == 0 and any("Validation" in n for n in dl["notes"])


@pytest.mark.parametrize("singular", [False, True])
def test_polyp_pranet_layout(tmp_path, singular):
    counts = {s: (i + 1) for i, s in enumerate(POLYP_TEST_SETS)}
    root = make_polyp_tree(tmp_path / "PraNet", 6, counts, singular_folders=singular)
    dl = prepare_polyp(root, root / "polyp.json")
    assert dl["numTraining"] == 6 and dl["numTest"] == sum(counts.values()) and dl["numValidation"] == 0
    assert dl["labels"] == {"0": "background", "1": "polyp"} and dl["modality"] == "endoscopy"
    assert dl["test_sets"] == list(POLYP_TEST_SETS)
    per_set = {s: sum(1 for c in dl["test"] if c["test_set"] == s) for s in POLYP_TEST_SETS}
    assert per_set == counts
    kvasir = [c for c in dl["test"] if c["test_set"] == "Kvasir"][0]
    assert kvasir["image"] == "TestDataset/Kvasir/images/1.png" and kvasir["label"] == "TestDataset/Kvasir/masks/1.png"
    assert all("test_set" not in c for c in dl["training"])
    dl2 = prepare_polyp(root, None, val_fraction=0.5)
    assert dl2["numTraining"] == 3 and dl2["numValidation"] == 3


def test_polyp_missing_test_set_noted(tmp_path):
    root = make_polyp_tree(tmp_path, 2, {"Kvasir": 1, "CVC-300": 1})
    dl = prepare_polyp(root)
    assert dl["test_sets"] == ["Kvasir", "CVC-300"]
    assert any("ETIS-LaribPolypDB" in n for n in dl["notes"])


def test_images2d_generic_pairing(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(5):  # PH2-like: images/IMDxxx.png + masks/IMDxxx_lesion.png
        write_png(tmp_path / "ph2" / "images" / f"IMD{i:03d}.png", rng.integers(0, 255, (10, 12, 3)))
        write_png(tmp_path / "ph2" / "masks" / f"IMD{i:03d}_lesion.png", np.full((10, 12), 255))
    dl = prepare_images2d(tmp_path / "ph2", tmp_path / "ph2" / "ph2.json", mask_suffix="_lesion", label_set="isic2017")
    assert sum(len(dl[s]) for s in ("training", "validation", "test")) == 5
    assert dl["labels"] == {"0": "background", "1": "lesion"}
    c = [x for s in ("training", "validation", "test") for x in dl[s] if x["case_id"] == "IMD002"][0]
    assert c["image"] == "images/IMD002.png" and c["label"] == "masks/IMD002_lesion.png"
    for i in range(3):  # Kvasir-like: same names, JPEG masks
        write_png(tmp_path / "kv" / "images" / f"c{i}.jpg", rng.integers(0, 255, (10, 12, 3)))
        write_png(tmp_path / "kv" / "masks" / f"c{i}.jpg", np.full((10, 12), 250))
    dl = prepare_images2d(tmp_path / "kv", None, test_fraction=1.0)
    assert dl["numTest"] == 3 and dl["label_set"] == "binary"


def test_images2d_masks_beside_their_images(tmp_path):
    # the common flat layout: IMD004.bmp + IMD004_lesion.bmp in one folder; the suffixed files are the masks
    rng = np.random.default_rng(0)
    flat = tmp_path / "flat"
    for i in range(4):
        write_png(flat / f"IMD{i:03d}.png", rng.integers(0, 255, (10, 12, 3)))
        write_png(flat / f"IMD{i:03d}_lesion.png", np.full((10, 12), 255))
    (flat / "index.csv").write_text("image,mask\n")
    dl = prepare_images2d(flat, flat / "flat.json", images=".", masks=".", mask_suffix="_lesion", skip_bad=True)
    cases = [c for s in ("training", "validation", "test") for c in dl[s]]
    assert "failed" not in dl and sorted(c["case_id"] for c in cases) == [f"IMD{i:03d}" for i in range(4)]
    assert {(c["image"], c["label"]) for c in cases} == {(f"IMD{i:03d}.png", f"IMD{i:03d}_lesion.png") for i in range(4)}
    # the split is the one of the same cases in images/ + masks/
    for i in range(4):
        write_png(tmp_path / "two" / "images" / f"IMD{i:03d}.png", np.zeros((10, 12, 3)))
        write_png(tmp_path / "two" / "masks" / f"IMD{i:03d}_lesion.png", np.zeros((10, 12)))
    two = prepare_images2d(tmp_path / "two", None, mask_suffix="_lesion")
    assert {s: [c["case_id"] for c in dl[s]] for s in SPLITS} == {s: [c["case_id"] for c in two[s]] for s in SPLITS}
    # unpaired files are still reported, each on its own side
    write_png(flat / "IMD100.png", np.zeros((10, 12, 3)))
    write_png(flat / "IMD200_lesion.png", np.zeros((10, 12)))
    dl = prepare_images2d(flat, None, images=".", masks=".", mask_suffix="_lesion", skip_bad=True)
    assert [(f["case_id"], f["error"].split(": ", 1)[1]) for f in dl["failed"]] == [
        ("IMD100", f"no matching mask IMD100_lesion.* in {flat}"),
        ("IMD200_lesion", f"mask without an image in {flat}"),
    ]
    with pytest.raises(DataError, match="images and masks in the same folder need a mask suffix"):
        prepare_images2d(flat, None, images=".", masks=".")


def test_nifti_flat_layout_with_labels_and_dicom(tmp_path):
    src = tmp_path / "vols"
    aff = affine_for((0.8, 0.8, 2.5), "LPS")
    for name in ("a", "b", "c"):
        write_nifti(src / f"{name}.nii.gz", np.zeros((6, 6, 4), np.int16), aff)
        write_nifti(tmp_path / "labs" / f"{name}_seg.nii.gz", np.zeros((6, 6, 4), np.uint8), aff)
    hu = np.zeros((6, 6, 4), np.int16)
    write_dicom_series(src / "d", hu, spacing=(0.8, 0.8, 2.5), origin=(0.0, 0.0, 0.0))
    write_nifti(tmp_path / "labs" / "d_seg.nii.gz", np.zeros((6, 6, 4), np.uint8), affine_for((0.8, 0.8, 2.5), "LPS"))
    dl = prepare_nifti(src, tmp_path / "dl.json", labels=tmp_path / "labs", label_suffix="_seg", label_map="btcv", val_fraction=0.25, test_fraction=0.25)
    cases = {c["case_id"]: c for s in ("training", "validation", "test") for c in dl[s]}
    assert sorted(cases) == ["a", "b", "c", "d"]
    assert cases["d"]["image"] == "vols/d" and cases["d"]["label"] == "labs/d_seg.nii.gz"
    assert cases["a"]["label_map"] == "btcv" and cases["a"]["spacing"] == [0.8, 0.8, 2.5]
    assert (dl["numTraining"], dl["numValidation"], dl["numTest"]) == (2, 1, 1)
    assert verify_datalist(tmp_path / "dl.json") == 4


def test_nifti_unlabelled_and_same_folder_labels(tmp_path):
    for name in ("x", "y"):
        write_nifti(tmp_path / "v" / f"{name}.nii.gz", np.zeros((4, 4, 2), np.int16))
    dl = prepare_nifti(tmp_path / "v", None)
    assert dl["numTest"] == 2 and dl["numTraining"] == 0 and all("label" not in c for c in dl["test"])
    write_nifti(tmp_path / "v" / "x_label.nii.gz", np.zeros((4, 4, 2), np.uint8))
    write_nifti(tmp_path / "v" / "y_label.nii.gz", np.zeros((4, 4, 2), np.uint8))
    dl = prepare_nifti(tmp_path / "v", None, labels=tmp_path / "v", label_suffix="_label", test_fraction=0.5, val_fraction=0)
    assert sorted(c["case_id"] for s in ("training", "test") for c in dl[s]) == ["x", "y"]


def test_nifti_case_folders(tmp_path):
    aff = affine_for((3, 3, 3), "RAS")
    for case in ("p1", "p2"):
        write_nifti(tmp_path / case / "image.nii.gz", np.zeros((5, 5, 3), np.int16), aff)
        write_nifti(tmp_path / case / "label_totalseg.nii.gz", np.full((5, 5, 3), 52, np.uint8), aff)
    (tmp_path / "notes").mkdir()  # folders without the image name are not cases
    dl = prepare_nifti(
        tmp_path, tmp_path / "dl.json", image_names=["image.nii.gz"], label_name="label_totalseg.nii.gz", label_map="totalseg", test_fraction=1.0
    )
    assert [c["case_id"] for c in dl["test"]] == ["p1", "p2"]
    assert dl["test"][0]["image"] == "p1/image.nii.gz" and dl["test"][0]["label_map"] == "totalseg"


def test_fraction_split_properties():
    ids = list(range(20))
    a = fraction_split(ids, 0.2, 0.1, seed=5)
    assert (len(a["training"]), len(a["validation"]), len(a["test"])) == (14, 4, 2)
    assert sorted(a["training"] + a["validation"] + a["test"]) == ids
    assert a == fraction_split(list(reversed(ids)), 0.2, 0.1, seed=5)
    assert a != fraction_split(ids, 0.2, 0.1, seed=6)
    assert fraction_split([1], 0.2, 0.2)["training"] == [1]
    assert fraction_split([1, 2, 3], 0.2, 1.0)["test"] == [1, 2, 3]
    with pytest.raises(ValueError):
        fraction_split(ids, -0.1, 0.2)
