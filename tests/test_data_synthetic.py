"""Acceptance 4: synthetic data is deterministic for a seed and loads through the real readers."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import binary_erosion

import balr_sam.data.synthetic as synthetic
from balr_sam.data.datalist import load_datalist, verify_datalist
from balr_sam.data.io import read_image_2d, read_mask_2d
from balr_sam.data.pipelines import ct_train_transforms
from balr_sam.data.prepare import prepare_isic2017, prepare_polyp, prepare_synapse
from balr_sam.data.splits import POLYP_TEST_SETS
from balr_sam.data.synthetic import generate_ct_dataset, generate_isic_dataset, generate_polyp_dataset
from balr_sam.data.transforms import AlignToReferenced, LoadVolumed, MapLabelsd
from balr_sam.labels import get_label_set


def _tree_bytes(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "generate,kwargs",
    [
        (generate_ct_dataset, {"cases": 2, "shape": (32, 32, 8)}),
        (generate_isic_dataset, {"cases": 3, "size": (40, 48)}),
        (generate_polyp_dataset, {"cases": 2, "test_cases": 1, "size": (40, 48)}),
    ],
)
def test_deterministic_for_a_seed(tmp_path, generate, kwargs):
    generate(tmp_path / "a", seed=7, **kwargs)
    generate(tmp_path / "b", seed=7, **kwargs)
    generate(tmp_path / "c", seed=8, **kwargs)
    a, b, c = (_tree_bytes(tmp_path / x) for x in "abc")
    assert a == b
    assert a.keys() == c.keys()
    assert any(a[k] != c[k] for k in a if k != "synthetic.json")


@pytest.fixture(scope="module")
def synth_ct(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "ct"
    generate_ct_dataset(root, cases=3, seed=0)
    return root


def _load_pls(item):
    from monai.transforms import Orientationd

    d = LoadVolumed(["image", "label"])(item)
    d = MapLabelsd("label", strict=True)(AlignToReferenced("label")(d))
    d = Orientationd(["image", "label"], axcodes="PLS", labels=None)(d)
    return d["image"][0].numpy(), d["label"][0].numpy().astype(int)


def test_synthetic_ct_layout_geometry_and_anatomy(synth_ct, tmp_path):
    assert sorted(p.name for p in (synth_ct / "img").iterdir()) == ["img0001.nii.gz", "img0002.nii.gz", "img0003.nii.gz"]
    codes, spacings = set(), set()
    for i in (1, 2, 3):
        img = nib.load(str(synth_ct / "img" / f"img{i:04d}.nii.gz"))
        lab = nib.load(str(synth_ct / "label" / f"label{i:04d}.nii.gz"))
        assert img.get_data_dtype() == np.int16 and lab.get_data_dtype() == np.uint8 and img.shape == (96, 96, 24)
        assert np.allclose(img.affine, lab.affine)
        codes.add("".join(nib.aff2axcodes(img.affine)))
        spacings.add(tuple(np.round(img.header.get_zooms(), 3)))
        raw = np.asarray(lab.dataobj)
        assert {1, 2, 3, 4, 6, 7, 8, 11} <= set(np.unique(raw))  # BTCV ids of the 8 organs
        assert {5, 9} <= set(np.unique(raw))  # esophagus and IVC: BTCV labels outside the 8 organs
        zooms = img.header.get_zooms()
        assert 2.5 <= zooms[2] <= 5.0 and 300 <= zooms[0] * 96 <= 460
    assert {"RAS", "LPS", "LAS"} == codes and len(spacings) == 3

    dl = prepare_synapse(synth_ct, tmp_path / "dl.json")
    assert dl["split"] == "fraction" and dl["label_map"] == "btcv"
    assert verify_datalist(tmp_path / "dl.json") == 3
    hu_targets = {"liver": 60, "spleen": 50, "aorta": 200, "gallbladder": 10, "pancreas": 40, "kidney_left": 150, "kidney_right": 150, "stomach": 25}
    names = get_label_set("synapse").labels
    centroids = []
    for split in ("training", "validation", "test"):
        for item in load_datalist(tmp_path / "dl.json", split):
            hu, label = _load_pls(item)
            for organ_id in range(1, 9):
                mask = label == organ_id
                assert mask.sum() > 0, (item["case_id"], names[organ_id])
                core = binary_erosion(mask)
                core = core if core.sum() > 10 else mask
                assert abs(np.median(hu[core]) - hu_targets[names[organ_id]]) < 30, names[organ_id]
            pos = {names[o]: np.argwhere(label == o).mean(axis=0) for o in range(1, 9)}
            centroids.append(pos)
    for pos in centroids:  # PLS: rows anterior -> posterior, columns patient right -> left
        assert pos["liver"][1] < 48 < pos["spleen"][1]  # liver on the patient's right, spleen left
        assert pos["kidney_right"][1] < 48 < pos["kidney_left"][1]
        assert pos["spleen"][0] > pos["stomach"][0]  # spleen posterior to the stomach
        assert pos["kidney_left"][0] > 48 and pos["aorta"][0] > 48  # posterior half
        assert pos["liver"][2] > pos["kidney_right"][2]  # liver superior to the right kidney
    # identical anatomy whatever the storage orientation (case 1 RAS, 2 LPS): close centroids
    assert np.allclose(centroids[0]["liver"], centroids[1]["liver"], atol=8)


def test_synthetic_ct_trains_through_pipeline(synth_ct, tmp_path):
    prepare_synapse(synth_ct, tmp_path / "dl.json")
    item = load_datalist(tmp_path / "dl.json", "training")[0]
    tr = ct_train_transforms(img_size=64, num_slices=3, foreground_fraction=1.0)
    tr.set_random_state(0)
    for s in tr(item):
        assert s["image"].shape == (3, 64, 64) and s["label"].shape == (1, 64, 64) and s["label"].max() > 0


def test_synthetic_isic_loads_as_isic2017(tmp_path):
    generate_isic_dataset(tmp_path / "isic", cases=5, seed=1, size=(48, 64))
    dl = prepare_isic2017(tmp_path / "isic", tmp_path / "isic" / "dl.json")
    assert (dl["numTraining"], dl["numValidation"], dl["numTest"]) == (3, 1, 1)
    assert list((tmp_path / "isic" / "ISIC-2017_Training_Data").glob("*_superpixels.png"))
    for case in load_datalist(tmp_path / "isic" / "dl.json", "training"):
        assert case["image"].endswith(".jpg") and case["label"].endswith("_segmentation.png")
        img = read_image_2d(case["image"]).mean(axis=-1)
        mask = read_mask_2d(case["label"], threshold=127)
        assert img.shape == mask.shape and 0.02 < mask.mean() < 0.6
        assert img[mask == 1].mean() < img[mask == 0].mean() - 20  # darker lesion


def test_synthetic_polyp_loads_as_pranet(tmp_path):
    generate_polyp_dataset(tmp_path / "polyp", cases=3, test_cases=2, seed=2, size=(48, 64))
    dl = prepare_polyp(tmp_path / "polyp", tmp_path / "polyp" / "dl.json")
    assert dl["numTraining"] == 3 and dl["numTest"] == 10 and dl["test_sets"] == list(POLYP_TEST_SETS)
    assert verify_datalist(tmp_path / "polyp" / "dl.json") == 13
    for case in load_datalist(tmp_path / "polyp" / "dl.json", "test"):
        mask = read_mask_2d(case["label"], threshold=127)
        assert mask.sum() > 0 and read_image_2d(case["image"]).shape[:2] == mask.shape


def test_an_interrupted_generation_is_replaced_by_overwrite(tmp_path, monkeypatch):
    """A generation stopped after its first case (an error and no clean-up: what a kill leaves on
    disk) is still recognised as a synthetic dataset: ``overwrite`` replaces it instead of refusing
    to delete a folder without a marker."""
    real, made = synthetic.make_ct_phantom, []

    def killed_after_one_case(*args, **kwargs):
        made.append(1)
        if len(made) > 1:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    out = tmp_path / "ct"
    monkeypatch.setattr(synthetic, "make_ct_phantom", killed_after_one_case)
    with pytest.raises(RuntimeError, match="killed"):
        generate_ct_dataset(out, cases=3, shape=(16, 16, 4))
    assert json.loads((out / "synthetic.json").read_text()) == {"kind": "ct", "complete": False}
    assert len(list((out / "img").iterdir())) == 1
    monkeypatch.setattr(synthetic, "make_ct_phantom", real)
    generate_ct_dataset(out, cases=2, shape=(16, 16, 4), overwrite=True)
    assert json.loads((out / "synthetic.json").read_text())["complete"] is True
    assert sorted(p.name for p in (out / "img").iterdir()) == ["img0001.nii.gz", "img0002.nii.gz"]
