"""Per-case, per-class Dice/IoU/HD95 of multi-class label maps, the empty-case protocols and the means.

Protocols for empty masks (per class and case):

=========================  ========================  ===========================
masks of the class         ``transunet`` (SAMed)     ``clinical``
=========================  ========================  ===========================
pred and gt non-empty      computed                  computed
pred only (gt empty)       Dice 1, IoU 1, HD95 0     Dice 0, IoU 0, HD95 NaN
gt only (pred empty)       Dice 0, IoU 0, HD95 0     Dice 0, IoU 0, HD95 NaN
both empty                 Dice 0, IoU 0, HD95 0     Dice NaN, IoU NaN, HD95 NaN
=========================  ========================  ===========================

The ``transunet`` column is TransUNet's ``calculate_metric_percase`` (any empty prediction gives
0, 0, the both-empty case included). In ``clinical`` mode a value is NaN exactly where it is
undefined (Dice/IoU of two empty masks, HD95 without two surfaces); a false positive or a missed
organ keeps its true Dice of 0. NaNs are left out of the means and counted (``n_dice_nan``,
``n_hd95_nan``, ``n_gt_empty``, ``n_pred_empty``, ``n_both_empty``), never reported as perfect.

Means: over cases per class first, then over classes (NaN-aware in ``clinical`` mode).

A case is first measured without any protocol (:func:`raw_case_metrics`: ``K x 6`` rows of
:data:`RAW_COLUMNS`, the form in which evaluators accumulate cases), then a protocol is applied
(:func:`apply_protocol`), so that one set of rows gives both protocols' numbers.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import torch

from balr_sam.metrics.hd95 import DEFAULT_CHUNK_SIZE, hd95_voxel_and_mm
from balr_sam.metrics.inputs import ArrayLike, SpacingLike, as_label_tensor, as_spacing
from balr_sam.metrics.overlap import confusion_counts

__all__ = [
    "HD95_CONVENTIONS",
    "METRIC_COLUMNS",
    "PRIMARY_HD95",
    "PROTOCOLS",
    "RAW_COLUMNS",
    "apply_protocol",
    "compute_case_metrics",
    "raw_case_metrics",
    "summarize_metrics",
]

PROTOCOLS = ("transunet", "clinical")
"""Empty-case protocols (see the module docstring)."""

HD95_CONVENTIONS = ("mm", "voxel")
"""HD95 units: ``mm`` uses the voxel spacing, ``voxel`` unit spacing."""

PRIMARY_HD95 = {"transunet": "voxel", "clinical": "mm"}
"""The HD95 convention each protocol reports as its headline number."""

RAW_COLUMNS = ("dice", "iou", "hd95_mm", "hd95_voxel", "pred_nonempty", "gt_nonempty")
"""Columns of :func:`raw_case_metrics`."""

METRIC_COLUMNS = ("dice", "iou", "hd95_mm", "hd95_voxel")
"""Columns of :func:`apply_protocol`."""


def raw_case_metrics(
    pred: ArrayLike,
    gt: ArrayLike,
    classes: Sequence[int],
    spacing: SpacingLike = None,
    method: str = "auto",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: Optional[Union[str, torch.device]] = None,
) -> torch.Tensor:
    """Protocol-free metrics of one case for each class, on the device.

    Args:
        pred, gt: label maps of the same shape (2D or 3D integers), numpy or torch.
        classes: class ids to evaluate (usually the foreground ids).
        spacing: voxel size per axis for ``hd95_mm`` (``None``: unit spacing, mm = voxel).
        method, chunk_size: distance computation, see :func:`~balr_sam.metrics.hd95.surface_distances`.
        device: where to compute (default: ``pred``'s device).

    Returns:
        float64 tensor ``K x 6`` with columns :data:`RAW_COLUMNS`: Dice and IoU (NaN if both masks
        are empty), HD95 in mm and in voxels (NaN if either mask is empty), and 1/0 flags for a
        non-empty prediction and a non-empty ground truth.
    """
    p = as_label_tensor(pred, device=device)
    g = as_label_tensor(gt, device=p.device)
    if p.shape != g.shape:
        raise ValueError(f"pred and gt shapes differ: {tuple(p.shape)} vs {tuple(g.shape)}")
    classes = [int(c) for c in classes]
    sp = as_spacing(spacing, p.ndim)
    conf = confusion_counts(p, g, num_values=max(classes, default=0) + 1)
    ids = torch.as_tensor(classes, dtype=torch.int64, device=p.device)
    inter = conf[ids, ids].to(torch.float64)
    n_pred = conf.sum(dim=0)[ids].to(torch.float64)
    n_gt = conf.sum(dim=1)[ids].to(torch.float64)
    denom = n_pred + n_gt
    nan = torch.full_like(denom, float("nan"))
    out = torch.full((len(classes), len(RAW_COLUMNS)), float("nan"), dtype=torch.float64, device=p.device)
    out[:, 0] = torch.where(denom > 0, 2.0 * inter / denom.clamp_min(1), nan)
    out[:, 1] = torch.where(denom > 0, inter / (denom - inter).clamp_min(1), nan)
    out[:, 4] = (n_pred > 0).to(torch.float64)
    out[:, 5] = (n_gt > 0).to(torch.float64)

    both = ((n_pred > 0) & (n_gt > 0)).tolist()
    for k, c in enumerate(classes):
        if both[k]:
            out[k, 3], out[k, 2] = hd95_voxel_and_mm(p == c, g == c, sp, method, chunk_size)
    return out


def apply_protocol(raw: torch.Tensor, protocol: str = "transunet") -> torch.Tensor:
    """Apply an empty-case protocol to :func:`raw_case_metrics` output.

    Args:
        raw: ``[..., 6]`` tensor with columns :data:`RAW_COLUMNS` (any leading shape, e.g. N x K).
        protocol: ``transunet`` or ``clinical`` (table in the module docstring).

    Returns:
        ``[..., 4]`` float64 tensor with columns :data:`METRIC_COLUMNS` (dice, iou, hd95_mm, hd95_voxel).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
    vals = raw[..., :4].clone()
    pred_ne = raw[..., 4] > 0
    gt_ne = raw[..., 5] > 0
    if protocol == "transunet":
        fp_only = pred_ne & ~gt_ne
        pred_empty = ~pred_ne
        vals[..., 0:2] = torch.where(fp_only.unsqueeze(-1), torch.ones_like(vals[..., 0:2]), vals[..., 0:2])
        vals[..., 0:2] = torch.where(pred_empty.unsqueeze(-1), torch.zeros_like(vals[..., 0:2]), vals[..., 0:2])
        not_both = (~(pred_ne & gt_ne)).unsqueeze(-1)
        vals[..., 2:4] = torch.where(not_both, torch.zeros_like(vals[..., 2:4]), vals[..., 2:4])
    # clinical: the raw values are already NaN exactly where undefined.
    return vals


def compute_case_metrics(
    pred_labels: ArrayLike,
    gt_labels: ArrayLike,
    classes: Sequence[int],
    spacing: SpacingLike = None,
    protocol: str = "transunet",
    method: str = "auto",
    device: Optional[Union[str, torch.device]] = None,
) -> Dict[int, Dict[str, Any]]:
    """Per-class metrics of one case under a protocol, as plain Python values.

    Returns:
        ``{class_id: {"dice", "iou", "hd95_mm", "hd95_voxel": float (NaN possible in clinical mode),
        "pred_empty", "gt_empty": bool}}``.
    """
    raw = raw_case_metrics(pred_labels, gt_labels, classes, spacing=spacing, method=method, device=device)
    vals = apply_protocol(raw, protocol).cpu().numpy()
    flags = raw[:, 4:6].cpu().numpy()
    result: Dict[int, Dict[str, Any]] = {}
    for k, c in enumerate(classes):
        entry: Dict[str, Any] = {name: float(vals[k, j]) for j, name in enumerate(METRIC_COLUMNS)}
        entry["pred_empty"] = bool(flags[k, 0] == 0)
        entry["gt_empty"] = bool(flags[k, 1] == 0)
        result[int(c)] = entry
    return result


def _nanmean(x: torch.Tensor, dim: int) -> torch.Tensor:
    valid = ~torch.isnan(x)
    total = torch.where(valid, x, torch.zeros_like(x)).sum(dim=dim)
    count = valid.sum(dim=dim)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))


