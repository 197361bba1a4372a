"""TransUNet's preprocessed Synapse arrays: ``.npz`` slices (``H x W``) and ``.npy.h5`` volumes
(stored ``D x H x W``, returned ``H x W x D``: axial slices last, like every other volume)."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from balr_sam.data.io.validation import require_finite
from balr_sam.errors import DataError, first_line
from balr_sam.types import PathLike

__all__ = ["h5_header", "npz_header", "read_array", "read_slices"]


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


def h5_header(path: PathLike) -> Dict[str, Tuple[Tuple[int, ...], np.dtype]]:
    """``{name: (shape, dtype)}`` of the top-level datasets of an HDF5 file (``.npy.h5``), without reading them.

    Raises:
        DataError: missing, or not readable as HDF5.
    """
    import h5py

    p = Path(path)
    try:
        with h5py.File(str(p), "r") as h5:
            return {k: (tuple(v.shape), v.dtype) for k, v in h5.items() if isinstance(v, h5py.Dataset)}
    except Exception as err:
        raise DataError(f"{p}: cannot be read as HDF5 ({first_line(err, with_type=True)})") from None


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
        require_finite(p, arr)
    if arr.ndim == 3:
        arr = np.ascontiguousarray(np.moveaxis(arr, 0, -1))
    return arr


def read_slices(paths: Sequence[PathLike], key: str, *, check_finite: bool = True) -> np.ndarray:
    """Stack one array from each of a case's TransUNet ``.npz`` slices into a volume.

    TransUNet ships its training cases only as slices (``train_npz/caseXXXX_sliceYYY.npz``);
    stacked in slice order they give the case's volume, as ``test_vol_h5`` stores test cases.

    Args:
        paths: the slice files, in slice order.
        key: array name (``"image"`` or ``"label"``).
        check_finite: raise on NaN/Inf.

    Returns:
        ``H x W x D`` array (``D = len(paths)``; axial slices last, like :func:`read_array`'s volumes).

    Raises:
        DataError: no files, a file :func:`read_array` refuses, or a slice whose shape differs
        from the first one's.
    """
    if not paths:
        raise DataError(f"no slice files to stack for array {key!r}")
    slices = [read_array(p, key, ndim=2, check_finite=check_finite) for p in paths]
    for path, arr in zip(paths, slices):
        if arr.shape != slices[0].shape:
            raise DataError(f"{path}: slice shape {arr.shape} differs from {slices[0].shape} of {paths[0]} in the same case")
    return np.stack(slices, axis=-1)
