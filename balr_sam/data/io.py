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

Supported volume formats: NIfTI (``.nii``, ``.nii.gz``, via nibabel, affine kept bit-exact),
DICOM series folders (SimpleITK/GDCM by default, pydicom + pylibjpeg as the alternative backend;
both decode JPEG 2000), and the single-file ITK formats ``.nrrd``, ``.mha``, ``.mhd`` (SimpleITK).
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from balr_sam.errors import DataError, first_line
from balr_sam.types import PathLike

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
    "list_folder",
    "dicom_series_files",
    "is_dicom_series_dir",
    "is_volume_path",
    "is_image2d_path",
    "load_nifti",
    "nifti_affine",
    "npz_header",
    "open_image_2d",
    "read_array",
    "read_dicom_series",
    "read_image_2d",
    "read_image_2d_size",
    "read_mask_2d",
    "read_volume",
    "read_volume_header",
    "strip_suffix",
]


#: File suffixes read as 3D volumes (besides DICOM series folders).
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
#: File suffixes read as 2D images.
IMAGE2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: File suffixes of NIfTI files (a subset of :data:`VOLUME_SUFFIXES`).
NIFTI_SUFFIXES = (".nii.gz", ".nii")
_DICOM_NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "SR", "PR", "KO", "REG", "RTPLAN", "RTDOSE"}
_DICOM_SKIP_NAMES = {"DICOMDIR", "LICENSE", "README", "Thumbs.db", ".DS_Store"}
_DICOM_SKIP_SUFFIXES = (".txt", ".json", ".xml", ".csv", ".md", ".nii", ".gz", ".png", ".jpg", ".jpeg",
                        ".nrrd", ".zip", ".py", ".html", ".pdf")
# Flip between DICOM/ITK LPS world coordinates and NIfTI/MONAI RAS.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def strip_suffix(name: str, suffixes: Sequence[str] = VOLUME_SUFFIXES + IMAGE2D_SUFFIXES + (".npz", ".npy.h5", ".h5")) -> str:
    """Return ``name`` without its (possibly double, e.g. ``.nii.gz``) file suffix."""
    lower = name.lower()
    for suffix in sorted(suffixes, key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_volume_path(path: PathLike) -> bool:
    """True for a file with a volume suffix (see :data:`VOLUME_SUFFIXES`) or a DICOM series folder."""
    p = Path(path)
    if p.is_dir():
        return is_dicom_series_dir(p)
    return p.name.lower().endswith(VOLUME_SUFFIXES)


def is_image2d_path(path: PathLike) -> bool:
    """True for a file with a 2D image suffix (see :data:`IMAGE2D_SUFFIXES`)."""
    return Path(path).name.lower().endswith(IMAGE2D_SUFFIXES)


def axcodes(affine: np.ndarray) -> str:
    """Orientation codes of a RAS affine, e.g. ``"LPS"`` (nibabel's ``aff2axcodes``)."""
    import nibabel as nib

    return "".join(nib.orientations.aff2axcodes(np.asarray(affine, dtype=float)))


# --------------------------------------------------------------------------------------------
# Volumes
# --------------------------------------------------------------------------------------------


@dataclass
class VolumeHeader:
    """Geometry of a volume without its voxels.

    Attributes:
        path: the file or DICOM folder.
        shape: ``(X, Y, Z)`` in the file's voxel order.
        affine: 4 x 4 voxel-to-RAS-mm matrix.
        fmt: ``"nifti"``, ``"dicom"`` or ``"itk"``.
    """

    path: str
    shape: Tuple[int, int, int]
    affine: np.ndarray
    fmt: str

    @property
    def spacing(self) -> Tuple[float, float, float]:
        """Voxel size in mm along the file's three voxel axes."""
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))


@dataclass
class Volume(VolumeHeader):
    """A volume's voxels and geometry.

    Attributes:
        array: ``X x Y x Z`` array (``shape`` of the header), in the file's dtype for NIfTI
            (scaled by ``scl_slope``/``scl_inter`` when the header asks), int16/float32 for DICOM.
    """

    array: np.ndarray = None  # type: ignore[assignment]


