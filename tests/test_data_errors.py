"""Bad input: each case raises a DataError whose message starts with the offending file and says the problem."""

from __future__ import annotations

import gzip
import re

import numpy as np
import pytest

from _data_factories import affine_for, make_btcv_tree, make_transunet_tree, write_dicom_series, write_nifti, write_png
from balr_sam.cli import main
from balr_sam.data.datalist import write_datalist
from balr_sam.data.io import read_array, read_dicom_series, read_image_2d, read_mask_2d, read_volume
from balr_sam.data.pipelines import ct_train_transforms
from balr_sam.data.prepare import prepare_images2d, prepare_nifti, prepare_synapse
from balr_sam.data.synthetic import generate_ct_dataset
from balr_sam.data.transforms import AlignToReferenced, LoadVolumed, MapLabelsd, find_data_error
from balr_sam.errors import DataError


def _raises(fn, path, *words):
    """Call ``fn``; the DataError must start with ``path`` and mention each of ``words``."""
    with pytest.raises(DataError) as info:
        fn()
    msg = str(info.value)
    assert msg.startswith(str(path)), msg
    for w in words:
        assert re.search(w, msg, re.IGNORECASE), (w, msg)
    return msg


# unreadable / corrupt files ------------------------------------------------------------------


def test_corrupt_nifti(tmp_path):
    bad = tmp_path / "img0001.nii.gz"
    bad.write_bytes(gzip.compress(b"this is not a nifti header" * 20))
    _raises(lambda: read_volume(bad), bad, "cannot be read as NIfTI")


def test_truncated_nifti(tmp_path):
    path = write_nifti(tmp_path / "t.nii.gz", np.random.default_rng(0).integers(0, 1000, (32, 32, 16)).astype(np.int16))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _raises(lambda: read_volume(path), path, "unreadable or truncated")


def test_corrupt_png(tmp_path):
    bad = tmp_path / "ISIC_0000000.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    _raises(lambda: read_image_2d(bad), bad, "cannot be read as an image")
    _raises(lambda: read_mask_2d(bad), bad, "cannot be read as an image")


def test_corrupt_dicom_file_in_series(tmp_path):
    write_dicom_series(tmp_path / "s", np.zeros((4, 4, 3), np.int16))
    bad = tmp_path / "s" / "slice_9999.dcm"
    bad.write_bytes(b"\x00" * 10)
    _raises(lambda: read_dicom_series(tmp_path / "s"), bad, "cannot be read as DICOM")


def test_corrupt_npz(tmp_path):
    bad = tmp_path / "case0005_slice000.npz"
    bad.write_bytes(b"PK\x03\x04 broken zip")
    _raises(lambda: read_array(bad, "image"), bad, "cannot be read as .npz")


# wrong dimensionality ------------------------------------------------------------------------


def test_2d_where_3d_expected(tmp_path):
    path = write_nifti(tmp_path / "slice.nii.gz", np.zeros((16, 16), np.int16))
    _raises(lambda: read_volume(path), path, "expected a 3D volume", "2D")
    png = write_png(tmp_path / "x.png", np.zeros((4, 4), np.uint8))
    _raises(lambda: read_volume(png), png, "expected a 3D volume")


def test_3d_where_2d_expected(tmp_path):
    path = write_nifti(tmp_path / "vol.nii.gz", np.zeros((16, 16, 8), np.uint8))
    _raises(lambda: read_image_2d(path), path, "expected a 2D image", "3D")
    root = make_transunet_tree(tmp_path / "t", {}, test_cases=[1])
    h5 = root / "test_vol_h5" / "case0001.npy.h5"
    _raises(lambda: read_array(h5, "image", ndim=2), h5, "expected a 2D slice", "3D")


# image / label mismatch ----------------------------------------------------------------------


