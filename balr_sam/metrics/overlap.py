"""Voxel-overlap metrics: Dice, IoU and the confusion matrix of two label maps.

Computed from voxel counts (int64, exact) on the device of the input rather than with MONAI's
``compute_dice``, which sums in float32 and loses exactness above 2**24 voxels. Dice agrees with
``medpy.metric.binary.dc`` to 1e-6 (tested), except that two empty masks give NaN here: the
empty-case protocols (:mod:`balr_sam.metrics.protocols`) decide what such a case is worth.
"""

from __future__ import annotations

from typing import Optional

import torch

from balr_sam.metrics.inputs import ArrayLike, as_label_tensor

__all__ = ["confusion_counts", "dice", "iou"]


def dice(pred: ArrayLike, gt: ArrayLike) -> torch.Tensor:
    """Dice ``2|P∩G| / (|P|+|G|)`` of two binary masks (non-zero = object), like ``medpy.dc``.

    Returns a float64 scalar tensor on ``pred``'s device. Two empty masks give NaN (medpy returns
    1.0; the protocols decide what an empty case is worth, see :func:`apply_protocol`).
    """
    p = as_label_tensor(pred).bool()
    g = as_label_tensor(gt, device=p.device).bool()
    inter = (p & g).sum(dtype=torch.int64).to(torch.float64)
    denom = (p.sum(dtype=torch.int64) + g.sum(dtype=torch.int64)).to(torch.float64)
    return torch.where(denom > 0, 2.0 * inter / denom.clamp_min(1), torch.full_like(denom, float("nan")))


def iou(pred: ArrayLike, gt: ArrayLike) -> torch.Tensor:
    """Intersection over union (Jaccard) of two binary masks; NaN when both are empty."""
    p = as_label_tensor(pred).bool()
    g = as_label_tensor(gt, device=p.device).bool()
    inter = (p & g).sum(dtype=torch.int64).to(torch.float64)
    union = (p | g).sum(dtype=torch.int64).to(torch.float64)
    return torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(union, float("nan")))


def confusion_counts(pred: ArrayLike, gt: ArrayLike, num_values: Optional[int] = None, chunk_voxels: int = 2**24) -> torch.Tensor:
    """Confusion matrix ``C[g, p]`` (int64) of two label maps, all classes in one pass.

    Computed with ``torch.bincount`` on ``g * M + p`` in chunks of ``chunk_voxels`` voxels (bounded
    memory), on ``pred``'s device. ``M = num_values`` (default: largest label + 1).
    """
    p = as_label_tensor(pred).reshape(-1)
    g = as_label_tensor(gt, device=p.device).reshape(-1)
    if p.numel() != g.numel():
        raise ValueError(f"pred and gt sizes differ: {p.numel()} vs {g.numel()}")
    if p.dtype == torch.bool:
        p = p.to(torch.uint8)
    if g.dtype == torch.bool:
        g = g.to(torch.uint8)
    if p.is_floating_point() or g.is_floating_point():
        p, g = p.round().to(torch.int64), g.round().to(torch.int64)
    if p.numel():
        lo = min(int(p.min()), int(g.min()))
        if lo < 0:
            raise ValueError(f"label maps must not hold negative values (found {lo})")
    top = max(int(p.max()) if p.numel() else 0, int(g.max()) if g.numel() else 0) + 1
    m = max(int(num_values or 0), top)
    counts = torch.zeros(m * m, dtype=torch.int64, device=p.device)
    for start in range(0, p.numel(), chunk_voxels):
        idx = g[start : start + chunk_voxels].to(torch.int64) * m + p[start : start + chunk_voxels].to(torch.int64)
        counts += torch.bincount(idx, minlength=m * m)
    return counts.view(m, m)