def _check_3d(path: PathLike, shape: Sequence[int]) -> Tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    # trailing singleton dimensions (e.g. X x Y x Z x 1 NIfTI) are not a problem
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) == 2 or (len(shape) == 3 and min(shape) == 0):
        raise DataError(f"{path}: expected a 3D volume, got a 2D image of shape {shape}")
    if len(shape) != 3:
        raise DataError(f"{path}: expected a 3D volume, got a {len(shape)}D array of shape {shape}")
    return shape  # type: ignore[return-value]


def _check_affine(path: PathLike, affine: np.ndarray) -> np.ndarray:
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        # one line: the command line prints errors as single lines
        raise DataError(f"{path}: invalid voxel-to-world affine (singular or not finite): {np.round(affine, 4).tolist()}")
    return affine


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _check_finite(path: PathLike, array: np.ndarray) -> None:
    """Refuse NaN/Inf voxels, and float values that would overflow to Inf in the float32 pipelines."""
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        if not finite.all():
            bad = np.argwhere(~finite)
            n_nan = int(np.isnan(array).sum())
            n_inf = int(bad.shape[0] - n_nan)
            raise DataError(
                f"{path}: contains {n_nan} NaN and {n_inf} Inf voxels (first at index {tuple(int(i) for i in bad[0])})"
            )
        if array.dtype.itemsize > 4 and array.size:
            too_big = np.abs(array) > _FLOAT32_MAX
            if too_big.any():
                raise DataError(
                    f"{path}: {int(too_big.sum())} voxels exceed the float32 range (largest magnitude "
                    f"{float(np.abs(array).max()):.3g}); they would become Inf when processed"
                )


def read_volume_header(path: PathLike) -> VolumeHeader:
    """Read a volume's shape and affine without its voxels (cheap: headers only).

    Args:
        path: NIfTI/NRRD/MHA file or DICOM series folder.

    Raises:
        DataError: missing, unreadable, not 3D, invalid affine.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or folder")
    if p.is_dir():
        geom = _dicom_geometry(p)
        return VolumeHeader(str(p), geom["shape"], geom["affine"], "dicom")
    name = p.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        img = load_nifti(p)
        shape = _check_3d(p, img.shape)
        return VolumeHeader(str(p), shape, nifti_affine(p, img), "nifti")
    if name.endswith(VOLUME_SUFFIXES):
        import SimpleITK as sitk

        check_readable_file(p)
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(p))
        try:
            reader.ReadImageInformation()
        except RuntimeError as err:
            raise DataError(f"{p}: cannot be read as an ITK image ({first_line(err)})") from None
        shape = _check_3d(p, reader.GetSize())
        affine = _itk_affine(reader.GetDirection(), reader.GetSpacing(), reader.GetOrigin(), p)
        return VolumeHeader(str(p), shape, affine, "itk")
    if name.endswith(IMAGE2D_SUFFIXES):
        raise DataError(f"{p}: expected a 3D volume (NIfTI, NRRD, MHA or a DICOM series folder), got a 2D image file")
    raise DataError(f"{p}: unsupported volume format (expected one of {', '.join(VOLUME_SUFFIXES)} or a DICOM folder)")


def read_volume(path: PathLike, *, check_finite: bool = True, dicom_backend: str = "sitk") -> Volume:
    """Read a 3D volume and its RAS affine.

    Args:
        path: NIfTI (``.nii``/``.nii.gz``), ``.nrrd``/``.mha``/``.mhd`` file, or a folder holding
            one DICOM series.
        check_finite: raise on NaN/Inf voxels.
        dicom_backend: ``"sitk"`` (SimpleITK/GDCM) or ``"pydicom"`` (pydicom + pylibjpeg).

    Returns:
        :class:`Volume` with ``array`` ``X x Y x Z`` in the file's voxel order and ``affine``
        voxel -> RAS mm.

    Raises:
        DataError: missing/empty/unreadable/corrupt/truncated file, not 3D, undefined geometry
        (see :func:`nifti_affine`), NaN/Inf voxels or values beyond float32, bad DICOM series.
    """
    p = Path(path)
    if p.is_dir():
        array, affine = read_dicom_series(p, backend=dicom_backend)
        if check_finite:
            _check_finite(p, array)
        return Volume(str(p), tuple(array.shape), affine, "dicom", array)
    header = read_volume_header(p)
    if header.fmt == "nifti":
        img = load_nifti(p)
        try:
            array = np.asanyarray(img.dataobj)
        except Exception as err:  # truncated gzip, short file, bad scaling...
            raise DataError(f"{p}: voxel data is unreadable or truncated ({first_line(err, with_type=True)})") from None
        array = np.asarray(array).reshape(header.shape)
    else:
        import SimpleITK as sitk

        try:
            image = sitk.ReadImage(str(p))
        except RuntimeError as err:
            raise DataError(f"{p}: voxel data is unreadable ({first_line(err)})") from None
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise DataError(f"{p}: expected a scalar volume, got {image.GetNumberOfComponentsPerPixel()} components per voxel")
        array = np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0)).reshape(header.shape)
    if check_finite:
        _check_finite(p, array)
    return Volume(header.path, header.shape, header.affine, header.fmt, array)



def list_folder(folder: PathLike) -> List[Path]:
    """``sorted(folder.iterdir())``, with a :class:`DataError` naming a folder that cannot be listed."""
    folder = Path(folder)
    try:
        return sorted(folder.iterdir())
    except OSError as err:  # e.g. no read permission on the folder
        raise DataError(f"{folder}: the folder cannot be listed ({err.strerror or type(err).__name__})") from None


def check_readable_file(path: PathLike) -> None:
    """Refuse a missing, empty (0 bytes) or unreadable (no permission) file with a message saying which.

    Raises:
        DataError: ``"<path>: no such file"``, ``"<path>: empty file (0 bytes)"``,
            ``"<path>: permission denied ..."``.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise DataError(f"{p}: no such file") from None
    except OSError as err:
        raise DataError(f"{p}: cannot be accessed ({err.strerror or type(err).__name__})") from None
    if p.is_file() and size == 0:
        raise DataError(f"{p}: empty file (0 bytes)")
    try:
        with open(p, "rb"):
            pass
    except PermissionError:
        raise DataError(f"{p}: permission denied (the file is not readable)") from None
    except OSError as err:
        raise DataError(f"{p}: cannot be opened ({err.strerror or type(err).__name__})") from None


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
        return _check_affine(p, affine)
    columns = affine[:3, :spatial_dims]
    if not np.all(np.isfinite(affine)) or np.any(np.linalg.norm(columns, axis=0) < 1e-12):
        raise DataError(f"{p}: invalid voxel-to-world affine (zero or not finite): {np.round(affine, 4).tolist()}")
    return affine


