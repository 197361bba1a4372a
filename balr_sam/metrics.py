"""Segmentation metrics of BALR-SAM: Dice, IoU and HD95 per class and case, and the papers' protocols.

Everything is computed with torch on the device of the input tensors (a GPU when the evaluator
has one). The reference is ``medpy.metric.binary`` (``dc`` and ``hd95``), which produced the
published Synapse numbers (TransUNet, Swin-Unet, SAMed, H-SAM); the tests check agreement to
1e-6 (Dice) and 1e-3 (HD95).

HD95, exactly as ``medpy.metric.binary.hd95``:

1. surface of a mask = ``mask XOR binary_erosion(mask, generate_binary_structure(ndim, 1))``,
   with voxels outside the array counted as background (so a mask touching the array border
   has its border voxels on the surface). Implemented here as a shift-and-AND erosion in torch.
2. directed distances: for every surface voxel of one mask, the Euclidean distance (voxel
   indexes scaled by the spacing) to the nearest surface voxel of the other mask, both ways.
3. HD95 = the 95th percentile (numpy's default linear interpolation) of the **union** of the
   two directed distance sets.

MONAI's ``compute_hausdorff_distance(..., percentile=95)`` / ``HausdorffDistanceMetric`` find
the same surfaces and the same directed distances, but return the **maximum of the two directed
95th percentiles**, which is larger than medpy's value in general (e.g. 6.00 vs 5.67 on random
blobs). So MONAI's HD95 is not used; its surface extraction (``get_mask_edges``) is not used
either, because it runs scipy on the CPU unless cuCIM is installed. Dice and IoU are computed
from per-class voxel counts (int64, exact) rather than with MONAI's ``compute_dice``, which sums
in float32 and loses exactness above 2**24 voxels.

Nearest-surface distances (``method``):

- ``"cdist"``: ``torch.cdist`` in float64 without the matrix-multiplication shortcut (which is
  inexact near zero), chunked over rows so that one block holds at most ``chunk_size`` distances
  (128 MiB at the default 2**24); runs on the tensors' device. Exact.
- ``"kdtree"``: ``scipy.spatial.cKDTree`` on the CPU (what MONAI uses on the CPU). Exact.
- ``"edt"``: ``scipy.ndimage.distance_transform_edt`` on the CPU over the classes' bounding box,
  i.e. medpy's own algorithm. Exact.
- ``"auto"`` (default): ``cdist`` on a GPU unless the number of surface-voxel pairs exceeds
  ``max_device_pairs`` (2**36), otherwise ``kdtree``; on the CPU ``cdist`` for small surfaces
  (up to 2**20 pairs) and ``kdtree`` above.

Each class is cropped to the bounding box of ``pred | gt`` plus one background voxel on every
side before its surfaces are extracted; distances are translation invariant and the padding
reproduces medpy's "outside is background" rule, so results are unchanged.

Conventions: ``hd95_voxel`` uses unit spacing (TransUNet/SAMed protocol, the published Synapse
numbers); ``hd95_mm`` uses the voxel spacing (the clinical default). With ``spacing=None`` both
are equal (unit spacing, like medpy with ``voxelspacing=None``).

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

2D protocols: :func:`pooled_confusion_dice_iou` (ISIC 2017 as in EGE-UNet/MALUNet: one confusion
matrix over all test pixels, threshold 0.5, ``miou = TP / (TP + FP + FN)`` as their code computes
it) and :func:`per_image_dice_iou` (polyp as in PraNet: mean of per-image Dice and IoU).
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = [
    "PROTOCOLS",
    "HD95_CONVENTIONS",
    "PRIMARY_HD95",
    "RAW_COLUMNS",
    "METRIC_COLUMNS",
    "as_label_tensor",
    "class_masks",
    "mask_surface",
    "surface_distances",
    "dice",
    "iou",
    "hd95",
    "confusion_counts",
    "raw_case_metrics",
    "apply_protocol",
    "compute_case_metrics",
    "summarize_metrics",
    "SegmentationMetrics",
    "pooled_confusion_dice_iou",
    "per_image_dice_iou",
    "confusion_summary",
]

ArrayLike = Union[np.ndarray, torch.Tensor]
SpacingLike = Optional[Union[float, Sequence[float], np.ndarray, torch.Tensor]]

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

_METHODS = ("auto", "cdist", "kdtree", "edt")
_DEFAULT_CHUNK = 2**24
_CPU_CDIST_MAX_PAIRS = 2**20
_DEVICE_CDIST_MAX_PAIRS = 2**36


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------


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


def _spacing_tuple(spacing: SpacingLike, ndim: int) -> Optional[Tuple[float, ...]]:
    """Normalise ``spacing`` to a tuple of ``ndim`` positive floats (None stays None)."""
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


# --------------------------------------------------------------------------------------------
# surfaces and distances
# --------------------------------------------------------------------------------------------


def _erode(masks: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """Binary erosion with the connectivity-1 cross over the last ``spatial_dims`` axes.

    Same as ``scipy.ndimage.binary_erosion(m, generate_binary_structure(nd, 1))`` with its default
    ``border_value=0``: voxels on the array border never survive.
    """
    out = masks.clone()
    for ax in range(masks.ndim - spatial_dims, masks.ndim):
        n = masks.shape[ax]
        if n > 1:
            out.narrow(ax, 1, n - 1).logical_and_(masks.narrow(ax, 0, n - 1))
            out.narrow(ax, 0, n - 1).logical_and_(masks.narrow(ax, 1, n - 1))
        out.select(ax, 0).fill_(False)
        out.select(ax, n - 1).fill_(False)
    return out


def mask_surface(masks: ArrayLike, spatial_dims: Optional[int] = None) -> torch.Tensor:
    """Surface voxels as medpy defines them: ``mask & ~erosion(mask)``.

    Args:
        masks: boolean (or 0/1) tensor ``[*batch, *spatial]``; leading axes are independent masks
            (e.g. one per class), so the erosion is batched over them.
        spatial_dims: number of trailing spatial axes (default: all axes, a single mask).

    Returns:
        boolean tensor of the same shape, on the same device.
    """
    m = as_label_tensor(masks).bool()
    sd = m.ndim if spatial_dims is None else int(spatial_dims)
    if m.numel() == 0:
        return m.clone()
    return m & ~_erode(m, sd)


def _bbox_crop_pair(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Crop both masks to the bounding box of ``p | g`` padded by one background voxel: ``2 x ...``."""
    union = p | g
    slices = []
    for ax in range(union.ndim):
        others = tuple(d for d in range(union.ndim) if d != ax)
        proj = union.any(dim=others) if others else union
        idx = torch.nonzero(proj).flatten()
        slices.append(slice(int(idx[0]), int(idx[-1]) + 1))
    pair = torch.stack([p[tuple(slices)], g[tuple(slices)]])
    padded = torch.zeros((2,) + tuple(s + 2 for s in pair.shape[1:]), dtype=torch.bool, device=p.device)
    padded[(slice(None),) + tuple(slice(1, -1) for _ in slices)] = pair
    return padded


