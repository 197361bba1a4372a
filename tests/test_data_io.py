"""Readers: NIfTI, DICOM series (both backends, JPEG 2000), 2D images and masks, TransUNet arrays."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from PIL import Image

from _data_factories import affine_for, make_transunet_tree, write_dicom_series, write_nifti, write_png
from balr_sam.data.io import (
    align_to_reference,
    axcodes,
    is_dicom_series_dir,
    read_array,
    read_dicom_series,
    read_image_2d,
    read_mask_2d,
    read_volume,
    read_volume_header,
)


def test_read_nifti_keeps_array_and_affine(tmp_path):
    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    aff = affine_for((0.7, 0.8, 2.5), "LPS", (10, 20, 30))
    write_nifti(tmp_path / "a.nii.gz", arr, aff)
    vol = read_volume(tmp_path / "a.nii.gz")
    assert np.array_equal(vol.array, arr) and vol.array.dtype == np.int16
    assert np.allclose(vol.affine, aff) and vol.spacing == pytest.approx((0.7, 0.8, 2.5))
    hdr = read_volume_header(tmp_path / "a.nii.gz")
    assert hdr.shape == (4, 5, 6) and hdr.fmt == "nifti"
    write_nifti(tmp_path / "b.nii", arr[..., None], aff)  # X x Y x Z x 1 is a volume
    assert read_volume(tmp_path / "b.nii").shape == (4, 5, 6)


@pytest.mark.parametrize("backend", ["sitk", "pydicom"])
def test_dicom_series_geometry_and_values(tmp_path, backend):
    hu = np.random.default_rng(0).integers(-1024, 1500, (10, 8, 5)).astype(np.int16)
    write_dicom_series(tmp_path / "s", hu, spacing=(0.7, 0.9, 2.5), origin=(-100.0, -120.0, -300.0))
    (tmp_path / "s" / "README.txt").write_text("not DICOM")
    arr, aff = read_dicom_series(tmp_path / "s", backend=backend)
    assert np.array_equal(arr, hu) and arr.dtype == np.int16
    assert np.allclose(aff, affine_for((0.7, 0.9, 2.5), "LPS", (100.0, 120.0, -300.0)))
    assert axcodes(aff) == "LPS"
    assert read_volume_header(tmp_path / "s").shape == (10, 8, 5)
    assert is_dicom_series_dir(tmp_path / "s") and not is_dicom_series_dir(tmp_path)


def test_dicom_series_jpeg2000(tmp_path):
    hu = np.random.default_rng(1).integers(-1024, 1500, (32, 32, 3)).astype(np.int16)
    try:
        write_dicom_series(tmp_path / "j", hu, jpeg2000=True)
    except Exception as err:  # pydicom 2.4 has no JPEG 2000 encoder
        pytest.skip(f"cannot encode JPEG 2000 here: {err}")
    f = next((tmp_path / "j").iterdir())
    assert pydicom.dcmread(str(f)).file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000Lossless
    for backend in ("sitk", "pydicom"):
        arr, _ = read_dicom_series(tmp_path / "j", backend=backend)
        assert np.array_equal(arr, hu), backend


def test_dicom_folder_with_seg_object_is_not_a_series(tmp_path):
    hu = np.zeros((4, 4, 2), np.int16)
    write_dicom_series(tmp_path / "s", hu)
    ds = pydicom.dcmread(str(next((tmp_path / "s").iterdir())))
    ds.Modality = "SEG"
    (tmp_path / "seg").mkdir()
    ds.save_as(str(tmp_path / "seg" / "seg.dcm"))
    assert not is_dicom_series_dir(tmp_path / "seg")


def test_read_image_2d_modes(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (7, 9, 3)).astype(np.uint8)
    write_png(tmp_path / "rgb.png", rgb)
    assert np.array_equal(read_image_2d(tmp_path / "rgb.png"), rgb)
    grey = rgb[..., 0]
    write_png(tmp_path / "grey.png", grey)
    out = read_image_2d(tmp_path / "grey.png")
    assert out.shape == (7, 9, 3) and np.array_equal(out[..., 2], grey)
    Image.fromarray(np.dstack([rgb, np.full((7, 9), 128, np.uint8)])).save(tmp_path / "rgba.png")
    assert np.array_equal(read_image_2d(tmp_path / "rgba.png"), rgb)
    write_png(tmp_path / "rgb.jpg", rgb)
    assert read_image_2d(tmp_path / "rgb.jpg").shape == (7, 9, 3)


def test_read_mask_2d_threshold(tmp_path):
    mask = np.array([[0, 10, 127, 128, 255]], np.uint8)
    write_png(tmp_path / "m.png", mask)
    assert read_mask_2d(tmp_path / "m.png").tolist() == [[0, 0, 0, 1, 1]]
    assert read_mask_2d(tmp_path / "m.png", threshold=0).tolist() == [[0, 1, 1, 1, 1]]
    big = np.zeros((40, 40), np.uint8)
    big[10:30, 10:30] = 255
    write_png(tmp_path / "m.jpg", np.dstack([big] * 3))  # Kvasir: RGB JPEG masks
    out = read_mask_2d(tmp_path / "m.jpg", threshold=127)
    assert out.dtype == np.uint8 and set(np.unique(out)) == {0, 1}
    assert abs(int(out.sum()) - 400) <= 8


def test_read_transunet_arrays(tmp_path):
    root = make_transunet_tree(tmp_path, {5: 1}, test_cases=[1], size=8, depth=3)
    img = read_array(root / "train_npz" / "case0005_slice000.npz", "image", ndim=2)
    assert img.shape == (8, 8) and img.dtype == np.float32
    vol = read_array(root / "test_vol_h5" / "case0001.npy.h5", "label", ndim=3)
    assert vol.shape == (8, 8, 3)  # D x H x W stored, H x W x D returned


def test_align_to_reference_permuted_axes():
    label = np.arange(24).reshape(2, 3, 4)
    aff = affine_for((1.0, 2.0, 3.0), "RAS")
    # the same grid stored with axes permuted (z, y, x)
    perm = label.transpose(2, 1, 0)
    aff_perm = aff[:, [2, 1, 0, 3]]
    out = align_to_reference(perm, aff_perm, label.shape, aff)
    assert np.array_equal(out, label)
    assert align_to_reference(label, aff, label.shape, aff) is label
