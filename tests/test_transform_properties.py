"""Property-based tests (hypothesis) of the readers' and transforms' geometry and value guarantees.

For random small shapes, voxel sizes, origins and orientations (any axis permutation and flip of
the voxel axes, RAS/LPS/LAS/PIR/..., plus a small rotation):

- the inference preprocessing followed by ``Invertd`` (as ``bundle/configs/inference.json``
  chains them) gives back exactly the input's shape and affine, and the voxels where they were;
- :func:`~balr_sam.data.io.align_to_reference` undoes any re-storage of a volume on the same grid,
  and refuses a grid that differs;
- label mapping moves every voxel to exactly one product id (voxel counts preserved);
- NIfTI volumes and 2D images read back what was written (rows first for 2D).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Tuple

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from monai.transforms import AsDiscreted, Compose, Invertd
from PIL import Image

from _data_factories import write_nifti
from balr_sam.data.io import align_to_reference, read_image_2d, read_image_2d_size, read_mask_2d, read_volume, read_volume_header
from balr_sam.data.pipelines import ct_inference_preprocessing
from balr_sam.data.transforms import MapLabelsd
from balr_sam.errors import DataError
from balr_sam.labels import get_label_set, remap_labels

shapes = st.tuples(st.integers(2, 7), st.integers(2, 7), st.integers(1, 5))
geometries = st.tuples(
    st.permutations([0, 1, 2]),  # world axis each voxel axis runs along
    st.tuples(st.booleans(), st.booleans(), st.booleans()),  # flipped?
    st.tuples(*[st.floats(0.4, 4.0)] * 3),  # voxel size (mm)
    st.tuples(*[st.floats(-300.0, 300.0)] * 3),  # origin (mm)
    st.floats(-0.35, 0.35),  # rotation about the world z axis (radians; below 45 degrees)
)


def _affine(geometry) -> np.ndarray:
    """Voxel -> RAS affine: voxel axis ``i`` along world axis ``perm[i]``, flipped or not, then rotated about z."""
    perm, flips, spacing, origin, angle = geometry
    linear = np.zeros((3, 3))
    for i in range(3):
        linear[perm[i], i] = (-1.0 if flips[i] else 1.0) * spacing[i]
    c, s = np.cos(angle), np.sin(angle)
    rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ linear
    affine[:3, 3] = origin
    return affine


# --------------------------------------------------------------------------------------------
# preprocessing + Invertd
# --------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(shape=shapes, geometry=geometries, img_size=st.sampled_from([4, 8, 12]))
def test_preprocessing_then_invertd_restores_shape_affine_and_voxels(shape: Tuple[int, int, int], geometry, img_size: int) -> None:
    affine = _affine(geometry)
    # a pattern that no axis permutation or flip maps onto itself: on halves of each file axis,
    # the octant (low, low, low) is bright (275 HU, class 2), the octant (high, low, low) mid-grey
    # (75 HU, class 1), the rest dark (-125 HU, class 0)
    half = [(n + 1) // 2 for n in shape]
    hu = np.full(shape, -125, np.int16)
    hu[half[0] :, : half[1], : half[2]] = 75
    hu[: half[0], : half[1], : half[2]] = 275
    expected = np.zeros(shape, np.int64)
    expected[half[0] :, : half[1], : half[2]] = 1
    expected[: half[0], : half[1], : half[2]] = 2
    with tempfile.TemporaryDirectory() as tmp:
        path = write_nifti(Path(tmp) / "ct.nii.gz", hu, affine)
        pre = ct_inference_preprocessing(img_size=img_size)
        data = pre({"image": str(path)})
        image = data["image"]
        assert image.shape[1:3] == (img_size, img_size)
        # a three-class "prediction" that follows the image (closest of the window-scaled levels 0,
        # 0.5, 1), as the network's logits would; like SliceInferer's output for a MetaTensor input
        # it is a MetaTensor (Invertd skips plain tensors)
        data["pred"] = torch.cat([-((image - level) ** 2) for level in (0.0, 0.5, 1.0)])
        post = Compose([Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True), AsDiscreted(keys="pred", argmax=True)])
        pred = post(data)["pred"]
    assert tuple(pred.shape) == (1, *shape)
    np.testing.assert_allclose(np.asarray(pred.affine, dtype=np.float64), affine, atol=1e-5)
    labels = pred[0].numpy()
    # the eight corner voxels are far from the octant borders: they come back as they went in (a
    # flip of any axis, or a transposition of two axes, moves the bright or the grey corner)
    corners = np.ix_(*[[0, n - 1] for n in shape])
    np.testing.assert_array_equal(labels[corners], expected[corners])


# --------------------------------------------------------------------------------------------
# align_to_reference
# --------------------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    shape=shapes,
    geometry=geometries,
    stored=st.tuples(st.permutations([0, 1, 2]), st.tuples(*[st.sampled_from([1, -1])] * 3)),
    channels=st.sampled_from([0, 2]),
    seed=st.integers(0, 2**16),
)
def test_align_to_reference_round_trip(shape, geometry, stored, channels: int, seed: int) -> None:
    ref_affine = _affine(geometry)
    rng = np.random.default_rng(seed)
    ref = rng.integers(0, 9, size=((channels,) if channels else ()) + shape).astype(np.uint8)
    perm, flips = stored
    ornt = np.array([[perm[i], flips[i]] for i in range(3)], dtype=float)  # a copy stored in another voxel order
    if channels:
        copy = np.stack([nib.orientations.apply_orientation(c, ornt) for c in ref])
    else:
        copy = nib.orientations.apply_orientation(ref, ornt)
    copy_affine = ref_affine @ nib.orientations.inv_ornt_aff(ornt, shape)
    back = align_to_reference(copy, copy_affine, shape, ref_affine)
    assert back.shape == ref.shape and np.array_equal(back, ref)
    # a grid that does not coincide (shifted by half the smallest voxel) is refused, naming the file
    shifted = copy_affine.copy()
    shifted[:3, 3] += 0.5 * min(geometry[2])
    with pytest.raises(DataError, match=r"^<label>: label geometry does not match"):
        align_to_reference(copy, shifted, shape, ref_affine)


# --------------------------------------------------------------------------------------------
# label maps
# --------------------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(source=st.sampled_from(["btcv", "totalseg", "identity"]), data=st.data())
def test_label_mapping_preserves_voxel_counts(source: str, data) -> None:
    top = get_label_set("synapse").max_source_value(source)
    label = data.draw(arrays(np.int64, st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 4)), elements=st.integers(0, top)))
    mapping = get_label_set("synapse").maps[source]
    mapped = remap_labels(label, "synapse", source)
    assert mapped.shape == label.shape
    counted = 0
    for target in get_label_set("synapse").foreground:
        sources = [s for s, t in mapping.items() if t == target]
        expected = int(np.isin(label, sources).sum())
        assert int((mapped == target).sum()) == expected, (target, sources)
        counted += expected
    assert int((mapped == 0).sum()) == label.size - counted  # everything else is background
    # the MONAI transform (strict: values validated) agrees with the function, voxel for voxel
    out = MapLabelsd("label", source=source, strict=True)({"label": torch.from_numpy(label[None].astype(np.float32))})
    assert np.array_equal(out["label"][0].numpy().astype(np.uint8), mapped)


# --------------------------------------------------------------------------------------------
# readers
# --------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(shape=shapes, geometry=geometries, dtype=st.sampled_from([np.int16, np.uint8, np.float32, np.uint16]), seed=st.integers(0, 2**16))
def test_nifti_volume_round_trip(shape, geometry, dtype, seed: int) -> None:
    affine = _affine(geometry)
    arr = np.random.default_rng(seed).integers(0, 200, size=shape).astype(dtype)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_nifti(Path(tmp) / "v.nii.gz", arr, affine)
        vol = read_volume(path)
        header = read_volume_header(path)
    assert vol.array.dtype == arr.dtype and np.array_equal(vol.array, arr)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-4)
    assert header.shape == shape and vol.spacing == pytest.approx(geometry[2], rel=1e-5)


def _write_2d(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path)


@settings(max_examples=50, deadline=None)
@given(
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    mode=st.sampled_from(["RGB", "L", "RGBA", "I;16"]),
    suffix=st.sampled_from([".png", ".tif"]),
    seed=st.integers(0, 2**16),
)
def test_image_2d_round_trip(h: int, w: int, mode: str, suffix: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        stored = rng.integers(0, 65536, size=(h, w)).astype(np.uint16)
        expected = np.repeat((stored / 257.0)[..., None], 3, axis=-1)  # scaled to the 8-bit range
    else:
        channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
        stored = rng.integers(0, 256, size=(h, w, channels)).astype(np.uint8)
        stored = stored[..., 0] if channels == 1 else stored
        expected = np.repeat(stored[..., None], 3, axis=-1) if channels == 1 else stored[..., :3]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"img{suffix}"
        _write_2d(path, stored)
        out = read_image_2d(path)
        size = read_image_2d_size(path)
    assert out.shape == (h, w, 3) and size == (h, w)  # rows first, as displayed
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert out.min() >= 0 and out.max() <= 255


@settings(max_examples=30, deadline=None)
@given(mask=arrays(np.uint8, st.tuples(st.integers(1, 10), st.integers(1, 10)), elements=st.sampled_from([0, 255])), wide=st.booleans())
def test_mask_2d_round_trip(mask: np.ndarray, wide: bool) -> None:
    stored = mask.astype(np.uint16) * 257 if wide else mask  # 16-bit masks {0, 65535}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.png"
        _write_2d(path, stored)
        out = read_mask_2d(path)
    assert out.dtype == np.uint8 and np.array_equal(out, (mask > 0).astype(np.uint8))


def _codes(affine: np.ndarray) -> str:
    return "".join(nib.orientations.aff2axcodes(affine))


def test_geometries_cover_every_orientation() -> None:
    """The strategy reaches all 48 axis codes (RAS, LPS, LAS, PIR, ...), not a few of them."""
    seen = set()
    for perm in ([0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]):
        for flips in np.ndindex(2, 2, 2):
            seen.add(_codes(_affine((perm, tuple(bool(f) for f in flips), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), 0.0))))
    assert len(seen) == 48 and {"RAS", "LPS", "LAS", "PIR"} <= seen
