"""Reading label maps, predictions and images for evaluation, through :mod:`balr_sam.data.io`.

Each failure is a :class:`~balr_sam.errors.DataError` whose message starts with the file's path
(the evaluators report the case and go on with the others).

Label maps (:func:`read_label_file`, predictions and ground truth of ``balr-sam evaluate``):

- NIfTI through :func:`~balr_sam.data.io.load_nifti` / :func:`~balr_sam.data.io.nifti_affine`;
  trailing singleton axes beyond the third are dropped and a volume with a single slice on its
  third axis is evaluated as a 2D image; 4-D data is refused. NRRD/MHA/MHD volumes through
  :func:`~balr_sam.data.io.read_volume` (3D only). Raster images (PNG, JPEG...) through
  :func:`~balr_sam.data.io.open_image`, alpha dropped, colour masks refused.
- Values must be finite, integral and non-negative. With ``label_map="identity"`` every value
  must be an id of the label set; other maps (``btcv``, ``totalseg``) convert source numberings,
  unlisted values becoming background (values above the numbering's ``source_max``, where the
  label set defines one, are refused). Raster masks of a single-foreground set with values
  above 1 (0/255 masks, JPEG artefacts) are thresholded at > 127.
- The spacing for HD95 in mm comes from the header (column norms of the affine); raster images
  have unit spacing. :func:`check_pair_geometry` requires the same shape and, for volumes, the
  same affine within ``atol=1e-3, rtol=1e-4``.

Predicted 2D masks of the 2D protocols (:func:`read_prediction_2d`) are read as values in
[0, 1] (0/1 labels, 0/255 masks or probability maps).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Tuple

import numpy as np

from balr_sam.data.io import (
    IMAGE2D_SUFFIXES,
    NIFTI_SUFFIXES,
    VOLUME_SUFFIXES,
    load_nifti,
    nifti_affine,
    open_image,
    read_volume,
)
from balr_sam.errors import DataError, first_line
from balr_sam.labels import LabelSet, remap_labels
from balr_sam.types import PathLike

__all__ = [
    "LabelVolume",
    "check_pair_geometry",
    "read_image_file",
    "read_label_file",
    "read_prediction_2d",
]


@dataclass
class LabelVolume:
    """A label map read from disk, in the product's ids.

    Attributes:
        data: ``uint8`` array (2D or 3D), product ids.
        affine: 4x4 voxel-to-world (RAS) matrix of a volume, ``None`` for raster images.
        spacing: voxel size per array axis (unit for raster images).
        raster: whether it came from a raster image (PNG/JPEG...).
    """

    data: np.ndarray
    affine: Optional[np.ndarray]
    spacing: Tuple[float, ...]
    raster: bool


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _squeeze_nifti(path: Path, arr: np.ndarray) -> np.ndarray:
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3):
        raise DataError(f"{path}: expected a 2D or 3D label map, got shape {arr.shape}")
    return arr


def _load_nifti(path: Path) -> Tuple[np.ndarray, Any]:
    """``(voxels, nibabel image)``; the geometry is checked by the caller, who knows the dimensionality."""
    img = load_nifti(path)  # DataError for empty, unreadable or corrupt files
    try:
        arr = np.asanyarray(img.dataobj)
    except Exception as err:  # truncated gzip, short file: nibabel raises many types
        raise DataError(f"{path}: voxel data is unreadable or truncated ({first_line(err, with_type=True)})") from None
    return arr, img


def _load_raster(path: Path) -> np.ndarray:
    """The pixels as stored (grey ``H x W`` of any bit depth, colour ``H x W x 3``), alpha dropped
    as the 2D readers do."""
    with open_image(path) as im:  # DataError for missing, empty, corrupt or multi-frame files
        if im.mode in ("RGBA", "LA"):
            im = im.convert(im.mode[:-1])
        return np.asarray(im)


def _check_values(path: Path, arr: np.ndarray) -> np.ndarray:
    """Finite, integral, non-negative -> an integer array."""
    if arr.dtype.kind == "b":
        return arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise DataError(f"{path}: label map holds NaN or Inf values")
        if not np.all(arr == np.round(arr)):
            raise DataError(f"{path}: label map holds non-integer values")
        if arr.size and np.abs(arr).max() >= 2**31:  # checked before the cast, which would wrap
            raise DataError(f"{path}: label value {float(np.abs(arr).max()):.6g} is outside any label numbering")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iu":
        raise DataError(f"{path}: label map has unsupported data type {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise DataError(f"{path}: label map holds negative values (min {arr.min()})")
    return arr


def _to_product_ids(path: Path, arr: np.ndarray, label_set: LabelSet, label_map: str) -> np.ndarray:
    """Checked integer labels -> ``uint8`` product ids (refusing values outside the numbering)."""
    if label_map == "identity":
        valid = np.array(sorted(label_set.labels), dtype=np.int64)
        present = np.unique(arr)
        bad = present[~np.isin(present, valid)]
        if bad.size:
            shown = ", ".join(str(int(v)) for v in bad[:10]) + (" ..." if bad.size > 10 else "")
            raise DataError(
                f"{path}: label values {shown} are not ids of label set {label_set.name!r} "
                f"(valid: {int(valid.min())}-{int(valid.max())}); use --label-map to convert"
            )
        return arr.astype(np.uint8)
    source_max = label_set.max_source_value(label_map)
    if arr.size and int(arr.max()) > source_max:
        raise DataError(f"{path}: label value {int(arr.max())} is outside the {label_map!r} numbering (max {source_max})")
    return remap_labels(arr, label_set.name, label_map)


def read_label_file(path: PathLike, label_set: LabelSet, label_map: str = "identity") -> LabelVolume:
    """Read a prediction or ground-truth label map and convert it to the product's ids.

    Args:
        path: NIfTI, NRRD/MHA/MHD or raster (PNG, JPEG...) label map.
        label_set: the task's label set.
        label_map: the file's numbering, a map of ``label_set`` (``identity``, ``btcv``, ``totalseg``).

    Returns:
        the :class:`LabelVolume` (``data`` 2D or 3D ``uint8``).

    Raises:
        DataError: unreadable file, wrong dimensionality, undefined geometry, NaN/Inf or
            non-integer values, values outside the numbering, or (``identity`` map) values that are
            not ids of ``label_set``.
    """
    path = Path(path)
    if label_map not in label_set.maps:
        raise DataError(f"{path}: label set {label_set.name!r} has no map {label_map!r}; known: {sorted(label_set.maps)}")
    name = path.name.lower()
    raster = False
    if _is_nifti(path):
        arr, img = _load_nifti(path)
        arr = _squeeze_nifti(path, arr)
        # refuse a header whose geometry is undefined rather than measure HD95 with a made-up spacing
        affine: Optional[np.ndarray] = nifti_affine(path, img, spatial_dims=arr.ndim)
    elif name.endswith(VOLUME_SUFFIXES):
        vol = read_volume(path, check_finite=False)  # NaN/Inf are refused below, as label values
        arr, affine = vol.array, vol.affine
    elif name.endswith(IMAGE2D_SUFFIXES):
        arr, affine, raster = _load_raster(path), None, True
        if arr.ndim == 3:
            if not np.all(arr == arr[..., :1]):
                raise DataError(f"{path}: colour mask; expected a single-channel label image")
            arr = arr[..., 0]
        if arr.ndim != 2:
            raise DataError(f"{path}: expected a 2D label image, got shape {arr.shape}")
    else:
        raise DataError(f"{path}: unsupported file type")
    arr = _check_values(path, arr)
    if raster and len(label_set.foreground) == 1 and arr.size and arr.max() > 1:
        arr = (arr > 127).astype(np.uint8) * np.uint8(label_set.foreground[0])
    data = _to_product_ids(path, arr, label_set, label_map)
    ndim = data.ndim
    if affine is not None:
        sp = np.linalg.norm(affine[:3, :ndim], axis=0)
        spacing = tuple(float(s) if s > 0 else 1.0 for s in sp)
    else:
        spacing = (1.0,) * ndim
    return LabelVolume(data, affine, spacing, raster)


def read_image_file(path: PathLike) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Read an image for the overlays: a volume (first channel of 4-D NIfTI data) or a raster image (RGB kept).

    Returns:
        ``(array, affine)``: the voxels in the file's order, and the voxel-to-world (RAS) affine of a
        volume as its header states it (``None`` for raster images), to check that the image lies on
        the label's grid.

    Raises:
        DataError: unreadable or unsupported file.
    """
    path = Path(path)
    name = path.name.lower()
    if _is_nifti(path):
        arr, img = _load_nifti(path)
        arr = np.asarray(arr, dtype=np.float32)
        while arr.ndim > 3:
            arr = arr[..., 0]
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        return arr, np.asarray(img.affine, dtype=np.float64)
    if name.endswith(VOLUME_SUFFIXES):
        vol = read_volume(path, check_finite=False)
        return np.asarray(vol.array, dtype=np.float32), vol.affine
    if name.endswith(IMAGE2D_SUFFIXES):
        return _load_raster(path), None
    raise DataError(f"{path}: unsupported image file type")


