"""2D images and masks (dermoscopy, endoscopy): PNG/JPEG/BMP/TIFF through Pillow, or 2D NIfTI,
returned rows first (``H x W`` as displayed)."""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

import numpy as np

from balr_sam.data.io.files import NIFTI_SUFFIXES, check_readable_file
from balr_sam.data.io.nifti import load_nifti
from balr_sam.data.io.validation import require_finite
from balr_sam.errors import DataError, first_line
from balr_sam.types import PathLike

__all__ = ["open_image", "read_image_2d", "read_image_2d_size", "read_mask_2d"]


def open_image(path: PathLike):
    """Open and decode a single-frame image with Pillow (``with open_image(p) as img:`` closes it).

    Returns:
        the loaded ``PIL.Image.Image``.

    Raises:
        DataError: missing, empty, unreadable or corrupt file, or a multi-frame image.
    """
    from PIL import Image, UnidentifiedImageError

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
    require_finite(path, arr)
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
    img = open_image(p)
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
        img = open_image(p)
        if img.mode in ("L", "I", "I;16", "F", "1") or img.mode.startswith("I;"):
            arr = np.asarray(img)
        else:
            arr = np.asarray(img.convert("L"))
    if arr.ndim != 2:
        raise DataError(f"{p}: expected a 2D mask, got shape {arr.shape}")
    return (arr > threshold).astype(np.uint8)
