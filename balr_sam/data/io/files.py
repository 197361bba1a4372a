"""File names and folders: the suffixes the readers know, case ids from file names, folder
listing and the "is this file readable at all" check every reader starts with."""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

from balr_sam.errors import DataError
from balr_sam.types import PathLike

__all__ = [
    "IMAGE2D_SUFFIXES",
    "NIFTI_SUFFIXES",
    "VOLUME_SUFFIXES",
    "check_readable_file",
    "is_image2d_path",
    "list_folder",
    "strip_suffix",
]

#: File suffixes read as 3D volumes (besides DICOM series folders).
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
#: File suffixes read as 2D images.
IMAGE2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: NIfTI file suffixes (read with nibabel; the other volume suffixes with SimpleITK).
NIFTI_SUFFIXES = (".nii.gz", ".nii")


def strip_suffix(name: str, suffixes: Sequence[str] = VOLUME_SUFFIXES + IMAGE2D_SUFFIXES + (".npz", ".npy.h5", ".h5")) -> str:
    """Return ``name`` without its (possibly double, e.g. ``.nii.gz``) file suffix."""
    lower = name.lower()
    for suffix in sorted(suffixes, key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_image2d_path(path: PathLike) -> bool:
    """True for a file with a 2D image suffix (see :data:`IMAGE2D_SUFFIXES`)."""
    return Path(path).name.lower().endswith(IMAGE2D_SUFFIXES)


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
