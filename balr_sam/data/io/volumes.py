"""3D volumes: NIfTI (nibabel, affine kept bit-exact), the single-file ITK formats ``.nrrd``,
``.mha``, ``.mhd`` (SimpleITK) and DICOM series folders, read as ``X x Y x Z`` arrays in the
file's voxel order with a voxel -> RAS affine; and :class:`VolumeReader`, the same as a MONAI
``ImageReader``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Tuple

import numpy as np

from balr_sam.data.io.dicom import dicom_geometry, is_dicom_series_dir, read_dicom_series
from balr_sam.data.io.files import IMAGE2D_SUFFIXES, NIFTI_SUFFIXES, VOLUME_SUFFIXES, check_readable_file
from balr_sam.data.io.geometry import LPS_TO_RAS
from balr_sam.data.io.nifti import load_nifti, nifti_affine
from balr_sam.data.io.validation import check_3d, check_affine, require_finite
from balr_sam.errors import DataError, first_line
from balr_sam.types import PathLike

__all__ = ["Volume", "VolumeHeader", "VolumeReader", "is_volume_path", "read_volume", "read_volume_header"]


def is_volume_path(path: PathLike) -> bool:
    """True for a file with a volume suffix (see :data:`VOLUME_SUFFIXES`) or a DICOM series folder."""
    p = Path(path)
    if p.is_dir():
        return is_dicom_series_dir(p)
    return p.name.lower().endswith(VOLUME_SUFFIXES)


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
        geom = dicom_geometry(p)
        return VolumeHeader(str(p), geom["shape"], geom["affine"], "dicom")
    name = p.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        img = load_nifti(p)
        shape = check_3d(p, img.shape)
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
        shape = check_3d(p, reader.GetSize())
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
            require_finite(p, array)
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
        require_finite(p, array)
    return Volume(header.path, header.shape, header.affine, header.fmt, array)


def _itk_affine(direction: Sequence[float], spacing: Sequence[float], origin: Sequence[float], path: PathLike) -> np.ndarray:
    if len(spacing) != 3:
        raise DataError(f"{path}: expected a 3D volume, got a {len(spacing)}D image")
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(direction, dtype=np.float64).reshape(3, 3) @ np.diag(np.asarray(spacing, dtype=np.float64))
    lps[:3, 3] = np.asarray(origin, dtype=np.float64)
    return check_affine(path, LPS_TO_RAS @ lps)


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
