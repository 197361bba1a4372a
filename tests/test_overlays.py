"""Overlay pictures in radiological display: the patient's right on the viewer's left, anterior up,
whatever voxel order the files store (``balr_sam.evaluation.overlays``).

The checks read the arrays an overlay draws (:func:`overlay_slice`), independent of matplotlib, and
compare whole PNGs only between two renderings in the same process (the same renderer)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Tuple

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from balr_sam.data.synthetic import generate_ct_dataset
from balr_sam.evaluation import LabelVolume, evaluate_folder, overlay_slice, read_image_file, read_label_file
from balr_sam.labels import get_label_set

SYN = get_label_set("synapse")
LIVER, AORTA = 5, 7  # product ids (TotalSegmentator: liver 5, aorta 52)


def _reoriented_copy(src: Path, dst: Path, codes: Tuple[str, str, str]) -> Path:
    """``src`` stored in the voxel order ``codes`` (e.g. LPS: the first two axes flipped), with the affine
    updated so that every voxel keeps its world position."""
    img = nib.load(str(src))
    data = np.asanyarray(img.dataobj)
    t = nib.orientations.ornt_transform(nib.orientations.io_orientation(img.affine), nib.orientations.axcodes2ornt(codes))
    affine = img.affine @ nib.orientations.inv_ornt_aff(t, data.shape)
    out = nib.Nifti1Image(np.ascontiguousarray(nib.orientations.apply_orientation(data, t)), affine)
    out.set_sform(affine, code=1)
    out.set_qform(affine, code=1)
    dst.parent.mkdir(parents=True, exist_ok=True)
    nib.save(out, str(dst))
    return dst


def _centroid(mask: np.ndarray) -> np.ndarray:
    assert mask.any()
    return np.argwhere(mask).mean(axis=0)  # (row, column)


def _only(volume: LabelVolume, cls: int) -> LabelVolume:
    return dataclasses.replace(volume, data=np.where(volume.data == cls, cls, 0).astype(np.uint8))


def _shown(label_path: Path, image_path: Path, label_map: str, focus: int):
    label = read_label_file(label_path, SYN, label_map)
    return overlay_slice(_only(label, focus), label, read_image_file(image_path)[0]), label


def test_real_ct_is_shown_in_radiological_convention(shared_data: Path, tmp_path: Path) -> None:
    """The shared CT (stored RAS) at its slice with the most liver: liver on the viewer's left, spine and
    aorta below the liver (anterior up), the same pixels as a reconstruction from the known RAS order, and
    the same picture from an LPS- or axis-permuted copy of the files."""
    folder = shared_data / "ct-abdomen-nifti"
    label_path, image_path = folder / "label_totalseg.nii.gz", folder / "image.nii.gz"
    assert nib.aff2axcodes(nib.load(str(label_path)).affine) == ("R", "A", "S")
    shown, label = _shown(label_path, image_path, "totalseg", LIVER)

    # the slice with the most liver, in the file's own order (its S axis is not flipped)
    liver_per_slice = (label.data == LIVER).sum(axis=(0, 1))
    assert shown.index == int(np.argmax(liver_per_slice))
    # known RAS order: picture columns run towards the patient's left (axis 0 reversed), rows
    # towards posterior (axis 1 reversed)
    ras = label.data[:, :, shown.index]
    np.testing.assert_array_equal(shown.label, np.where(ras == LIVER, LIVER, 0)[::-1, ::-1].T)
    np.testing.assert_array_equal(shown.pred, ras[::-1, ::-1].T)
    assert shown.pixel_size == pytest.approx((3.0, 3.0))

    width = shown.pred.shape[1]
    liver = _centroid(shown.pred == LIVER)
    assert liver[1] < width / 2 - 5  # the patient's right on the viewer's left
    assert _centroid(shown.pred == 1)[1] > width / 2 + 5  # the spleen on the viewer's right
    body = shown.image > -500
    spine = body & (shown.image > 250)
    assert _centroid(spine)[0] > _centroid(body)[0] + 5  # bone (vertebra) below the body's centre: anterior up
    assert _centroid(shown.pred == AORTA)[0] > liver[0] + 5  # the aorta lies behind (below) the liver's centroid

    for codes in (("L", "P", "S"), ("A", "S", "L"), ("R", "P", "I")):
        name = "".join(codes)
        other_label = _reoriented_copy(label_path, tmp_path / name / "label.nii.gz", codes)
        other_image = _reoriented_copy(image_path, tmp_path / name / "image.nii.gz", codes)
        other, other_vol = _shown(other_label, other_image, "totalseg", LIVER)
        assert nib.aff2axcodes(other_vol.affine) == codes
        for field in ("label", "pred", "image"):
            np.testing.assert_array_equal(getattr(other, field), getattr(shown, field), err_msg=f"{name} {field}")
        assert other.pixel_size == pytest.approx(shown.pixel_size)
        # the index names the same slice along the copy's own superior-inferior axis
        along = "S" if "S" in codes else "I"
        expected = shown.index if along == "S" else label.data.shape[2] - 1 - shown.index
        assert other.index == expected
        in_copy = np.take(other_vol.data, other.index, axis=codes.index(along))
        assert int((in_copy == LIVER).sum()) == int(liver_per_slice.max())


def test_evaluate_overlay_png_does_not_depend_on_the_stored_orientation(shared_data: Path, tmp_path: Path) -> None:
    """``balr-sam evaluate``'s overlay picture of the CT against its own labels: pixel-identical for the
    files as stored (RAS) and for an LPS copy (data flipped along the first two axes, affine updated)."""
    folder = shared_data / "ct-abdomen-nifti"
    pictures = {}
    for name, codes in (("ras", None), ("lps", ("L", "P", "S"))):
        root = tmp_path / name
        for sub, src in (("pred", "label_totalseg.nii.gz"), ("label", "label_totalseg.nii.gz"), ("image", "image.nii.gz")):
            dst = root / sub / "ct.nii.gz"
            if codes is None:
                dst.parent.mkdir(parents=True)
                dst.write_bytes((folder / src).read_bytes())
            else:
                _reoriented_copy(folder / src, dst, codes)
        res = evaluate_folder(
            root / "pred",
            root / "label",
            root / "out",
            image_dir=root / "image",
            label_map="totalseg",
            pred_label_map="totalseg",
            device="cpu",
            num_overlays=1,
            progress=False,
            method_name="m",
        )
        assert res.ok and res.summary["mean"]["dice"] == pytest.approx(1.0)
        assert [o["file"] for o in res.summary["overlays"]] == ["overlays/worst_1_ct.png"]
        with Image.open(root / "out" / "overlays" / "worst_1_ct.png") as im:
            pictures[name] = np.asarray(im.convert("RGB"))
    assert pictures["ras"].shape == pictures["lps"].shape
    np.testing.assert_array_equal(pictures["ras"], pictures["lps"])


def test_synthetic_phantom_looks_the_same_in_lps_and_ras(tmp_path: Path) -> None:
    """The same phantom generated in RAS and in LPS voxel order: the same overlay arrays, liver on the
    viewer's left."""
    shown = {}
    for codes in ("RAS", "LPS"):
        root = tmp_path / codes
        generate_ct_dataset(root, cases=1, seed=0, shape=(48, 40, 8), orientations=(codes,))
        label = read_label_file(root / "label" / "label0001.nii.gz", SYN, "btcv")
        assert "".join(nib.aff2axcodes(label.affine)) == codes
        shown[codes] = overlay_slice(label, label, read_image_file(root / "img" / "img0001.nii.gz")[0])
    ras, lps = shown["RAS"], shown["LPS"]
    for field in ("label", "pred", "image"):
        np.testing.assert_array_equal(getattr(ras, field), getattr(lps, field), err_msg=field)
    assert ras.index == lps.index and ras.pixel_size == pytest.approx(lps.pixel_size)
    assert _centroid(ras.label == LIVER)[1] < ras.label.shape[1] / 2  # the patient's right on the viewer's left