def test_image_label_shape_mismatch(tmp_path):
    root = make_btcv_tree(tmp_path, [5, 6])
    lab = root / "RawData" / "Training" / "label" / "label0006.nii.gz"
    write_nifti(lab, np.zeros((8, 8, 2), np.uint8), affine_for((0.75, 0.75, 3.0), "LPS", (100, 120, -200)))
    _raises(lambda: prepare_synapse(root), lab, r"label shape \(8, 8, 2\) does not match image shape \(8, 8, 3\)")
    d = {"image": str(root / "RawData" / "Training" / "img" / "img0006.nii.gz"), "label": str(lab)}
    _raises(lambda: AlignToReferenced("label")(LoadVolumed(["image", "label"])(d)), lab, "does not match image shape")


def test_image_label_geometry_mismatch(tmp_path):
    root = make_btcv_tree(tmp_path, [5])
    lab = root / "RawData" / "Training" / "label" / "label0005.nii.gz"
    write_nifti(lab, np.zeros((8, 8, 3), np.uint8), affine_for((0.75, 0.75, 2.0), "LPS", (100, 120, -200)))
    _raises(lambda: prepare_synapse(root), lab, "geometry does not match", "spacing")


# label values --------------------------------------------------------------------------------


def test_label_values_outside_map(tmp_path):
    path = write_nifti(tmp_path / "label0001.nii.gz", np.array([0, 1, 14, 200], np.uint8).reshape(1, 2, 2))
    d = LoadVolumed("label")({"label": str(path), "label_map": "btcv"})
    _raises(lambda: MapLabelsd("label", strict=True)(d), path, r"\[14, 200\]", "outside the 'btcv' label map", "0..13")
    MapLabelsd("label", strict=False)(d)  # not strict: unknown values become background


def test_non_integer_labels(tmp_path):
    path = write_nifti(tmp_path / "lab.nii.gz", np.array([0, 1.5, 2, 3], np.float32).reshape(1, 2, 2))
    d = LoadVolumed("label")({"label": str(path)})
    _raises(lambda: MapLabelsd("label", strict=True)(d), path, "must be integers", "1.5")


# NaN / Inf -----------------------------------------------------------------------------------


def test_nan_inf_voxels(tmp_path):
    arr = np.zeros((4, 4, 3), np.float32)
    arr[1, 2, 0] = np.nan
    arr[0, 0, 2] = np.inf
    path = write_nifti(tmp_path / "img.nii.gz", arr)
    _raises(lambda: read_volume(path), path, "1 NaN and 1 Inf")
    np.savez(tmp_path / "case0005_slice000.npz", image=np.full((4, 4), np.nan, np.float32), label=np.zeros((4, 4)))
    _raises(lambda: read_array(tmp_path / "case0005_slice000.npz", "image"), tmp_path / "case0005_slice000.npz", "NaN")


# empty folders -------------------------------------------------------------------------------


def test_empty_folders(tmp_path):
    (tmp_path / "btcv" / "img").mkdir(parents=True)
    (tmp_path / "btcv" / "label").mkdir()
    _raises(lambda: prepare_synapse(tmp_path / "btcv"), tmp_path / "btcv" / "img", "empty folder")
    (tmp_path / "dicom").mkdir()
    _raises(lambda: read_dicom_series(tmp_path / "dicom"), tmp_path / "dicom", "empty folder", "no DICOM")
    (tmp_path / "vols").mkdir()
    _raises(lambda: prepare_nifti(tmp_path / "vols"), tmp_path / "vols", "empty folder", "no volumes")
    (tmp_path / "2d" / "images").mkdir(parents=True)
    (tmp_path / "2d" / "masks").mkdir()
    _raises(lambda: prepare_images2d(tmp_path / "2d"), tmp_path / "2d" / "images", "empty folder")
    (tmp_path / "npz" / "train_npz").mkdir(parents=True)
    _raises(lambda: prepare_synapse(tmp_path / "npz"), tmp_path / "npz" / "train_npz", "empty folder")


# missing pairs -------------------------------------------------------------------------------


