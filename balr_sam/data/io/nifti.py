"""NIfTI through nibabel, with the product's errors: loading, and the voxel -> RAS affine refused
when the header cannot define it (nibabel would silently assume 1 mm voxels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from balr_sam.data.io.files import check_readable_file
from balr_sam.data.io.validation import check_affine
from balr_sam.errors import DataError, first_line
from balr_sam.types import PathLike

__all__ = ["load_nifti", "nifti_affine"]


def load_nifti(path: PathLike):
    """``nibabel.load`` with the product's errors: one-line :class:`DataError` for empty, unreadable
    or corrupt files, and without nibabel's header-repair warnings on stderr (see :func:`nifti_affine`)."""
    import logging

    import nibabel as nib
    from nibabel.imageglobals import logger as nib_logger

    p = Path(path)
    check_readable_file(p)
    # nibabel logs the header repairs it makes on load (zero pixdim -> 1 ...) as warnings on
    # stderr; nifti_affine decides about those cases itself and says so in one line
    level = nib_logger.level
    nib_logger.setLevel(logging.ERROR)
    try:
        return nib.load(str(p))
    except Exception as err:
        raise DataError(f"{p}: cannot be read as NIfTI ({first_line(err, with_type=True)})") from None
    finally:
        nib_logger.setLevel(level)


def _raw_nifti_header(p: Path, header_class):
    """The header as stored, before nibabel's load-time repairs (which rewrite pixdim)."""
    from nibabel.openers import ImageOpener

    try:
        with ImageOpener(str(p)) as fobj:
            return header_class.from_fileobj(fobj, check=False)
    except Exception as err:
        raise DataError(f"{p}: cannot be read as NIfTI ({first_line(err, with_type=True)})") from None


def nifti_affine(path: PathLike, img, spatial_dims: int = 3) -> np.ndarray:
    """The voxel -> RAS affine of a loaded NIfTI image, refused when the header cannot define it.

    The geometry is the sform when ``sform_code > 0``, else the qform when ``qform_code > 0``,
    else nibabel's ``pixdim`` scaling (NIfTI's "method 1"), as nibabel and MONAI choose it. Without
    an sform, the voxel size comes from ``pixdim[1:4]``: a zero or non-finite size there is refused
    (nibabel would silently take 1 mm); a negative one is accepted as its absolute value, as
    nibabel does (handedness is in ``qfac``, not in these signs). The result must be finite and
    non-singular over the first ``spatial_dims`` axes.

    Args:
        path: the file, for messages.
        img: the ``nibabel`` image loaded from ``path``.
        spatial_dims: 3 for volumes; 2 for 2D label maps (a third axis of size 1 needs no size).

    Raises:
        DataError: zero/non-finite voxel size without sform, singular or non-finite affine.
    """
    p = Path(path)
    raw = _raw_nifti_header(p, type(img.header))
    if int(raw["sform_code"]) <= 0:
        pixdim = np.asarray(raw["pixdim"][1 : 1 + spatial_dims], dtype=np.float64)
        if not np.all(np.isfinite(pixdim)) or np.any(pixdim == 0):
            raise DataError(
                f"{p}: voxel size pixdim[1:{1 + spatial_dims}] = {pixdim.tolist()} has zero or non-finite "
                f"entries and there is no sform (sform_code 0): the voxel spacing is unknown"
            )
    affine = np.asarray(img.affine, dtype=np.float64)
    if spatial_dims == 3:
        return check_affine(p, affine)
    columns = affine[:3, :spatial_dims]
    if not np.all(np.isfinite(affine)) or np.any(np.linalg.norm(columns, axis=0) < 1e-12):
        raise DataError(f"{p}: invalid voxel-to-world affine (zero or not finite): {np.round(affine, 4).tolist()}")
    return affine
