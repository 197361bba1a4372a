"""Inputs of every metric: label maps as tensors, voxel spacings as tuples, per-class masks.

Metrics accept numpy arrays or torch tensors (MONAI ``MetaTensor`` included) and compute on the
device of their input, so :func:`as_label_tensor` is the one place where that conversion happens.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = ["ArrayLike", "SpacingLike", "as_label_tensor", "as_spacing", "class_masks"]

ArrayLike = Union[np.ndarray, torch.Tensor]
"""A label map or mask: numpy array or torch tensor."""

SpacingLike = Optional[Union[float, Sequence[float], np.ndarray, torch.Tensor]]
"""A voxel size: one number for every axis, one per axis, or ``None`` (unit spacing)."""


def as_label_tensor(x: ArrayLike, device: Optional[Union[str, torch.device]] = None) -> torch.Tensor:
    """Return ``x`` (numpy array or tensor, any shape) as a tensor on ``device`` (default: its own).

    Booleans and integers are kept; numpy ``uint16``/``uint32`` are widened to ``int32``/``int64``
    (torch lacks full support for them).
    """
    if isinstance(x, torch.Tensor):
        t = x.as_tensor() if hasattr(x, "as_tensor") else x  # MetaTensor -> plain tensor
    else:
        arr = np.asarray(x)
        if arr.dtype == np.uint16:
            arr = arr.astype(np.int32)
        elif arr.dtype in (np.uint32, np.uint64):
            arr = arr.astype(np.int64)
        t = torch.from_numpy(np.ascontiguousarray(arr))
    return t.to(device) if device is not None else t


def as_spacing(spacing: SpacingLike, ndim: int) -> Optional[Tuple[float, ...]]:
    """Normalise ``spacing`` to a tuple of ``ndim`` positive floats (``None`` stays ``None``).

    Raises:
        ValueError: the number of values does not match ``ndim``, or a value is not finite and positive.
    """
    if spacing is None:
        return None
    if isinstance(spacing, torch.Tensor):
        spacing = spacing.detach().cpu().numpy()
    arr = np.atleast_1d(np.asarray(spacing, dtype=np.float64)).ravel()
    if arr.size == 1:
        arr = np.repeat(arr, ndim)
    if arr.size != ndim:
        raise ValueError(f"spacing {tuple(arr.tolist())} does not match {ndim} spatial dimensions")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"spacing must be finite and positive, got {tuple(arr.tolist())}")
    return tuple(float(v) for v in arr)


def class_masks(labels: ArrayLike, classes: Sequence[int]) -> torch.Tensor:
    """One boolean mask per class: ``K x *labels.shape`` with ``out[k] = labels == classes[k]``."""
    lab = as_label_tensor(labels)
    ids = torch.as_tensor(list(classes), device=lab.device, dtype=torch.int64)
    return lab.unsqueeze(0) == ids.view(-1, *([1] * lab.ndim))
