"""Image/label geometry: orientation codes, and whether (and how) a label stored on its image's
voxel grid, possibly with flipped or permuted axes, maps onto the image without interpolation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from balr_sam.errors import DataError
from balr_sam.types import PathLike

if TYPE_CHECKING:
    from balr_sam.data.io.volumes import VolumeHeader

__all__ = ["LPS_TO_RAS", "align_to_reference", "axcodes", "check_grid"]

#: Flip between DICOM/ITK LPS world coordinates and NIfTI/MONAI RAS.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def axcodes(affine: np.ndarray) -> str:
    """Orientation codes of a RAS affine, e.g. ``"LPS"`` (nibabel's ``aff2axcodes``)."""
    import nibabel as nib

    return "".join(nib.orientations.aff2axcodes(np.asarray(affine, dtype=float)))


def _grid_transform(
    shape: Sequence[int],
    affine: np.ndarray,
    ref_shape: Sequence[int],
    ref_affine: np.ndarray,
    path: PathLike,
    ref_path: PathLike,
    tolerance: float,
) -> np.ndarray:
    """nibabel orientation transform taking a volume onto a reference grid; DataError if none does."""
    import nibabel as nib

    ref_shape = tuple(int(s) for s in ref_shape)
    spatial = tuple(int(s) for s in shape)
    affine = np.asarray(affine, dtype=np.float64)
    ref_affine = np.asarray(ref_affine, dtype=np.float64)
    if len(spatial) != 3 or len(ref_shape) != 3:
        if spatial != ref_shape:
            raise DataError(f"{path}: label shape {spatial} does not match image shape {ref_shape} of {ref_path}")
        return np.array([[i, 1] for i in range(len(spatial))])
    transform = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine), nib.orientations.io_orientation(ref_affine))
    new_shape = [0, 0, 0]
    for axis, (dst_axis, _) in enumerate(transform):
        new_shape[int(dst_axis)] = spatial[axis]
    if tuple(new_shape) != ref_shape:
        if sorted(spatial) != sorted(ref_shape):
            raise DataError(f"{path}: label shape {spatial} does not match image shape {ref_shape} of {ref_path}")
        raise DataError(
            f"{path}: label shape {spatial} ({axcodes(affine)}) does not match image shape {ref_shape} "
            f"({axcodes(ref_affine)}) of {ref_path} once both are in the same orientation"
        )
    new_affine = affine @ nib.orientations.inv_ornt_aff(transform, spatial)
    voxel = float(np.min(np.sqrt((ref_affine[:3, :3] ** 2).sum(axis=0))))
    if not np.allclose(new_affine, ref_affine, rtol=0, atol=tolerance * voxel):
        lab_sp = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        ref_sp = np.sqrt((ref_affine[:3, :3] ** 2).sum(axis=0))
        raise DataError(
            f"{path}: label geometry does not match image {ref_path}: label {axcodes(affine)} spacing "
            f"{np.round(lab_sp, 4).tolist()} origin {np.round(affine[:3, 3], 3).tolist()} vs image "
            f"{axcodes(ref_affine)} spacing {np.round(ref_sp, 4).tolist()} origin {np.round(ref_affine[:3, 3], 3).tolist()}"
        )
    return transform


def check_grid(label: "VolumeHeader", image: "VolumeHeader", tolerance: float = 1e-2) -> None:
    """Check from the headers that a label lies on its image's voxel grid (see :func:`align_to_reference`).

    Raises:
        DataError: shape or geometry mismatch, naming the label file.
    """
    _grid_transform(label.shape, label.affine, image.shape, image.affine, label.path, image.path, tolerance)


def align_to_reference(
    array: np.ndarray,
    affine: np.ndarray,
    ref_shape: Sequence[int],
    ref_affine: np.ndarray,
    *,
    path: PathLike = "<label>",
    ref_path: PathLike = "<image>",
    tolerance: float = 1e-2,
) -> np.ndarray:
    """Reorder a volume stored on the same voxel grid as a reference into the reference's voxel order.

    Two volumes are on the same grid when their voxel centres coincide in world space: same
    spacing, origin and axes up to the order and direction in which the axes are stored (e.g. a
    label written LAS for an LPS DICOM image, as TotalSegmentator's output for the shared
    ``ct-abdomen-dicom`` sample is). Only flips and axis permutations are applied, never
    interpolation.

    Args:
        array: the volume, spatial dims last three (``X x Y x Z`` or ``C x X x Y x Z``).
        affine: its 4 x 4 voxel -> world affine.
        ref_shape: the reference's spatial shape.
        ref_affine: the reference's affine.
        path, ref_path: names used in error messages.
        tolerance: allowed difference as a fraction of the (smallest) voxel size.

    Returns:
        ``array`` reordered to the reference's voxel order (``array`` itself when nothing changes).

    Raises:
        DataError: shape or geometry mismatch (message starts with ``path``).
    """
    spatial = tuple(int(s) for s in array.shape[-3:])
    transform = _grid_transform(spatial, affine, ref_shape, ref_affine, path, ref_path, tolerance)
    if np.array_equal(transform, [[0, 1], [1, 1], [2, 1]]):
        return array
    lead = array.ndim - 3
    out = array
    for axis, (_, flip) in enumerate(transform):
        if flip == -1:
            out = np.flip(out, axis=lead + axis)
    perm = [0, 0, 0]
    for axis, (dst_axis, _) in enumerate(transform):
        perm[int(dst_axis)] = axis
    out = np.transpose(out, tuple(range(lead)) + tuple(lead + a for a in perm))
    return np.ascontiguousarray(out)