def check_pair_geometry(pred_path: Path, pred: LabelVolume, label_path: Path, label: LabelVolume) -> None:
    """Refuse a prediction whose shape, or (volumes) voxel-to-world affine, differs from its label's.

    Raises:
        DataError: naming the prediction, the label and both shapes / spacings and origins.
    """
    if pred.data.shape != label.data.shape:
        raise DataError(f"{pred_path}: shape {pred.data.shape} does not match the label {label_path} shape {label.data.shape}")
    if pred.affine is not None and label.affine is not None:
        if not np.allclose(pred.affine, label.affine, rtol=1e-4, atol=1e-3):
            raise DataError(
                f"{pred_path}: geometry does not match the label {label_path} "
                f"(spacing {tuple(round(s, 4) for s in pred.spacing)} vs {tuple(round(s, 4) for s in label.spacing)}, "
                f"origin {tuple(np.round(pred.affine[:3, 3], 3))} vs {tuple(np.round(label.affine[:3, 3], 3))})"
            )


def read_prediction_2d(path: PathLike) -> np.ndarray:
    """Read a predicted 2D mask as ``H x W`` float32 in [0, 1] (compare with ``>= 0.5``).

    PNG/JPEG/...: converted to grey; 8-bit (16-bit) data with values above 1 is divided by 255
    (65535), so 0/255 masks and probability maps both work. NIfTI: a 2D array (trailing
    singleton axes dropped), label values 0/1 or probabilities, kept as stored.

    Raises:
        DataError: unreadable file, not 2D, NaN/Inf, values outside [0, 1] after scaling.
    """
    p = Path(path)
    if _is_nifti(p):
        arr, _ = _load_nifti(p)  # DataError for missing, empty, unreadable, corrupt or truncated files
        while arr.ndim > 2 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        arr = arr.astype(np.float32)
    else:
        with open_image(p) as img:  # DataError for missing, empty, corrupt or multi-frame files
            arr = np.asarray(img if img.mode in ("L", "1", "F") or img.mode.startswith("I") else img.convert("L"))
        scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(arr.dtype, 1.0)
        arr = arr.astype(np.float32)
        if arr.size and arr.max() > 1.0:
            arr = arr / scale
    if arr.ndim != 2:
        raise DataError(f"{p}: a prediction mask must be 2D, got shape {tuple(arr.shape)}")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{p}: prediction holds NaN or Inf values")
    if arr.size and (arr.min() < 0 or arr.max() > 1):
        raise DataError(f"{p}: prediction values must be labels 0/1, 0/255 or probabilities, found range [{arr.min()}, {arr.max()}]")
    return arr