def _itk_affine(direction: Sequence[float], spacing: Sequence[float], origin: Sequence[float], path: PathLike) -> np.ndarray:
    if len(spacing) != 3:
        raise DataError(f"{path}: expected a 3D volume, got a {len(spacing)}D image")
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(direction, dtype=np.float64).reshape(3, 3) @ np.diag(np.asarray(spacing, dtype=np.float64))
    lps[:3, 3] = np.asarray(origin, dtype=np.float64)
    return _check_affine(path, _LPS_TO_RAS @ lps)


# --------------------------------------------------------------------------------------------
# DICOM series
# --------------------------------------------------------------------------------------------


def dicom_series_files(folder: PathLike) -> List[Path]:
    """Files in ``folder`` (not recursive) that may be DICOM: everything except obvious non-DICOM names."""
    p = Path(folder)
    files = []
    try:
        entries = sorted(p.iterdir())
    except PermissionError:
        raise DataError(f"{p}: permission denied (the folder cannot be listed)") from None
    except OSError as err:
        raise DataError(f"{p}: the folder cannot be listed ({err.strerror or type(err).__name__})") from None
    for f in entries:
        if not f.is_file() or f.name.startswith(".") or f.name in _DICOM_SKIP_NAMES:
            continue
        if f.name.lower().endswith(_DICOM_SKIP_SUFFIXES):
            continue
        files.append(f)
    return files