def _py(x: Any) -> Optional[float]:
    """A float, or None for NaN (JSON has no NaN)."""
    v = float(x)
    return None if math.isnan(v) else v


def summarize_metrics(
    raw: torch.Tensor,
    classes: Sequence[int],
    protocol: str = "transunet",
    class_names: Optional[Mapping[int, str]] = None,
) -> Dict[str, Any]:
    """Means over cases per class, then over classes, with empty-case counts.

    Args:
        raw: ``N x K x 6`` stacked :func:`raw_case_metrics` of N cases.
        classes: the K class ids.
        protocol: ``transunet`` or ``clinical``.
        class_names: optional id -> name, stored with each class.

    Returns:
        JSON-ready dict: ``protocol``, ``primary_hd95``, ``hd95_conventions``, ``num_cases``,
        ``per_class`` ({id (str): {name, dice, iou, hd95_mm, hd95_voxel, n_cases, n_gt_empty,
        n_pred_empty, n_both_empty, n_dice_nan, n_hd95_nan}}), ``mean`` ({dice, iou, hd95_mm,
        hd95_voxel, hd95}: mean of the per-class means, ``hd95`` in the primary convention) and
        ``empty_counts`` (totals). NaN means (no defined value) are ``None``.
    """
    if raw.ndim != 3 or raw.shape[-1] != len(RAW_COLUMNS) or raw.shape[1] != len(classes):
        raise ValueError(f"raw must be N x {len(classes)} x {len(RAW_COLUMNS)}, got {tuple(raw.shape)}")
    vals = apply_protocol(raw, protocol)  # N x K x 4
    if raw.shape[0]:
        per_class = _nanmean(vals, dim=0)  # K x 4
    else:
        per_class = torch.full((len(classes), 4), float("nan"), dtype=torch.float64)
    overall = _nanmean(per_class, dim=0)  # 4
    pred_ne = raw[..., 4] > 0
    gt_ne = raw[..., 5] > 0
    counts = {
        "n_gt_empty": (~gt_ne).sum(0),
        "n_pred_empty": (~pred_ne).sum(0),
        "n_both_empty": (~gt_ne & ~pred_ne).sum(0),
        "n_dice_nan": torch.isnan(vals[..., 0]).sum(0),
        "n_hd95_nan": torch.isnan(vals[..., 2]).sum(0),
    }
    counts = {k: v.cpu().tolist() for k, v in counts.items()}
    per_class_np = per_class.cpu().numpy()
    primary = PRIMARY_HD95[protocol]
    summary: Dict[str, Any] = {
        "protocol": protocol,
        "primary_hd95": primary,
        "hd95_conventions": list(HD95_CONVENTIONS),
        "num_cases": int(raw.shape[0]),
        "per_class": {},
    }
    for k, c in enumerate(classes):
        entry: Dict[str, Any] = {"id": int(c)}
        if class_names is not None and int(c) in class_names:
            entry["name"] = class_names[int(c)]
        entry.update({name: _py(per_class_np[k, j]) for j, name in enumerate(METRIC_COLUMNS)})
        entry["n_cases"] = int(raw.shape[0])
        entry.update({key: int(v[k]) for key, v in counts.items()})
        summary["per_class"][str(int(c))] = entry
    overall_np = overall.cpu().numpy()
    mean = {name: _py(overall_np[j]) for j, name in enumerate(METRIC_COLUMNS)}
    mean["hd95"] = mean[f"hd95_{primary}"]
    summary["mean"] = mean
    summary["empty_counts"] = {key: int(sum(v)) for key, v in counts.items()}
    return summary