def test_missing_pairs(tmp_path):
    root = make_btcv_tree(tmp_path / "a", [5, 6, 7])
    lab = root / "RawData" / "Training" / "label" / "label0006.nii.gz"
    lab.unlink()
    img = root / "RawData" / "Training" / "img" / "img0006.nii.gz"
    _raises(lambda: prepare_synapse(root), img, "no matching label", "label0006")
    root = make_btcv_tree(tmp_path / "b", [5, 6])
    (root / "RawData" / "Training" / "img" / "img0005.nii.gz").unlink()
    _raises(lambda: prepare_synapse(root), root / "RawData" / "Training" / "label" / "label0005.nii.gz", "label without an image")
    for i in range(2):
        write_png(tmp_path / "c" / "images" / f"{i}.png", np.zeros((4, 4, 3)))
    write_png(tmp_path / "c" / "masks" / "0.png", np.zeros((4, 4)))
    _raises(lambda: prepare_images2d(tmp_path / "c"), tmp_path / "c" / "images" / "1.png", "no matching mask")
    write_png(tmp_path / "c" / "masks" / "1.png", np.zeros((4, 4)))
    write_png(tmp_path / "c" / "masks" / "2.png", np.zeros((4, 4)))
    _raises(lambda: prepare_images2d(tmp_path / "c"), tmp_path / "c" / "masks" / "2.png", "mask without an image")
    (tmp_path / "c" / "masks" / "2.png").unlink()
    write_png(tmp_path / "c" / "masks" / "1.png", np.zeros((5, 4)))
    _raises(lambda: prepare_images2d(tmp_path / "c"), tmp_path / "c" / "masks" / "1.png", r"mask size 5x4 .* does not match image size 4x4")


# DICOM series consistency --------------------------------------------------------------------


def test_dicom_missing_slice(tmp_path):
    write_dicom_series(tmp_path / "s", np.zeros((4, 4, 6), np.int16), spacing=(1, 1, 2), skip_slices=[3])
    _raises(lambda: read_dicom_series(tmp_path / "s"), tmp_path / "s", "non-uniform slice spacing", "missing")


def test_dicom_two_series_in_one_folder(tmp_path):
    write_dicom_series(tmp_path / "s", np.zeros((4, 4, 2), np.int16), series_uid="1.2.3.4")
    write_dicom_series(tmp_path / "t", np.zeros((4, 4, 2), np.int16), series_uid="1.2.3.5", origin=(0, 0, 50))
    for f in (tmp_path / "t").iterdir():
        f.rename(tmp_path / "s" / f"t_{f.name}")
    _raises(lambda: read_dicom_series(tmp_path / "s"), tmp_path / "s", "2 DICOM series")


# errors inside a MONAI Compose, on the command line, and overwriting -------------------------


def test_data_error_through_compose_and_cli(tmp_path, capsys):
    generate_ct_dataset(tmp_path / "ct", cases=1, shape=(16, 16, 4))
    bad = tmp_path / "ct" / "label" / "label0001.nii.gz"
    write_nifti(bad, np.full((16, 16, 4), 99, np.uint8), affine_for((1, 1, 1), "RAS"))
    item = {"image": str(tmp_path / "ct" / "img" / "img0001.nii.gz"), "label": str(bad), "label_map": "btcv"}
    with pytest.raises(Exception) as info:
        ct_train_transforms(img_size=16)(item)
    err = find_data_error(info.value)
    assert err is not None and str(err).startswith(str(bad))
    rc = main(["prepare", "synapse", str(tmp_path / "ct"), "--output", str(tmp_path / "dl.json")])
    out = capsys.readouterr()
    assert rc == 1 and str(bad) in out.err and "Traceback" not in out.err
    assert len(out.err.strip().splitlines()) == 1


def test_no_overwrite_without_asking(tmp_path):
    write_datalist({"training": []}, tmp_path / "d.json")
    _raises(lambda: write_datalist({"training": []}, tmp_path / "d.json"), tmp_path / "d.json", "already exists")
    write_datalist({"training": [1]}, tmp_path / "d.json", overwrite=True)
    (tmp_path / "notsynth").mkdir()
    (tmp_path / "notsynth" / "precious.txt").write_text("keep me")
    _raises(lambda: generate_ct_dataset(tmp_path / "notsynth", cases=1), tmp_path / "notsynth", "not empty")
    _raises(lambda: generate_ct_dataset(tmp_path / "notsynth", cases=1, overwrite=True), tmp_path / "notsynth", "refusing")
    assert (tmp_path / "notsynth" / "precious.txt").exists()