def is_dicom_series_dir(folder: PathLike) -> bool:
    """True when ``folder`` directly holds at least one DICOM *image* file.

    Files are checked in name order until one is a DICOM image (a header with ``Rows`` whose
    modality is not a non-image object such as SEG or RTSTRUCT); a folder holding only a
    DICOM-SEG, or no DICOM at all, is not a series. A folder that cannot be listed, or an
    unreadable ``*.dcm`` file in it (no permission), may be a series: it counts as one, so that
    reading it reports the problem instead of the case being skipped without a word. (Other
    unreadable files are passed over: they may be anything.)
    """
    import pydicom

    p = Path(folder)
    if not p.is_dir():
        return False
    try:
        files = dicom_series_files(p)
    except DataError:
        return True
    for f in files:
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except PermissionError:
            if f.suffix.lower() == ".dcm":
                return True
            continue
        except Exception:
            continue
        if hasattr(ds, "Rows") and str(getattr(ds, "Modality", "")).upper() not in _DICOM_NON_IMAGE_MODALITIES:
            return True
    return False


def _dicom_headers(folder: Path) -> List[Tuple[Path, object]]:
    import pydicom

    files = dicom_series_files(folder)
    if not files:
        raise DataError(f"{folder}: empty folder, no DICOM files found")
    headers = []
    for f in files:
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except PermissionError:
            raise DataError(f"{f}: permission denied (the file is not readable)") from None
        except Exception as err:
            raise DataError(f"{f}: cannot be read as DICOM ({first_line(err, with_type=True)})") from None
        headers.append((f, ds))
    return headers


def _dicom_geometry(folder: Path, series_uid: Optional[str] = None) -> dict:
    """Validate a DICOM series folder from its headers and compute its RAS affine.

    Returns a dict with ``files`` (sorted along the slice normal), ``shape`` (X=columns, Y=rows,
    Z=slices), ``affine`` (voxel -> RAS), ``series_uid``.
    """
    headers = _dicom_headers(folder)
    by_series: Dict[str, list] = {}
    for f, ds in headers:
        if not hasattr(ds, "Rows") or str(getattr(ds, "Modality", "")).upper() in _DICOM_NON_IMAGE_MODALITIES:
            continue  # e.g. a DICOM-SEG, RTSTRUCT or structured report next to the images
        by_series.setdefault(str(getattr(ds, "SeriesInstanceUID", "")), []).append((f, ds))
    if not by_series:
        raise DataError(f"{folder}: no DICOM image files found")
    if series_uid is not None:
        if series_uid not in by_series:
            raise DataError(f"{folder}: series {series_uid} not found; series present: {sorted(by_series)}")
        items = by_series[series_uid]
    elif len(by_series) > 1:
        desc = ", ".join(f"{uid} ({len(v)} files)" for uid, v in sorted(by_series.items()))
        raise DataError(f"{folder}: holds {len(by_series)} DICOM series ({desc}); put each series in its own folder")
    else:
        series_uid, items = next(iter(by_series.items()))
    for f, ds in items:
        for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns"):
            if tag not in ds:
                raise DataError(f"{f}: DICOM file lacks {tag}; cannot place it in a 3D volume")
    f0, ds0 = items[0]
    iop = np.asarray([float(v) for v in ds0.ImageOrientationPatient])
    row_cos, col_cos = iop[:3], iop[3:]
    normal = np.cross(row_cos, col_cos)
    rows, cols = int(ds0.Rows), int(ds0.Columns)
    dr, dc = (float(v) for v in ds0.PixelSpacing)  # row spacing (between rows), column spacing
    for f, ds in items[1:]:
        if not np.allclose([float(v) for v in ds.ImageOrientationPatient], iop, atol=1e-4):
            raise DataError(f"{f}: ImageOrientationPatient differs from the rest of the series in {folder}")
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise DataError(f"{f}: slice size {int(ds.Rows)}x{int(ds.Columns)} differs from {rows}x{cols} in {folder}")
        if not np.allclose([float(v) for v in ds.PixelSpacing], [dr, dc], rtol=1e-4):
            raise DataError(f"{f}: PixelSpacing differs from the rest of the series in {folder}")
    positions = np.asarray([[float(v) for v in ds.ImagePositionPatient] for _, ds in items])
    order = np.argsort(positions @ normal, kind="stable")
    items = [items[i] for i in order]
    positions = positions[order]
    depth = positions @ normal
    if len(items) > 1:
        steps = np.diff(depth)
        if np.any(np.abs(steps) < 1e-4):
            dup = int(np.argmin(np.abs(steps)))
            raise DataError(f"{items[dup + 1][0]}: duplicate slice position {positions[dup + 1].tolist()} in {folder}")
        step = float(np.median(steps))
        if np.any(np.abs(steps - step) > max(0.01 * abs(step), 1e-3)):
            bad = int(np.argmax(np.abs(steps - step)))
            raise DataError(
                f"{folder}: non-uniform slice spacing ({steps[bad]:.3f} mm after {items[bad][0].name}, "
                f"median {step:.3f} mm): missing or extra slices"
            )
        slice_vec = (positions[-1] - positions[0]) / (len(items) - 1)
    else:
        thickness = float(getattr(ds0, "SliceThickness", 1.0) or 1.0)
        slice_vec = normal * thickness
    lps = np.eye(4)
    lps[:3, 0] = row_cos * dc
    lps[:3, 1] = col_cos * dr
    lps[:3, 2] = slice_vec
    lps[:3, 3] = positions[0]
    return {
        "files": [f for f, _ in items],
        "shape": (cols, rows, len(items)),
        "affine": _check_affine(folder, _LPS_TO_RAS @ lps),
        "series_uid": series_uid,
    }