def _percentile(values: torch.Tensor, q: float) -> torch.Tensor:
    """``numpy.percentile(values, q)`` with the default linear interpolation (float64)."""
    s = torch.sort(values.to(torch.float64).flatten()).values
    n = s.numel()
    if n == 0:
        return torch.tensor(float("nan"), dtype=torch.float64, device=values.device)
    pos = (n - 1) * (q / 100.0)
    lo = int(math.floor(pos))
    hi = min(lo + 1, n - 1)
    t = pos - lo
    return s[lo] + (s[hi] - s[lo]) * t


def _nearest_cdist(a: torch.Tensor, b: torch.Tensor, chunk_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Nearest-neighbour distances a->b and b->a by chunked exact ``torch.cdist`` (float64)."""
    d_ab = torch.empty(a.shape[0], dtype=torch.float64, device=a.device)
    d_ba = torch.full((b.shape[0],), float("inf"), dtype=torch.float64, device=a.device)
    rows = max(1, int(chunk_size) // max(1, b.shape[0]))
    for start in range(0, a.shape[0], rows):
        block = torch.cdist(a[start : start + rows], b, compute_mode="donot_use_mm_for_euclid_dist")
        d_ab[start : start + rows] = block.min(dim=1).values
        torch.minimum(d_ba, block.min(dim=0).values, out=d_ba)
    return d_ab, d_ba


def _nearest_kdtree(a: torch.Tensor, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Nearest-neighbour distances a->b and b->a with scipy's cKDTree (CPU), returned on a's device."""
    from scipy.spatial import cKDTree

    an, bn = a.detach().cpu().numpy(), b.detach().cpu().numpy()
    d_ab = cKDTree(bn).query(an, k=1)[0]
    d_ba = cKDTree(an).query(bn, k=1)[0]
    return (
        torch.from_numpy(np.asarray(d_ab, dtype=np.float64)).to(a.device),
        torch.from_numpy(np.asarray(d_ba, dtype=np.float64)).to(a.device),
    )


def _nearest_edt(
    surf_a: torch.Tensor, surf_b: torch.Tensor, spacing: Tuple[float, ...]
) -> Tuple[torch.Tensor, torch.Tensor]:
    """medpy's algorithm: EDT of the complement of one surface, read at the other's voxels (CPU)."""
    from scipy.ndimage import distance_transform_edt

    sa, sb = surf_a.detach().cpu().numpy(), surf_b.detach().cpu().numpy()
    d_ab = distance_transform_edt(~sb, sampling=spacing)[sa]
    d_ba = distance_transform_edt(~sa, sampling=spacing)[sb]
    dev = surf_a.device
    return torch.from_numpy(d_ab.astype(np.float64)).to(dev), torch.from_numpy(d_ba.astype(np.float64)).to(dev)


def _pick_method(method: str, device: torch.device, pairs: int, max_device_pairs: int) -> str:
    if method not in _METHODS:
        raise ValueError(f"unknown distance method {method!r}; choose one of {_METHODS}")
    if method != "auto":
        return method
    if device.type == "cpu":
        return "cdist" if pairs <= _CPU_CDIST_MAX_PAIRS else "kdtree"
    return "cdist" if pairs <= max_device_pairs else "kdtree"


def _surface_pair(pred: torch.Tensor, gt: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Surfaces of two non-empty masks, on their shared padded bounding box."""
    pair = _bbox_crop_pair(pred.bool(), gt.bool())
    surf = mask_surface(pair, spatial_dims=pair.ndim - 1)
    return surf[0], surf[1]


def _directed_distances(
    surf_p: torch.Tensor,
    surf_g: torch.Tensor,
    spacing: Optional[Tuple[float, ...]],
    method: str,
    chunk_size: int,
    max_device_pairs: int,
) -> Tuple[torch.Tensor, torch.Tensor]:
    sp = spacing if spacing is not None else (1.0,) * surf_p.ndim
    n_p, n_g = int(surf_p.sum()), int(surf_g.sum())
    chosen = _pick_method(method, surf_p.device, n_p * n_g, max_device_pairs)
    if chosen == "edt":
        return _nearest_edt(surf_p, surf_g, sp)
    scale = torch.as_tensor(sp, dtype=torch.float64, device=surf_p.device)
    a = torch.nonzero(surf_p).to(torch.float64) * scale
    b = torch.nonzero(surf_g).to(torch.float64) * scale
    if chosen == "kdtree":
        return _nearest_kdtree(a, b)
    return _nearest_cdist(a, b, chunk_size)


def surface_distances(
    pred: ArrayLike,
    gt: ArrayLike,
    spacing: SpacingLike = None,
    method: str = "auto",
    chunk_size: int = _DEFAULT_CHUNK,
    max_device_pairs: int = _DEVICE_CDIST_MAX_PAIRS,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Directed surface distances between two non-empty binary masks.

    Args:
        pred, gt: binary masks of the same shape (any number of dimensions; non-zero = object).
        spacing: voxel size per axis (or one number); ``None`` = unit spacing.
        method: ``auto``, ``cdist``, ``kdtree`` or ``edt`` (see the module docstring).
        chunk_size: most distances held at once by ``cdist``.
        max_device_pairs: on a GPU, above this many surface pairs ``auto`` uses the CPU k-d tree.

    Returns:
        ``(d_pred_to_gt, d_gt_to_pred)``: float64 1-D tensors on ``pred``'s device, one entry per
        surface voxel of ``pred`` (resp. ``gt``), like medpy's ``__surface_distances`` both ways.

    Raises:
        ValueError: if a mask is empty or the shapes differ.
    """
    p = as_label_tensor(pred).bool()
    g = as_label_tensor(gt, device=p.device).bool()
    if p.shape != g.shape:
        raise ValueError(f"pred and gt shapes differ: {tuple(p.shape)} vs {tuple(g.shape)}")
    if not bool(p.any()) or not bool(g.any()):
        raise ValueError("surface distances need two non-empty masks")
    sp = _spacing_tuple(spacing, p.ndim)
    sp_, sg_ = _surface_pair(p, g)
    return _directed_distances(sp_, sg_, sp, method, chunk_size, max_device_pairs)


# --------------------------------------------------------------------------------------------
# binary metrics
# --------------------------------------------------------------------------------------------


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


def hd95(
    pred: ArrayLike,
    gt: ArrayLike,
    spacing: SpacingLike = None,
    method: str = "auto",
    chunk_size: int = _DEFAULT_CHUNK,
) -> torch.Tensor:
    """95th percentile Hausdorff distance, identical to ``medpy.metric.binary.hd95``.

    The percentile is taken over the union of both directed surface-distance sets (medpy), not as
    the maximum of the two directed percentiles (MONAI). ``spacing`` is medpy's ``voxelspacing``:
    ``None`` gives voxels (TransUNet protocol), the voxel size gives mm.

    Returns a float64 scalar tensor on ``pred``'s device; NaN if either mask is empty (medpy raises).
    """
    p = as_label_tensor(pred).bool()
    g = as_label_tensor(gt, device=p.device).bool()
    if not bool(p.any()) or not bool(g.any()):
        return torch.tensor(float("nan"), dtype=torch.float64, device=p.device)
    d_pg, d_gp = surface_distances(p, g, spacing=spacing, method=method, chunk_size=chunk_size)
    return _percentile(torch.cat([d_pg, d_gp]), 95.0)


# --------------------------------------------------------------------------------------------
# multi-class, per case
# --------------------------------------------------------------------------------------------


def confusion_counts(
    pred: ArrayLike, gt: ArrayLike, num_values: Optional[int] = None, chunk_voxels: int = 2**24
) -> torch.Tensor:
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


def raw_case_metrics(
    pred: ArrayLike,
    gt: ArrayLike,
    classes: Sequence[int],
    spacing: SpacingLike = None,
    method: str = "auto",
    chunk_size: int = _DEFAULT_CHUNK,
    device: Optional[Union[str, torch.device]] = None,
) -> torch.Tensor:
    """Protocol-free metrics of one case for each class, on the device.

    Args:
        pred, gt: label maps of the same shape (2D or 3D integers), numpy or torch.
        classes: class ids to evaluate (usually the foreground ids).
        spacing: voxel size per axis for ``hd95_mm`` (``None``: unit spacing, mm = voxel).
        method, chunk_size: distance computation, see :func:`surface_distances`.
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
    sp = _spacing_tuple(spacing, p.ndim)
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

    iso = sp is None or all(s == sp[0] for s in sp)
    both = ((n_pred > 0) & (n_gt > 0)).tolist()
    for k, c in enumerate(classes):
        if not both[k]:
            continue
        surf_p, surf_g = _surface_pair(p == c, g == c)
        d_pg, d_gp = _directed_distances(surf_p, surf_g, None, method, chunk_size, _DEVICE_CDIST_MAX_PAIRS)
        vox = _percentile(torch.cat([d_pg, d_gp]), 95.0)
        out[k, 3] = vox
        if sp is None:
            out[k, 2] = vox
        elif iso:  # same nearest neighbours, distances scaled
            out[k, 2] = vox * sp[0]
        else:
            d_pg, d_gp = _directed_distances(surf_p, surf_g, sp, method, chunk_size, _DEVICE_CDIST_MAX_PAIRS)
            out[k, 2] = _percentile(torch.cat([d_pg, d_gp]), 95.0)
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


# --------------------------------------------------------------------------------------------
# aggregation
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Ignite metric
# --------------------------------------------------------------------------------------------

try:  # pytorch-ignite is a runtime dependency; keep the module importable without it.
    from ignite.metrics import Metric as _IgniteMetric
except ImportError:  # pragma: no cover
    _IgniteMetric = object  # type: ignore[assignment,misc]


def _init_ignite_metric(metric: Any, output_transform: Callable, device: Union[str, torch.device]) -> None:
    """Ignite's ``Metric.__init__`` for ``metric`` (with ``skip_unrolling=True`` where Ignite has it:
    lists of items stay as they are); without Ignite, just ``metric._device`` and ``metric.reset()``."""
    if _IgniteMetric is not object:
        kwargs: Dict[str, Any] = {"output_transform": output_transform, "device": device}
        if "skip_unrolling" in inspect.signature(_IgniteMetric.__init__).parameters:
            kwargs["skip_unrolling"] = True
        _IgniteMetric.__init__(metric, **kwargs)
    else:  # pragma: no cover
        metric._device = torch.device(device)
        metric.reset()


def _gather_rows(rows: Sequence[torch.Tensor], row_shape: Tuple[int, ...], device: Union[str, torch.device]) -> torch.Tensor:
    """The accumulated per-case rows stacked (``0 x row_shape`` float64 on ``device`` when there
    are none), concatenated over all ranks in distributed runs."""
    if rows:
        data = torch.stack(list(rows))
    else:
        data = torch.zeros((0, *row_shape), dtype=torch.float64, device=device)
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            from monai.utils import evenly_divisible_all_gather

            data = evenly_divisible_all_gather(data, concat=True)
    except ImportError:  # pragma: no cover
        pass
    return data


def _item_labels(x: torch.Tensor) -> torch.Tensor:
    """Channel-first item ``C x *spatial`` -> label map: argmax if C > 1, else the single channel."""
    if x.shape[0] > 1:
        return x.argmax(dim=0)
    lab = x[0]
    if lab.is_floating_point():
        lab = lab.round()
    return lab.to(torch.int64)


def _affine_spacing(x: Any, index: Optional[int], spatial_dims: int) -> Optional[Tuple[float, ...]]:
    """Voxel size from a MetaTensor's affine (column norms), if it has one of the right size."""
    affine = getattr(x, "affine", None)
    if not isinstance(affine, torch.Tensor):
        return None
    aff = affine
    if aff.ndim == 3:
        if index is None or index >= aff.shape[0]:
            return None
        aff = aff[index]
    if aff.ndim != 2 or aff.shape[0] != spatial_dims + 1 or aff.shape[1] != spatial_dims + 1:
        return None
    sp = torch.linalg.norm(aff[:spatial_dims, :spatial_dims].to(torch.float64), dim=0).cpu().tolist()
    return tuple(float(s) for s in sp) if all(s > 0 for s in sp) else None


class SegmentationMetrics(_IgniteMetric):  # type: ignore[misc,valid-type]
    """Per-case, per-class Dice/IoU/HD95 (mm and voxel) accumulated on the device; an Ignite ``Metric``.

    ``update((y_pred, y))`` accepts batch-first tensors ``B x K x *spatial`` (one-hot, logits or
    probabilities: argmax over K) or ``B x 1 x *spatial`` (label maps), or lists of channel-first
    items ``K x *spatial`` (MONAI's decollated batches). ``spatial_dims`` (2 or 3) removes the
    ambiguity of a 4-D tensor (a 2D batch, or a single 3D item); without it a 4-D tensor is a 2D
    batch. Every case is computed at once on the tensors' device and stored as a ``K x 6`` row
    block (:data:`RAW_COLUMNS`) on ``device``; ``aggregate()`` applies the protocol.

    Spacing for ``hd95_mm``: ``spacing`` if given, else the affine of a MetaTensor ``y`` (or
    ``y_pred``), else unit spacing (then mm equals voxels).

    ``compute()`` returns a flat dict of floats for ``engine.state.metrics``: ``mean_dice``,
    ``mean_iou``, ``mean_hd95`` (primary convention of the protocol), ``mean_hd95_mm``,
    ``mean_hd95_voxel`` and ``dice/<name>``, ``hd95/<name>`` per class (NaN where undefined).
    In distributed runs the rows of all ranks are gathered before aggregation.

    Args:
        classes: class ids to evaluate (default: 1..num_classes-1 if ``num_classes`` is given).
        num_classes: alternative to ``classes``.
        protocol: ``transunet`` or ``clinical``.
        spacing: fixed voxel size for ``hd95_mm``.
        spatial_dims: 2 or 3, see above.
        class_names: id -> name used in the ``compute()`` keys.
        method: surface-distance method (:func:`surface_distances`).
        output_transform: Ignite's transform of ``engine.state.output`` into ``(y_pred, y)``.
        device: where the accumulated rows live.
    """

    def __init__(
        self,
        classes: Optional[Sequence[int]] = None,
        num_classes: Optional[int] = None,
        protocol: str = "transunet",
        spacing: SpacingLike = None,
        spatial_dims: Optional[int] = None,
        class_names: Optional[Mapping[int, str]] = None,
        method: str = "auto",
        output_transform: Callable = lambda x: x,
        device: Union[str, torch.device] = "cpu",
    ) -> None:
        if classes is None:
            if num_classes is None:
                raise ValueError("give classes or num_classes")
            classes = list(range(1, int(num_classes)))
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
        self.classes = [int(c) for c in classes]
        self.protocol = protocol
        self.spacing = spacing
        self.spatial_dims = spatial_dims
        self.class_names = dict(class_names) if class_names else {c: str(c) for c in self.classes}
        self.method = method
        self._rows: List[torch.Tensor] = []
        _init_ignite_metric(self, output_transform, device)

    # Ignite API -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every accumulated case."""
        self._rows = []

    def _items(self, x: Any) -> List[Tuple[torch.Tensor, Any, Optional[int]]]:
        if isinstance(x, (list, tuple)):
            return [(as_label_tensor(t), t, None) for t in x]
        t = as_label_tensor(x)
        batched = t.ndim == 5 or (t.ndim == 4 and self.spatial_dims != 3)
        if self.spatial_dims is not None:
            batched = t.ndim == self.spatial_dims + 2
        if batched:
            return [(t[b], x, b) for b in range(t.shape[0])]
        return [(t, x, None)]

    def update(self, output: Sequence[Any]) -> None:
        """Add the cases of one batch: ``output = (y_pred, y)``."""
        y_pred, y = output[0], output[1]
        preds, gts = self._items(y_pred), self._items(y)
        if len(preds) != len(gts):
            raise ValueError(f"y_pred has {len(preds)} items but y has {len(gts)}")
        for (p, p_src, pi), (g, g_src, gi) in zip(preds, gts):
            sd = p.ndim - 1
            spacing = _spacing_tuple(self.spacing, sd) if self.spacing is not None else None
            if spacing is None:
                spacing = _affine_spacing(g_src, gi, sd) or _affine_spacing(p_src, pi, sd)
            p_lab = _item_labels(p)
            g_lab = _item_labels(g.to(p.device))
            raw = raw_case_metrics(p_lab, g_lab, self.classes, spacing=spacing, method=self.method)
            self._rows.append(raw.to(self._device))

    def _gathered(self) -> torch.Tensor:
        return _gather_rows(self._rows, (len(self.classes), len(RAW_COLUMNS)), self._device)

    def aggregate(self, protocol: Optional[str] = None) -> Dict[str, Any]:
        """Summary of all accumulated cases (:func:`summarize_metrics`) under ``protocol``."""
        return summarize_metrics(
            self._gathered(), self.classes, protocol or self.protocol, class_names=self.class_names
        )

    def get_buffer(self) -> torch.Tensor:
        """The accumulated ``N x K x 6`` raw rows (:data:`RAW_COLUMNS`)."""
        return self._gathered()

    def compute(self) -> Dict[str, float]:
        """Flat dict of floats (see the class docstring) for ``engine.state.metrics``."""
        summary = self.aggregate()

        def f(v: Optional[float]) -> float:
            return float("nan") if v is None else float(v)

        out = {
            "mean_dice": f(summary["mean"]["dice"]),
            "mean_iou": f(summary["mean"]["iou"]),
            "mean_hd95": f(summary["mean"]["hd95"]),
            "mean_hd95_mm": f(summary["mean"]["hd95_mm"]),
            "mean_hd95_voxel": f(summary["mean"]["hd95_voxel"]),
        }
        primary = summary["primary_hd95"]
        for c in self.classes:
            entry = summary["per_class"][str(c)]
            name = self.class_names.get(c, str(c))
            out[f"dice/{name}"] = f(entry["dice"])
            out[f"hd95/{name}"] = f(entry[f"hd95_{primary}"])
        return out


# --------------------------------------------------------------------------------------------
# 2D protocols
# --------------------------------------------------------------------------------------------


def _as_iterable(x: Any) -> Iterable[Any]:
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return [x]
    return x


def _binary_pairs(
    preds: Union[ArrayLike, Iterable[ArrayLike]],
    gts: Union[ArrayLike, Iterable[ArrayLike]],
    threshold: float,
    device: Optional[Union[str, torch.device]],
) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(pred >= threshold, gt >= 0.5)`` boolean masks per image, checking their shapes agree."""
    for p, g in zip(_as_iterable(preds), _as_iterable(gts)):
        pt = as_label_tensor(p, device=device)
        gt = as_label_tensor(g, device=pt.device)
        if pt.shape != gt.shape:
            raise ValueError(f"prediction and ground truth shapes differ: {tuple(pt.shape)} vs {tuple(gt.shape)}")
        yield pt.to(torch.float64) >= threshold, gt.to(torch.float64) >= 0.5


def pooled_confusion_dice_iou(
    preds: Union[ArrayLike, Iterable[ArrayLike]],
    gts: Union[ArrayLike, Iterable[ArrayLike]],
    threshold: float = 0.5,
    device: Optional[Union[str, torch.device]] = None,
) -> Dict[str, float]:
    """ISIC 2017 protocol of EGE-UNet/MALUNet: one confusion matrix over all test pixels.

    Args:
        preds: probabilities or binary masks, one array/tensor per image (or one stacked array);
            a pixel is positive when ``pred >= threshold``.
        gts: ground-truth masks of the same shapes; positive when ``gt >= 0.5`` (0/1 or 0/255).
        threshold: decision threshold of the predictions (0.5 in the papers).
        device: where to count (default: each prediction's device).

    Returns:
        ``{"dice", "miou", "accuracy", "sensitivity", "specificity", "tp", "fp", "fn", "tn"}`` with
        ``dice = 2TP / (2TP + FP + FN)`` and ``miou = TP / (TP + FP + FN)`` (the lesion IoU, which
        these papers call mIoU); a zero denominator gives 0, as in their code.
    """
    tp = fp = fn = tn = 0
    for pb, gb in _binary_pairs(preds, gts, threshold, device):
        tp += int((pb & gb).sum())
        fp += int((pb & ~gb).sum())
        fn += int((~pb & gb).sum())
        tn += int((~pb & ~gb).sum())
    return confusion_summary(tp, fp, fn, tn)


def confusion_summary(tp: Any, fp: Any, fn: Any, tn: Any, empty_score: float = 0.0) -> Dict[str, Any]:
    """Dice, IoU, accuracy, sensitivity and specificity of confusion counts (ints or floats).

    Returns:
        ``{"dice", "miou", "accuracy", "sensitivity", "specificity", "tp", "fp", "fn", "tn"}`` with
        ``dice = 2TP / (2TP + FP + FN)``, ``miou = TP / (TP + FP + FN)``; a zero denominator gives
        0, except that ``dice`` and ``miou`` are ``empty_score`` when prediction and ground truth
        are both empty (1 for PraNet's per-image scores, 0 for the pooled ISIC protocol).
    """

    def ratio(a: Any, b: Any) -> float:
        return float(a) / float(b) if b else 0.0

    both_empty = not (2 * tp + fp + fn)
    return {
        "dice": float(empty_score) if both_empty else ratio(2 * tp, 2 * tp + fp + fn),
        "miou": float(empty_score) if both_empty else ratio(tp, tp + fp + fn),
        "accuracy": ratio(tp + tn, tp + tn + fp + fn),
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def per_image_dice_iou(
    preds: Union[ArrayLike, Iterable[ArrayLike]],
    gts: Union[ArrayLike, Iterable[ArrayLike]],
    threshold: float = 0.5,
    smooth: float = 0.0,
    device: Optional[Union[str, torch.device]] = None,
) -> Dict[str, Any]:
    """Polyp protocol (PraNet): mean over images of per-image Dice and IoU.

    Args:
        preds: probabilities or binary masks, one per image; positive when ``pred >= threshold``.
        gts: ground-truth masks; positive when ``gt >= 0.5`` (0/1 or 0/255).
        threshold: decision threshold (0.5).
        smooth: added to numerator and denominator (Polyp-PVT's test script uses 1; 0 is exact).
            With ``smooth=0`` an image where both masks are empty scores 1 (agreement).
        device: where to count.

    Returns:
        ``{"mean_dice", "mean_iou", "dice": [...], "iou": [...], "num_images", "n_gt_empty"}``.
    """
    dices: List[float] = []
    ious: List[float] = []
    n_gt_empty = 0
    for pb, gb in _binary_pairs(preds, gts, threshold, device):
        inter = float((pb & gb).sum())
        n_p, n_g = float(pb.sum()), float(gb.sum())
        union = n_p + n_g - inter
        n_gt_empty += int(n_g == 0)
        if n_p + n_g == 0 and smooth == 0:
            dices.append(1.0)
            ious.append(1.0)
            continue
        dices.append((2 * inter + smooth) / (n_p + n_g + smooth))
        ious.append((inter + smooth) / (union + smooth))
    n = len(dices)
    return {
        "mean_dice": float(np.mean(dices)) if n else float("nan"),
        "mean_iou": float(np.mean(ious)) if n else float("nan"),
        "dice": dices,
        "iou": ious,
        "num_images": n,
        "n_gt_empty": n_gt_empty,
    }