def test_raster_and_single_slice_label_maps(tmp_path: Path) -> None:
    """2D raster masks are shown as stored; a single-slice NIfTI (axial here, stored RAS) in radiological order."""
    rng = np.random.default_rng(0)
    mask = (rng.random((12, 9)) > 0.5).astype(np.uint8)
    Image.fromarray(mask * 255).save(tmp_path / "m.png")
    raster = read_label_file(tmp_path / "m.png", get_label_set("binary"))
    shown = overlay_slice(raster, raster)
    np.testing.assert_array_equal(shown.label, mask)
    assert shown.index == 0 and shown.pixel_size == (1.0, 1.0)

    labels = (rng.random((12, 9, 1)) * 3).astype(np.uint8)
    nib.save(nib.Nifti1Image(labels, np.diag([1.0, 2.0, 3.0, 1.0])), str(tmp_path / "s.nii.gz"))
    single = read_label_file(tmp_path / "s.nii.gz", SYN)
    assert single.data.shape == (12, 9)
    shown = overlay_slice(single, single)
    np.testing.assert_array_equal(shown.label, labels[::-1, ::-1, 0].T)
    assert shown.pixel_size == (2.0, 1.0)


def test_pixel_size_follows_the_displayed_axes(tmp_path: Path) -> None:
    """Anisotropic voxels (1 x 2 x 3 mm, stored RAS, then with permuted axes): picture rows are 2 mm
    (anterior-posterior), columns 1 mm (left-right), whatever the file's axis order."""
    labels = np.zeros((10, 8, 6), np.uint8)
    labels[2:5, 1:3, 2:4] = 5
    path = tmp_path / "ras.nii.gz"
    nib.save(nib.Nifti1Image(labels, np.diag([1.0, 2.0, 3.0, 1.0])), str(path))
    shown = {}
    for codes in (("R", "A", "S"), ("S", "L", "A")):
        copy = _reoriented_copy(path, tmp_path / ("".join(codes) + ".nii.gz"), codes)
        volume = read_label_file(copy, SYN)
        shown[codes] = overlay_slice(volume, volume)
        assert shown[codes].pixel_size == pytest.approx((2.0, 1.0))
    np.testing.assert_array_equal(shown[("R", "A", "S")].label, shown[("S", "L", "A")].label)
    assert shown[("R", "A", "S")].label.shape == (8, 10)