def read_dicom_series(folder: PathLike, *, backend: str = "sitk", series_uid: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Read one DICOM series folder into a volume.

    The geometry (slice order along the normal, uniform spacing, consistent orientation and size)
    is checked from the headers with pydicom; voxels come from SimpleITK/GDCM (``backend="sitk"``)
    or pydicom with the pylibjpeg/openjpeg plugins (``backend="pydicom"``), rescaled by
    ``RescaleSlope``/``RescaleIntercept`` (Hounsfield units for CT). Works with pydicom 2.4 and 3.

    Args:
        folder: the folder holding the series files (not recursive).
        backend: ``"sitk"`` or ``"pydicom"``.
        series_uid: which series to read when the folder holds several.

    Returns:
        ``(array, affine)``: ``X x Y x Z`` (columns, rows, slices) array (int16 when the rescaled
        values fit, else float32) and its voxel -> RAS affine.

    Raises:
        DataError: empty folder, non-DICOM/corrupt files, several series, inconsistent geometry,
        pixel data that cannot be decoded.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder (a DICOM series is read from the folder holding its files)")
    geom = _dicom_geometry(folder, series_uid)
    files = geom["files"]
    if backend == "sitk":
        import SimpleITK as sitk

        reader = sitk.ImageSeriesReader()
        reader.SetFileNames([str(f) for f in files])
        try:
            image = reader.Execute()
        except RuntimeError as err:
            raise DataError(f"{folder}: DICOM pixel data cannot be decoded ({first_line(err)})") from None
        array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
        # the files were handed over in the headers' slice order, so the headers' affine applies
        # (it also covers single-slice series, where ITK invents a 1 mm slice spacing)
        affine = geom["affine"]
    elif backend == "pydicom":
        import pydicom

        slices = []
        for f in files:
            try:
                ds = pydicom.dcmread(str(f))
                pixels = ds.pixel_array
            except Exception as err:
                raise DataError(
                    f"{f}: DICOM pixel data cannot be decoded ({first_line(err, with_type=True)}); "
                    "compressed series need pylibjpeg with pylibjpeg-openjpeg/-libjpeg installed"
                ) from None
            if pixels.ndim != 2:
                raise DataError(f"{f}: expected a single-frame 2D slice, got pixel array of shape {pixels.shape}")
            slope = float(getattr(ds, "RescaleSlope", 1) or 1)
            intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
            slices.append(pixels.astype(np.float64) * slope + intercept)
        array = np.stack(slices, axis=-1).transpose(1, 0, 2)  # rows x cols x Z -> cols x rows x Z
        affine = geom["affine"]
    else:
        raise ValueError(f"unknown DICOM backend {backend!r}; use 'sitk' or 'pydicom'")
    array = np.ascontiguousarray(array)
    if np.issubdtype(array.dtype, np.integer) and array.dtype != np.int16 and array.size:
        if array.min() >= -32768 and array.max() <= 32767:  # ITK widens rescaled uint16 to int32
            array = array.astype(np.int16)
    elif np.issubdtype(array.dtype, np.floating):
        if np.all(np.isfinite(array)) and np.all(array == np.round(array)) and array.min() >= -32768 and array.max() <= 32767:
            array = array.astype(np.int16)
        else:
            array = array.astype(np.float32)
    if array.shape != tuple(geom["shape"]):
        raise DataError(f"{folder}: decoded volume shape {array.shape} does not match the headers' {geom['shape']}")
    return array, affine


# --------------------------------------------------------------------------------------------
# Image/label geometry
# --------------------------------------------------------------------------------------------


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
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.io_orientation(ref_affine)
    )
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


