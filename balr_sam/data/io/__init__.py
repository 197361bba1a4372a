"""Readers for the product's input files, with validation that names the file and the problem.

Every reader raises :class:`balr_sam.errors.DataError` for bad input, with a message that starts
with the offending path (``"<path>: <problem>"``): unreadable or corrupt files, wrong
dimensionality (a 2D image where a 3D volume is expected and the reverse), NaN/Inf voxels,
empty or inconsistent DICOM series, missing arrays in ``.npz``/``.h5`` files.

Conventions:

- **Volumes** (:func:`read_volume`) are returned as ``X x Y x Z`` arrays in the file's own voxel
  order (the NIfTI ``i, j, k`` order; for DICOM ``i`` = column, ``j`` = row, ``k`` = slice sorted
  along the slice normal) together with a 4 x 4 affine that maps voxel indices to **RAS** world
  millimetres (NIfTI convention; DICOM's LPS is converted). This is what MONAI's
  ``NibabelReader``/``ITKReader`` produce, so MONAI's ``Orientationd``, ``Invertd`` and
  ``SaveImaged`` work on them unchanged.
- **2D images** (:func:`read_image_2d`, :func:`read_mask_2d`) are returned in row-major
  ``H x W`` order (rows first, as the file is displayed; *not* MONAI ``PILReader``'s transposed
  default).
- **TransUNet arrays** (:func:`read_array`): ``.npz`` slices ``H x W``; ``.h5`` volumes stored
  ``D x H x W`` are returned as ``H x W x D`` (axial slices last, like every other volume).

Bad-input policies (each one tested in ``tests/test_bad_input.py``):

- **NaN/Inf voxels** are refused (the message gives the counts and the first index); so are
  float values beyond the float32 range every pipeline computes in (they would become Inf).
  Large but finite values (uint16 65535, int32 2e9) are kept as they are: every pipeline clips
  them into its intensity window, nothing wraps around.
- **NIfTI headers**: an sform (``sform_code > 0``) defines the geometry on its own; without one,
  a zero or non-finite voxel size ``pixdim[1:4]`` leaves the spacing unknown and is refused
  (nibabel would silently assume 1 mm). A negative ``pixdim`` is accepted as its absolute value,
  as nibabel (and so MONAI's ``NibabelReader``) does: the standard requires positive sizes, and
  the qform's handedness is carried by ``qfac = pixdim[0]``, not by their signs. A singular or
  non-finite affine (e.g. a zero column) is refused.
- **Empty (0-byte) and unreadable files** (no read permission) are refused with that reason; a
  folder that cannot be listed counts as a possible DICOM series, so that reading it reports
  the problem instead of the folder being skipped silently.
- **2D images**: an alpha channel is dropped (not composited: the colour under a transparent
  pixel is the real pixel value); 16-bit grey images are scaled to the 8-bit range
  (``value / 257``, so 65535 -> 255) because every 2D pipeline expects [0, 255]; other wide
  images (32-bit integer, float) must already hold values in [0, 255]. Masks are thresholded on
  their stored values, so 16-bit {0, 65535} and {0, 255} masks both work.

Modules: :mod:`~balr_sam.data.io.files` (suffixes, folder listing, readable-file check),
:mod:`~balr_sam.data.io.validation` (dimensionality, affine, finite values),
:mod:`~balr_sam.data.io.nifti`, :mod:`~balr_sam.data.io.dicom`, :mod:`~balr_sam.data.io.volumes`
(every volume format, and :class:`VolumeReader` for MONAI), :mod:`~balr_sam.data.io.geometry`
(image/label grids), :mod:`~balr_sam.data.io.images2d`, :mod:`~balr_sam.data.io.arrays`
(TransUNet). Everything public is importable from :mod:`balr_sam.data.io` itself.

Supported volume formats: NIfTI (``.nii``, ``.nii.gz``, via nibabel, affine kept bit-exact),
DICOM series folders (SimpleITK/GDCM by default, pydicom + pylibjpeg as the alternative backend;
both decode JPEG 2000), and the single-file ITK formats ``.nrrd``, ``.mha``, ``.mhd`` (SimpleITK).
"""

from balr_sam.data.io.arrays import h5_header, npz_header, read_array, read_slices
from balr_sam.data.io.dicom import dicom_series_files, is_dicom_series_dir, read_dicom_series
from balr_sam.data.io.files import (
    IMAGE2D_SUFFIXES,
    NIFTI_SUFFIXES,
    VOLUME_SUFFIXES,
    check_readable_file,
    is_image2d_path,
    list_folder,
    strip_suffix,
)
from balr_sam.data.io.geometry import align_to_reference, axcodes, check_grid
from balr_sam.data.io.images2d import open_image, read_image_2d, read_image_2d_size, read_mask_2d
from balr_sam.data.io.nifti import load_nifti, nifti_affine
from balr_sam.data.io.volumes import Volume, VolumeHeader, VolumeReader, is_volume_path, read_volume, read_volume_header

__all__ = [
    "IMAGE2D_SUFFIXES",
    "NIFTI_SUFFIXES",
    "VOLUME_SUFFIXES",
    "Volume",
    "VolumeHeader",
    "VolumeReader",
    "align_to_reference",
    "axcodes",
    "check_grid",
    "check_readable_file",
    "dicom_series_files",
    "h5_header",
    "is_dicom_series_dir",
    "is_image2d_path",
    "is_volume_path",
    "list_folder",
    "load_nifti",
    "nifti_affine",
    "npz_header",
    "open_image",
    "read_array",
    "read_dicom_series",
    "read_image_2d",
    "read_image_2d_size",
    "read_mask_2d",
    "read_slices",
    "read_volume",
    "read_volume_header",
    "strip_suffix",
]
