"""DICOM series folders: which folders hold a series, the series' geometry checked from the headers
(pydicom), and its voxels through SimpleITK/GDCM or pydicom + pylibjpeg (both decode JPEG 2000)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from balr_sam.data.io.geometry import LPS_TO_RAS
from balr_sam.data.io.validation import check_affine
from balr_sam.errors import DataError, first_line
from balr_sam.types import PathLike

__all__ = ["dicom_geometry", "dicom_series_files", "is_dicom_series_dir", "read_dicom_series"]

_DICOM_NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "SR", "PR", "KO", "REG", "RTPLAN", "RTDOSE"}
_DICOM_SKIP_NAMES = {"DICOMDIR", "LICENSE", "README", "Thumbs.db", ".DS_Store"}
_DICOM_SKIP_SUFFIXES = (".txt", ".json", ".xml", ".csv", ".md", ".nii", ".gz", ".png", ".jpg", ".jpeg", ".nrrd", ".zip", ".py", ".html", ".pdf")


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


def dicom_geometry(folder: Path, series_uid: Optional[str] = None) -> dict:
    """Validate a DICOM series folder from its headers and compute its RAS affine.

    Raises:
        DataError: empty folder, unreadable or non-DICOM files, several series (without
        ``series_uid``), missing position tags, inconsistent orientation, size or spacing,
        duplicate or missing slices.

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
                f"{folder}: non-uniform slice spacing ({steps[bad]:.3f} mm after {items[bad][0].name}, median {step:.3f} mm): missing or extra slices"
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
        "affine": check_affine(folder, LPS_TO_RAS @ lps),
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
    geom = dicom_geometry(folder, series_uid)
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