def check_grid(label: VolumeHeader, image: VolumeHeader, tolerance: float = 1e-2) -> None:
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


# --------------------------------------------------------------------------------------------
# 2D images
# --------------------------------------------------------------------------------------------


def open_image_2d(path: PathLike):
    """Open a 2D image file with Pillow, decoded and checked: the pixels as stored, no conversion.

    For readers that need the stored mode and bit depth (8/16-bit grey, colour), e.g. predicted
    masks and label images; :func:`read_image_2d` and :func:`read_mask_2d` are built on it.

    Returns:
        the loaded ``PIL.Image.Image`` (use it as a context manager to close the file).

    Raises:
        DataError: missing, empty, unreadable or corrupt file, or a multi-frame image.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    check_readable_file(path)
    try:
        img = Image.open(str(path))
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: cannot be read as an image ({first_line(err, with_type=True)})") from None
    frames = int(getattr(img, "n_frames", 1) or 1)
    if frames > 1:
        raise DataError(f"{path}: expected a 2D image, got a multi-frame image with {frames} frames")
    return img


def _nifti_2d(path: Path) -> np.ndarray:
    img = load_nifti(path)
    shape = tuple(int(s) for s in img.shape)
    squeezed = tuple(s for s in shape if s != 1)
    if len(squeezed) > 2:
        raise DataError(f"{path}: expected a 2D image, got a {len(shape)}D volume of shape {shape}")
    try:
        arr = np.asanyarray(img.dataobj)
    except Exception as err:
        raise DataError(f"{path}: voxel data is unreadable or truncated ({type(err).__name__})") from None
    arr = np.asarray(arr).reshape(squeezed if len(squeezed) == 2 else shape[:2])
    _check_finite(path, arr)
    return arr


def read_image_2d_size(path: PathLike) -> Tuple[int, int]:
    """``(H, W)`` of a 2D image from its header (does not decode the pixels).

    Raises:
        DataError: missing/unreadable file.
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if p.name.lower().endswith(NIFTI_SUFFIXES):
        return tuple(_nifti_2d(p).shape)  # type: ignore[return-value]
    check_readable_file(p)
    try:
        with Image.open(str(p)) as img:
            width, height = img.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{p}: cannot be read as an image ({first_line(err, with_type=True)})") from None
    return int(height), int(width)


def _wide_grey(path: Path, img) -> np.ndarray:
    """A grey image with more than 8 bits per pixel, as float32 in the 8-bit range [0, 255]."""
    grey = np.asarray(img).astype(np.float32)
    # PNG grey is 1-16 bits, so a PNG in mode "I" (older Pillow) is 16-bit too
    if img.mode.startswith("I;16") or (img.mode == "I" and img.format == "PNG"):
        if grey.size and grey.min() < 0:
            raise DataError(f"{path}: 16-bit image with negative values (min {grey.min():g})")
        return grey / np.float32(257.0)  # 65535 -> 255 exactly; clipping at 255 would make it white
    if grey.size and (not np.all(np.isfinite(grey)) or grey.min() < 0 or grey.max() > 255):
        raise DataError(
            f"{path}: {img.mode!r} image with values in [{np.nanmin(grey):g}, {np.nanmax(grey):g}]; expected the "
            f"8-bit range [0, 255] (convert it to an 8-bit image)"
        )
    return grey


