"""Acceptance 2: the shared real samples flow through the same preparation, readers and transforms.

Skipped with a reason when ``<repo>/../shared/data`` (or ``$BALR_SAM_SHARED_DATA``) is absent.
"""

from __future__ import annotations

import csv

import numpy as np
import pydicom
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Invertd
from scipy.ndimage import binary_dilation

from balr_sam.data.datalist import load_datalist, verify_datalist
from balr_sam.data.io import (
    align_to_reference,
    check_grid,
    read_dicom_series,
    read_image_2d,
    read_image_2d_size,
    read_mask_2d,
    read_volume,
    read_volume_header,
)
from balr_sam.data.pipelines import ct_inference_preprocessing, ct_train_transforms, image2d_train_transforms
from balr_sam.data.prepare import prepare_images2d, prepare_nifti
from balr_sam.data.transforms import AlignToReferenced, LoadVolumed, MapLabelsd

TOTALSEG_TO_SYNAPSE = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 52: 7, 7: 8}


def test_ct_abdomen_nifti_labels_map_to_all_8_organs(shared_data, tmp_path):
    folder = shared_data / "ct-abdomen-nifti"
    dl = prepare_nifti(folder, tmp_path / "ct.json", image_names=["image.nii.gz"], label_name="label_totalseg.nii.gz", label_map="totalseg", test_fraction=1.0)
    (case,) = load_datalist(tmp_path / "ct.json", "test")
    assert dl["test"][0]["spacing"] == [3.0, 3.0, 3.0] and case["label_map"] == "totalseg"
    raw = read_volume(folder / "label_totalseg.nii.gz").array
    d = LoadVolumed(["image", "label"])(case)
    assert d["image"].shape == (1, 122, 101, 30)
    d = MapLabelsd("label", label_set="synapse", strict=True)(AlignToReferenced("label")(d))
    mapped = d["label"][0].numpy().astype(int)
    for src, dst in TOTALSEG_TO_SYNAPSE.items():
        n = int((raw == src).sum())
        assert n > 0, f"organ {dst} absent"
        assert int((mapped == dst).sum()) == n, f"voxel count of organ {dst} changed"
    assert int((mapped > 0).sum()) == sum(int((raw == s).sum()) for s in TOTALSEG_TO_SYNAPSE)
    # and the training pipeline samples slices from it
    tr = ct_train_transforms(img_size=64, num_slices=2, foreground_fraction=1.0)
    tr.set_random_state(0)
    for s in tr(case):
        assert s["image"].shape == (3, 64, 64) and int((s["label"] > 0).sum()) > 0


def test_ct_abdomen_dicom_series_matches_label_geometry(shared_data, tmp_path):
    series = shared_data / "ct-abdomen-dicom" / "series"
    label_path = shared_data / "ct-abdomen-dicom" / "label_totalseg.nii.gz"
    first = sorted(series.iterdir())[0]
    assert pydicom.dcmread(str(first), stop_before_pixels=True).file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000Lossless
    vol = read_volume(series)
    assert vol.shape == (512, 512, 20) and vol.array.dtype == np.int16
    assert vol.spacing == pytest.approx((0.9765625, 0.9765625, 2.0))
    label = read_volume(label_path)
    check_grid(read_volume_header(label_path), read_volume_header(series))  # same world grid (label stored LAS)
    aligned = align_to_reference(label.array, label.affine, vol.shape, vol.affine)
    hu = vol.array
    assert 40 < hu[aligned == 5].mean() < 150  # liver
    assert hu[aligned == 52].mean() > 120  # contrast-enhanced aorta
    assert hu[aligned == 0].mean() < hu[aligned == 5].mean()
    # the pydicom + pylibjpeg backend decodes the JPEG 2000 series identically
    arr, aff = read_dicom_series(series, backend="pydicom")
    assert np.array_equal(arr, vol.array) and np.allclose(aff, vol.affine)
    # through the datalist and the inference preprocessing, and back to the DICOM's geometry
    prepare_nifti(
        shared_data / "ct-abdomen-dicom",
        tmp_path / "d.json",
        image_names=["series"],
        label_name="label_totalseg.nii.gz",
        label_map="totalseg",
        test_fraction=1.0,
    )
    (case,) = load_datalist(tmp_path / "d.json", "test")
    pre = ct_inference_preprocessing(img_size=128, label_key="label")
    d = pre(case)
    assert d["image"].shape == (1, 128, 128, 20)
    present = set(np.unique(d["label"].numpy()).astype(int).tolist())
    assert present == {0, 1, 5, 6, 7, 8}  # spleen, liver, stomach, aorta, pancreas
    d["pred"] = MetaTensor(torch.zeros(9, 128, 128, 20), meta=dict(d["image"].meta))
    out = Invertd("pred", transform=pre, orig_keys="image")(d)["pred"]
    assert out.shape == (9, 512, 512, 20) and np.allclose(out.affine.numpy(), vol.affine)


def test_polyp_kvasir_pairs_aligned(shared_data, tmp_path):
    dl = prepare_images2d(shared_data / "polyp-kvasir", tmp_path / "kvasir.json", label_set="polyp", test_fraction=1.0)
    assert dl["numTest"] == 98
    assert verify_datalist(tmp_path / "kvasir.json") == 98  # every image/mask decodes and has the same size
    for case in load_datalist(tmp_path / "kvasir.json", "test")[:12]:
        assert case["image"].rsplit("/", 1)[1] == case["label"].rsplit("/", 1)[1]
        img = read_image_2d(case["image"])
        mask = read_mask_2d(case["label"], threshold=127)
        assert img.shape[:2] == mask.shape and set(np.unique(mask)) <= {0, 1}
        assert 0.0 < mask.mean() < 1.0


def test_dermoscopy_ph2_pairs_aligned(shared_data, tmp_path):
    folder = shared_data / "dermoscopy-ph2"
    dl = prepare_images2d(folder, tmp_path / "ph2.json", mask_suffix="_lesion", label_set="isic2017", test_fraction=1.0)
    assert dl["numTest"] == 24
    with open(folder / "index.csv") as fh:  # the header's diagnosis column name holds commas: use positions
        rows = list(csv.reader(fh))[1:]
    fractions = {row[0]: float(row[-1]) for row in rows if row}
    assert len(fractions) == 24
    for case in load_datalist(tmp_path / "ph2.json", "test"):
        assert case["label"].endswith(f"{case['case_id']}_lesion.png")
        mask = read_mask_2d(case["label"], threshold=127)
        assert read_image_2d_size(case["image"]) == mask.shape
        assert mask.mean() == pytest.approx(fractions[case["case_id"]], abs=0.002)
        img = read_image_2d(case["image"]).astype(float).mean(axis=-1)
        ring = binary_dilation(mask, iterations=15) & (mask == 0)  # skin just around the lesion
        assert img[mask == 1].mean() < img[ring].mean(), case["case_id"]  # the mask lies on the dark lesion
    out = image2d_train_transforms(img_size=64)(load_datalist(tmp_path / "ph2.json", "test")[0])
    assert out["image"].shape == (3, 64, 64) and set(out["label"].unique().tolist()) <= {0, 1}
