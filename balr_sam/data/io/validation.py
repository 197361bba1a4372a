"""Checks every reader applies to what it read: dimensionality, the voxel-to-world affine, and
finite values within the float32 range the pipelines compute in."""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

from balr_sam.errors import DataError
from balr_sam.types import PathLike

__all__ = ["check_3d", "check_affine", "require_finite"]

_FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_3d(path: PathLike, shape: Sequence[int]) -> Tuple[int, int, int]:
    """The 3D shape of a volume (trailing singleton dimensions dropped).

    Raises:
        DataError: a 2D image or an array of another dimensionality.
    """
    shape = tuple(int(s) for s in shape)
    # trailing singleton dimensions (e.g. X x Y x Z x 1 NIfTI) are not a problem
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) == 2 or (len(shape) == 3 and min(shape) == 0):
        raise DataError(f"{path}: expected a 3D volume, got a 2D image of shape {shape}")
    if len(shape) != 3:
        raise DataError(f"{path}: expected a 3D volume, got a {len(shape)}D array of shape {shape}")
    return shape  # type: ignore[return-value]


def check_affine(path: PathLike, affine: np.ndarray) -> np.ndarray:
    """``affine`` as a float64 4 x 4 matrix, checked to be finite and non-singular.

    Raises:
        DataError: singular or non-finite affine.
    """
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        # one line: the command line prints errors as single lines
        raise DataError(f"{path}: invalid voxel-to-world affine (singular or not finite): {np.round(affine, 4).tolist()}")
    return affine


def require_finite(path: PathLike, array: np.ndarray) -> None:
    """Refuse NaN/Inf voxels, and float values that would overflow to Inf in the float32 pipelines.

    Raises:
        DataError: with the counts of NaN and Inf voxels and the first index, or the count of
        values beyond the float32 range.
    """
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        if not finite.all():
            bad = np.argwhere(~finite)
            n_nan = int(np.isnan(array).sum())
            n_inf = int(bad.shape[0] - n_nan)
            raise DataError(f"{path}: contains {n_nan} NaN and {n_inf} Inf voxels (first at index {tuple(int(i) for i in bad[0])})")
        if array.dtype.itemsize > 4 and array.size:
            too_big = np.abs(array) > _FLOAT32_MAX
            if too_big.any():
                raise DataError(
                    f"{path}: {int(too_big.sum())} voxels exceed the float32 range (largest magnitude "
                    f"{float(np.abs(array).max()):.3g}); they would become Inf when processed"
                )