def read_image_2d(path: PathLike) -> np.ndarray:
    """Read a 2D RGB image (dermoscopy, endoscopy).

    Grey images are repeated to three channels; an alpha channel is dropped (not composited onto
    a background: the colour stored under a transparent pixel is kept as it is). 16-bit grey
    images are scaled to [0, 255] (``value / 257``); 32-bit integer and float images must hold
    values in [0, 255] already.

    Args:
        path: PNG/JPEG/BMP/TIFF file (or a 2D NIfTI).

    Returns:
        ``H x W x 3`` ``uint8`` array (float32 in [0, 255] for 16-bit, 32-bit or float sources;
        2D NIfTI values as stored).

    Raises:
        DataError: missing/empty/unreadable/corrupt file, multi-frame or 3D input, unsupported
        pixel type, wide image outside the 8-bit range.
    """
    p = Path(path)
    if p.name.lower().endswith(NIFTI_SUFFIXES):
        arr = _nifti_2d(p).astype(np.float32)
        return np.repeat(arr[..., None], 3, axis=-1)
    img = open_image_2d(p)
    if img.mode in ("RGB",):
        arr = np.asarray(img)
    elif img.mode in ("RGBA", "P", "PA", "CMYK", "YCbCr", "LA", "L", "1", "LAB", "HSV"):
        arr = np.asarray(img.convert("RGB"))
    elif img.mode.startswith("I") or img.mode == "F":
        arr = np.repeat(_wide_grey(p, img)[..., None], 3, axis=-1)
    else:
        raise DataError(f"{p}: unsupported image mode {img.mode!r}")
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise DataError(f"{p}: expected an H x W x 3 image, got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def read_mask_2d(path: PathLike, threshold: float = 127) -> np.ndarray:
    """Read a 2D binary mask and binarise it (``value > threshold`` -> 1).

    Colour masks (e.g. Kvasir's JPEG masks) are converted to luminance first (an alpha channel
    is dropped); use ``threshold=127`` for JPEG masks (compression noise around 0 and 255) and
    ``0`` for clean {0, 1} or {0, 255} masks. 16-bit masks are thresholded on their stored
    values (not rescaled), so {0, 255} and {0, 65535} masks both give 0/1.

    Args:
        path: PNG/JPEG/BMP/TIFF (or 2D NIfTI) mask.
        threshold: values strictly above it are foreground.

    Returns:
        ``H x W`` ``uint8`` array of 0 and 1.

    Raises:
        DataError: missing/corrupt file, multi-frame or 3D input.
    """
    p = Path(path)
    if p.name.lower().endswith(NIFTI_SUFFIXES):
        arr = _nifti_2d(p)
    else:
        img = open_image_2d(p)
        if img.mode in ("L", "I", "I;16", "F", "1") or img.mode.startswith("I;"):
            arr = np.asarray(img)
        else:
            arr = np.asarray(img.convert("L"))
    if arr.ndim != 2:
        raise DataError(f"{p}: expected a 2D mask, got shape {arr.shape}")
    return (arr > threshold).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# TransUNet arrays (.npz slices, .npy.h5 volumes)
# --------------------------------------------------------------------------------------------


def npz_header(path: PathLike) -> Dict[str, Tuple[Tuple[int, ...], np.dtype]]:
    """``{key: (shape, dtype)}`` of the arrays in an ``.npz`` file, from the headers only.

    Raises:
        DataError: missing, not a zip/npz, unreadable array header.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file")
    out = {}
    try:
        with zipfile.ZipFile(str(p)) as zf:
            for name in zf.namelist():
                if not name.endswith(".npy"):
                    continue
                with zf.open(name) as fh:
                    version = np.lib.format.read_magic(fh)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
                    else:
                        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
                out[name[:-4]] = (tuple(shape), np.dtype(dtype))
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise DataError(f"{p}: cannot be read as .npz ({first_line(err, with_type=True)})") from None
    return out


def read_array(path: PathLike, key: str, *, ndim: Optional[int] = None, check_finite: bool = True) -> np.ndarray:
    """Read one array from a TransUNet ``.npz`` slice or ``.npy.h5``/``.h5`` volume.

    Args:
        path: ``caseXXXX_sliceYYY.npz`` (``H x W`` arrays) or ``caseXXXX.npy.h5`` (``D x H x W``).
        key: array/dataset name (``"image"`` or ``"label"``).
        ndim: expected dimensionality (2 for slices, 3 for volumes); ``None`` accepts both.
        check_finite: raise on NaN/Inf.

    Returns:
        The array; 3D h5 volumes are returned ``H x W x D`` (axial slices last).

    Raises:
        DataError: unreadable file, missing key, wrong dimensionality, NaN/Inf.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file")
    name = p.name.lower()
    if name.endswith(".npz"):
        try:
            with np.load(str(p), allow_pickle=False) as npz:
                if key not in npz.files:
                    raise DataError(f"{p}: no array {key!r} (arrays: {sorted(npz.files)})")
                arr = np.asarray(npz[key])
        except DataError:
            raise
        except Exception as err:
            raise DataError(f"{p}: cannot be read as .npz ({first_line(err, with_type=True)})") from None
    elif name.endswith((".h5", ".hdf5")):
        import h5py

        try:
            with h5py.File(str(p), "r") as h5:
                if key not in h5:
                    raise DataError(f"{p}: no dataset {key!r} (datasets: {sorted(h5.keys())})")
                arr = np.asarray(h5[key][()])
        except DataError:
            raise
        except Exception as err:
            raise DataError(f"{p}: cannot be read as HDF5 ({first_line(err, with_type=True)})") from None
    else:
        raise DataError(f"{p}: unsupported array file (expected .npz or .h5)")
    if ndim is not None and arr.ndim != ndim:
        kind = {2: "a 2D slice", 3: "a 3D volume"}.get(ndim, f"{ndim}D data")
        got = {2: "a 2D array", 3: "a 3D array"}.get(arr.ndim, f"a {arr.ndim}D array")
        raise DataError(f"{p}: expected {kind} in {key!r}, got {got} of shape {arr.shape}")
    if arr.ndim not in (2, 3):
        raise DataError(f"{p}: expected a 2D slice or 3D volume in {key!r}, got shape {arr.shape}")
    if check_finite:
        _check_finite(p, arr)
    if arr.ndim == 3:
        arr = np.ascontiguousarray(np.moveaxis(arr, 0, -1))
    return arr


# --------------------------------------------------------------------------------------------
# MONAI ImageReader
# --------------------------------------------------------------------------------------------

try:  # MONAI is a hard dependency of the package, but keep io importable on its own
    from monai.data.image_reader import ImageReader as _MonaiImageReader
except Exception:  # pragma: no cover
    _MonaiImageReader = object  # type: ignore[assignment,misc]


class VolumeReader(_MonaiImageReader):  # type: ignore[misc,valid-type]
    """MONAI ``ImageReader`` for CT volumes: NIfTI, NRRD/MHA and DICOM series folders.

    Usable as ``LoadImaged(keys, reader=VolumeReader())`` (MONAI then wraps reader errors in a
    ``RuntimeError``) or through :class:`balr_sam.data.transforms.LoadVolumed`, which lets the
    :class:`~balr_sam.errors.DataError` through. The metadata carry ``affine`` and
    ``original_affine`` (voxel -> RAS), ``spatial_shape``, ``space="RAS"`` and
    ``original_channel_dim="no_channel"``, as MONAI's own readers do, so ``Orientationd``,
    ``Invertd`` and ``SaveImaged`` work.

    Args:
        check_finite: raise on NaN/Inf voxels.
        dicom_backend: ``"sitk"`` or ``"pydicom"``.
    """

    def __init__(self, check_finite: bool = True, dicom_backend: str = "sitk") -> None:
        super().__init__()
        self.check_finite = check_finite
        self.dicom_backend = dicom_backend

    def verify_suffix(self, filename) -> bool:
        names = filename if isinstance(filename, (list, tuple)) else [filename]
        return all(is_volume_path(n) or Path(n).is_dir() for n in names)

    def read(self, data, **kwargs):
        names = data if isinstance(data, (list, tuple)) else [data]
        return [read_volume(n, check_finite=self.check_finite, dicom_backend=self.dicom_backend) for n in names]

    def get_data(self, img):
        vols = img if isinstance(img, (list, tuple)) else [img]
        arrays = [v.array for v in vols]
        first = vols[0]
        for v in vols[1:]:
            if v.shape != first.shape or not np.allclose(v.affine, first.affine, atol=1e-3):
                raise DataError(f"{v.path}: cannot stack with {first.path}: different geometry")
        meta = {
            "affine": first.affine.copy(),
            "original_affine": first.affine.copy(),
            "spatial_shape": np.asarray(first.shape),
            "space": "RAS",
            "spacing": np.asarray(first.spacing),
            "format": first.fmt,
            "original_channel_dim": float("nan") if len(arrays) == 1 else 0,
            "filename_or_obj": first.path,
        }
        array = arrays[0] if len(arrays) == 1 else np.stack(arrays, axis=0)
        return array, meta
