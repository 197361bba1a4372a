"""Folder evaluation: score a folder of predicted label maps against ground truth (like nnU-Net's).

Pairing: files are matched by name, without the extension (``.nii.gz``, ``.nii``, and for 2D
tasks ``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.tif``, ``.tiff``). Names that do not match
exactly are matched again after removing one trailing tag among ``_pred``, ``_prediction``,
``_seg``, ``_segmentation``, ``_label``, ``_gt``, ``_mask``, ``_lesion`` (and for images
``_img``, ``_image``, ``_0000``), so ``case0001_pred.nii.gz`` pairs with
``case0001_gt.nii.gz`` and ``ISIC_0000000.png`` with ``ISIC_0000000_segmentation.png``.
A prediction without a label, or a label without a prediction, is a failed case.

Reading and checks (each failure is a :class:`~balr_sam.errors.DataError` whose message starts
with the file's path; the case is reported and the others go on):

- NIfTI through nibabel; trailing singleton axes beyond the third are dropped and a volume with
  a single slice on its third axis is evaluated as a 2D image; 4-D data is refused.
- Values must be finite, integral and non-negative. With ``label_map="identity"`` every value
  must be an id of the label set; other maps (``btcv``, ``totalseg``) convert source numberings,
  unlisted values becoming background (values above the numbering's ``source_max``, where the
  label set defines one, are refused). Raster masks (PNG/JPEG...) of a single-foreground set
  with values above 1 (0/255 masks, JPEG artefacts) are thresholded at > 127.
- Prediction and label must have the same shape; NIfTI pairs also the same affine (spacing,
  origin, direction) within ``atol=1e-3, rtol=1e-4``.
- The spacing for HD95 in mm comes from the label's header (column norms of its affine);
  raster images have unit spacing.

Outputs in ``output_dir`` (an existing result is only replaced with ``overwrite=True``):

- ``per_case.csv``: one row per case and class: case, class_id, class_name, dice, iou,
  hd95_mm, hd95_voxel, pred_empty, gt_empty (values under the protocol; ``nan`` = undefined).
- ``summary.json``: protocol, HD95 conventions and the primary one, per-class means, overall
  means (mean over cases, then over classes), empty-case counts, the cases and the failures.
- ``summary.md``: the papers' table (Method | Mean DSC | Mean HD95 | classes in
  ``report_order``; DSC in %, with a Mean IoU column for 2D tasks), then a per-class table.
- ``overlays/{worst,best}_<rank>_<case>.png``: for the cases with the lowest and highest mean
  Dice (``num_overlays`` of each; a case drawn as worst is not drawn again as best), the axial
  slice (the array axis closest to the patient's z axis) with the most ground-truth foreground;
  panels image / ground truth / prediction (image panel only with ``image_dir``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar, Union

import numpy as np
import torch

from balr_sam.atomic import atomic_write, atomic_write_text
from balr_sam.data.io import check_readable_file, list_folder, load_nifti, nifti_affine
from balr_sam.errors import BalrSamError, DataError, first_line
from balr_sam.labels import LabelSet, get_label_set, remap_labels
from balr_sam.metrics import (
    METRIC_COLUMNS,
    PROTOCOLS,
    apply_protocol,
    raw_case_metrics,
    summarize_metrics,
)

__all__ = [
    "NIFTI_SUFFIXES",
    "RASTER_SUFFIXES",
    "LabelVolume",
    "CaseResult",
    "EvaluationResult",
    "evaluate_pairs",
    "case_key",
    "list_case_files",
    "pair_cases",
    "read_label_file",
    "read_image_file",
    "evaluate_case",
    "evaluate_folder",
    "resolve_device",
    "write_per_case_csv",
    "summary_markdown",
    "save_overlay",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_LABEL_TAGS = ("_prediction", "_pred", "_segmentation", "_seg", "_labels", "_label", "_gt", "_mask", "_lesion")
_IMAGE_TAGS = ("_image", "_img", "_0000")
_RESULT_FILES = ("per_case.csv", "summary.json", "summary.md")


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------


def _split_suffix(name: str) -> Tuple[str, str]:
    low = name.lower()
    for suf in NIFTI_SUFFIXES + RASTER_SUFFIXES:
        if low.endswith(suf):
            return name[: -len(suf)], suf
    return name, ""


def case_key(stem: str, tags: Sequence[str] = _LABEL_TAGS + _IMAGE_TAGS) -> str:
    """``stem`` without one trailing tag such as ``_pred`` or ``_segmentation`` (case-insensitive)."""
    low = stem.lower()
    for tag in tags:
        if low.endswith(tag) and len(stem) > len(tag):
            return stem[: -len(tag)]
    return stem


def list_case_files(folder: Union[str, Path], what: str = "files") -> Dict[str, Path]:
    """Label-map files of ``folder`` by name without extension.

    Raises:
        DataError: the folder is missing, holds no NIfTI/raster file, or holds two files of the
            same name (e.g. ``a.nii`` and ``a.nii.gz``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a directory ({what})")
    found: Dict[str, Path] = {}
    for path in list_folder(folder):
        if path.name.startswith(".") or not path.is_file():
            continue
        stem, suf = _split_suffix(path.name)
        if not suf:
            continue
        if stem in found:
            raise DataError(f"{path}: same case name as {found[stem]}")
        found[stem] = path
    if not found:
        suffixes = ", ".join(NIFTI_SUFFIXES + RASTER_SUFFIXES)
        raise DataError(f"{folder}: no {what} found (expected {suffixes})")
    return found


def _match(
    left: Dict[str, Path], right: Dict[str, Path], tags: Sequence[str]
) -> Tuple[List[Tuple[str, Path, Path]], Dict[str, Path], Dict[str, Path]]:
    """Exact-name matches first, then by :func:`case_key`; returns pairs and the leftovers."""
    pairs = [(s, left[s], right[s]) for s in left if s in right]
    rest_l = {s: p for s, p in left.items() if s not in right}
    rest_r = {s: p for s, p in right.items() if s not in left}
    by_key_r: Dict[str, List[str]] = {}
    for s in rest_r:
        by_key_r.setdefault(case_key(s, tags), []).append(s)
    for s in list(rest_l):
        cands = by_key_r.get(case_key(s, tags), [])
        if len(cands) == 1 and cands[0] in rest_r:
            r = cands[0]
            pairs.append((case_key(s, tags), rest_l.pop(s), rest_r.pop(r)))
    return sorted(pairs), rest_l, rest_r


def pair_cases(
    pred_dir: Union[str, Path], label_dir: Union[str, Path]
) -> Tuple[List[Tuple[str, Path, Path]], List[Tuple[str, str]]]:
    """Pair predictions with labels by name.

    Returns:
        ``(pairs, problems)``: ``pairs`` = sorted ``(case, pred_path, label_path)``; ``problems`` =
        ``(case, message)`` for a prediction without a label or a label without a prediction.
    """
    preds = list_case_files(pred_dir, "prediction files")
    labels = list_case_files(label_dir, "label files")
    pairs, lone_p, lone_l = _match(preds, labels, _LABEL_TAGS)
    problems = [(s, f"{p}: no matching label in {label_dir}") for s, p in lone_p.items()]
    problems += [(s, f"{p}: no matching prediction in {pred_dir}") for s, p in lone_l.items()]
    return pairs, sorted(problems)


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


@dataclass
class LabelVolume:
    """A label map read from disk, in the product's ids.

    Attributes:
        data: ``uint8`` array (2D or 3D), product ids.
        affine: 4x4 voxel-to-world matrix (NIfTI), ``None`` for raster images.
        spacing: voxel size per array axis (unit for raster images).
        axial_axis: array axis closest to the world z axis (last axis if unknown).
        raster: whether it came from a raster image (PNG/JPEG...).
    """

    data: np.ndarray
    affine: Optional[np.ndarray]
    spacing: Tuple[float, ...]
    axial_axis: int
    raster: bool


def _axial_axis(affine: Optional[np.ndarray], ndim: int) -> int:
    if affine is None or ndim < 3:
        return ndim - 1
    rot = np.asarray(affine, dtype=np.float64)[:3, :3]
    norms = np.linalg.norm(rot, axis=0)
    norms[norms == 0] = 1.0
    return int(np.argmax(np.abs(rot[2, :]) / norms))


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
    from PIL import Image

    check_readable_file(path)
    try:
        with Image.open(path) as im:
            if im.mode in ("RGBA", "LA"):  # alpha is dropped, as the 2D readers do
                im = im.convert(im.mode[:-1])
            arr = np.asarray(im)
    except Exception as err:
        raise DataError(f"{path}: cannot read image file ({first_line(err, with_type=True)})") from None
    return arr


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


def read_label_file(path: Union[str, Path], label_set: LabelSet, label_map: str = "identity") -> LabelVolume:
    """Read a prediction or ground-truth label map and convert it to the product's ids.

    Raises:
        DataError: unreadable file, wrong dimensionality, NaN/Inf or non-integer values, or
            (``identity`` map) values that are not ids of ``label_set``.
    """
    path = Path(path)
    _, suf = _split_suffix(path.name)
    if label_map not in label_set.maps:
        raise DataError(
            f"{path}: label set {label_set.name!r} has no map {label_map!r}; known: {sorted(label_set.maps)}"
        )
    if suf in NIFTI_SUFFIXES:
        arr, img = _load_nifti(path)
        arr = _squeeze_nifti(path, arr)
        # refuse a header whose geometry is undefined rather than measure HD95 with a made-up spacing
        affine = nifti_affine(path, img, spatial_dims=arr.ndim)
        raster = False
    elif suf in RASTER_SUFFIXES:
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
        data = arr.astype(np.uint8)
    else:
        source_max = label_set.max_source_value(label_map)
        if arr.size and int(arr.max()) > source_max:
            raise DataError(
                f"{path}: label value {int(arr.max())} is outside the {label_map!r} numbering (max {source_max})"
            )
        data = remap_labels(arr, label_set.name, label_map)
    ndim = data.ndim
    if affine is not None:
        sp = np.linalg.norm(affine[:3, :ndim], axis=0)
        spacing = tuple(float(s) if s > 0 else 1.0 for s in sp)
    else:
        spacing = (1.0,) * ndim
    return LabelVolume(data, affine, spacing, _axial_axis(affine, ndim), raster)


def read_image_file(path: Union[str, Path]) -> np.ndarray:
    """Read an image for the overlays: NIfTI (first channel of 4-D data) or raster (RGB kept)."""
    path = Path(path)
    _, suf = _split_suffix(path.name)
    if suf in NIFTI_SUFFIXES:
        arr, _ = _load_nifti(path)
        arr = np.asarray(arr, dtype=np.float32)
        while arr.ndim > 3:
            arr = arr[..., 0]
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        return arr
    if suf in RASTER_SUFFIXES:
        return _load_raster(path)
    raise DataError(f"{path}: unsupported image file type")


def _check_geometry(pred_path: Path, pred: LabelVolume, label_path: Path, label: LabelVolume) -> None:
    if pred.data.shape != label.data.shape:
        raise DataError(
            f"{pred_path}: shape {pred.data.shape} does not match the label {label_path} shape {label.data.shape}"
        )
    if pred.affine is not None and label.affine is not None:
        if not np.allclose(pred.affine, label.affine, rtol=1e-4, atol=1e-3):
            raise DataError(
                f"{pred_path}: geometry does not match the label {label_path} "
                f"(spacing {tuple(round(s, 4) for s in pred.spacing)} vs {tuple(round(s, 4) for s in label.spacing)}, "
                f"origin {tuple(np.round(pred.affine[:3, 3], 3))} vs {tuple(np.round(label.affine[:3, 3], 3))})"
            )


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------


def resolve_device(device: Optional[Union[str, torch.device]] = None) -> torch.device:
    """``None``/``"auto"`` -> CUDA when available, else CPU; an unavailable CUDA is an error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BalrSamError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return dev


@dataclass
class CaseResult:
    """Metrics of one evaluated case.

    Attributes:
        case: case name.
        pred_path, label_path: the paired files.
        spacing: voxel size from the label header.
        raw: ``K x 6`` :data:`~balr_sam.metrics.RAW_COLUMNS` on the CPU.
        values: ``K x 4`` (dice, iou, hd95_mm, hd95_voxel) under the protocol.
        mean_dice: NaN-aware mean of the classes' Dice (used to rank cases).
        ndim: 2 or 3.
    """

    case: str
    pred_path: Path
    label_path: Path
    spacing: Tuple[float, ...]
    raw: torch.Tensor
    values: np.ndarray
    mean_dice: float
    ndim: int


@dataclass
class EvaluationResult:
    """What :func:`evaluate_folder` produced."""

    summary: Dict[str, Any]
    cases: List[CaseResult]
    failed: List[Tuple[str, str]]
    output_dir: Path
    files: List[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every case was evaluated."""
        return not self.failed


def evaluate_case(
    case: str,
    pred_path: Union[str, Path],
    label_path: Union[str, Path],
    label_set: LabelSet,
    label_map: str = "identity",
    pred_label_map: str = "identity",
    protocol: str = "transunet",
    device: Optional[Union[str, torch.device]] = "cpu",
    method: str = "auto",
) -> Tuple[CaseResult, LabelVolume, LabelVolume]:
    """Read, check and score one pair; returns the result and the two label volumes."""
    pred_path, label_path = Path(pred_path), Path(label_path)
    label = read_label_file(label_path, label_set, label_map)
    pred = read_label_file(pred_path, label_set, pred_label_map)
    _check_geometry(pred_path, pred, label_path, label)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    p = torch.from_numpy(pred.data).to(dev)
    g = torch.from_numpy(label.data).to(dev)
    raw = raw_case_metrics(p, g, label_set.foreground, spacing=label.spacing, method=method).cpu()
    values = apply_protocol(raw, protocol).numpy()
    d = values[:, 0]
    mean_dice = float(np.nanmean(d)) if np.any(~np.isnan(d)) else float("nan")
    result = CaseResult(case, pred_path, label_path, label.spacing, raw, values, mean_dice, label.data.ndim)
    return result, pred, label


def _fmt(v: float) -> str:
    return "nan" if math.isnan(v) else format(float(v), ".10g")


def write_per_case_csv(path: Path, cases: Sequence[CaseResult], label_set: LabelSet) -> None:
    """Write ``per_case.csv`` (one row per case and class, classes in ``report_order``)."""
    order = _class_order(label_set)
    index = {c: k for k, c in enumerate(label_set.foreground)}
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case", "class_id", "class_name", *METRIC_COLUMNS, "pred_empty", "gt_empty"])
    for res in cases:
        for c in order:
            k = index[c]
            writer.writerow(
                [
                    res.case,
                    c,
                    label_set.display_names.get(c, label_set.labels[c]),
                    *(_fmt(res.values[k, j]) for j in range(len(METRIC_COLUMNS))),
                    int(res.raw[k, 4] == 0),
                    int(res.raw[k, 5] == 0),
                ]
            )
    atomic_write_text(path, buf.getvalue())


def _class_order(label_set: LabelSet) -> List[int]:
    order = [c for c in label_set.report_order if c in label_set.foreground]
    return order + [c for c in label_set.foreground if c not in order]


def _md_num(v: Optional[float], scale: float = 1.0) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v * scale:.2f}"


def summary_markdown(summary: Dict[str, Any], label_set: LabelSet, method_name: str) -> str:
    """The papers' table (Method | Mean DSC | [Mean IoU |] Mean HD95 | classes in report order) and details."""
    protocol = summary["protocol"]
    primary = summary["primary_hd95"]
    order = _class_order(label_set)
    names = [label_set.display_names.get(c, label_set.labels[c]) for c in order]
    two_d = summary.get("spatial_dims") == 2
    head = ["Method", "Mean DSC"] + (["Mean IoU"] if two_d else []) + ["Mean HD95"] + names
    mean = summary["mean"]
    row = [method_name, _md_num(mean["dice"], 100)]
    if two_d:
        row.append(_md_num(mean["iou"], 100))
    row.append(_md_num(mean[f"hd95_{primary}"]))
    row += [_md_num(summary["per_class"][str(c)]["dice"], 100) for c in order]
    lines = [
        f"# Evaluation: {method_name}",
        "",
        f"Protocol `{protocol}`; {summary['num_cases']} case(s)"
        + (f", {summary['num_failed']} failed" if summary.get("num_failed") else "")
        + f"; DSC{' and IoU' if two_d else ''} in %, per-class columns are DSC; "
        f"Mean HD95 in {'voxels' if primary == 'voxel' else 'mm'} (`{primary}` convention). "
        "Means over cases per class, then over classes.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
        "| " + " | ".join(row) + " |",
        "",
        "## Per class",
        "",
        "| Class | DSC (%) | IoU (%) | HD95 (mm) | HD95 (voxel) | GT empty | Pred empty | Both empty |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c, name in zip(order, names):
        e = summary["per_class"][str(c)]
        lines.append(
            f"| {name} | {_md_num(e['dice'], 100)} | {_md_num(e['iou'], 100)} | {_md_num(e['hd95_mm'])} | "
            f"{_md_num(e['hd95_voxel'])} | {e['n_gt_empty']} | {e['n_pred_empty']} | {e['n_both_empty']} |"
        )
    if protocol == "transunet":
        lines += [
            "",
            "Empty masks follow TransUNet/SAMed: prediction non-empty and ground truth empty counts as "
            "Dice 1, HD95 0; an empty prediction counts as Dice 0, HD95 0.",
        ]
    else:
        counts = summary["empty_counts"]
        lines += [
            "",
            f"Undefined values are left out of the means and counted: {counts['n_dice_nan']} Dice and "
            f"{counts['n_hd95_nan']} HD95 value(s) are NaN (empty ground truth and/or prediction).",
        ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# overlays
# --------------------------------------------------------------------------------------------


def _slice(arr: np.ndarray, axis: int, index: int) -> np.ndarray:
    return np.take(arr, index, axis=axis)


def _normalise_image(img: np.ndarray) -> np.ndarray:
    if img.ndim == 3 and img.shape[-1] in (3, 4):
        out = img[..., :3].astype(np.float32)
        return out / 255.0 if out.max() > 1.0 else out
    lo, hi = np.percentile(img, [0.5, 99.5]) if img.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((img.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)


def save_overlay(
    path: Union[str, Path],
    label: LabelVolume,
    pred: LabelVolume,
    label_set: LabelSet,
    title: str,
    image: Optional[np.ndarray] = None,
) -> int:
    """Save image / ground truth / prediction panels of the slice with the most foreground.

    For 3D data the slice is taken along ``label.axial_axis`` where the ground truth has the most
    foreground voxels (the prediction's when the ground truth is empty); NIfTI slices are rotated
    by 90 degrees for display. Returns the slice index (0 for 2D).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    gt, pr = label.data, pred.data
    index = 0
    in_plane: Tuple[int, ...] = (0, 1)
    if gt.ndim == 3:
        ax = label.axial_axis
        others = tuple(d for d in range(3) if d != ax)
        in_plane = others
        fg = (gt > 0).sum(axis=others)
        if not fg.any():
            fg = (pr > 0).sum(axis=others)
        index = int(np.argmax(fg))
        gt2, pr2 = _slice(gt, ax, index), _slice(pr, ax, index)
        img2 = _slice(image, ax, index) if image is not None else None
    else:
        gt2, pr2, img2 = gt, pr, image
    row_sp, col_sp = label.spacing[in_plane[0]], label.spacing[in_plane[1]]
    if not label.raster:
        gt2, pr2 = np.rot90(gt2), np.rot90(pr2)
        img2 = np.rot90(img2) if img2 is not None else None
        row_sp, col_sp = col_sp, row_sp
    aspect = row_sp / col_sp  # square millimetres on screen
    base = _normalise_image(img2) if img2 is not None else np.zeros(gt2.shape, dtype=np.float32)

    order = _class_order(label_set)
    palette = [plt.get_cmap("tab10")(i) for i in range(10) if i != 7]  # no grey: it hides in CT
    palette += [plt.get_cmap("tab20")(i) for i in range(1, 20, 2) if i != 15]
    colours = {c: palette[i % len(palette)] for i, c in enumerate(order)}

    def coloured(lab: np.ndarray) -> np.ndarray:
        rgba = np.zeros(lab.shape + (4,), dtype=np.float32)
        for c, col in colours.items():
            m = lab == c
            rgba[m, :3] = col[:3]
            rgba[m, 3] = 0.55 if img2 is not None else 1.0
        return rgba

    panels = ([("Image", None)] if img2 is not None else []) + [("Ground truth", gt2), ("Prediction", pr2)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.8), squeeze=False)
    for axis, (name, lab) in zip(axes[0], panels):
        axis.imshow(
            base, cmap="gray" if base.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest", aspect=aspect
        )
        if lab is not None:
            axis.imshow(coloured(lab), interpolation="nearest", aspect=aspect)
        axis.set_title(name)
        axis.axis("off")
    present = [c for c in order if np.any(gt2 == c) or np.any(pr2 == c)]
    if present:
        handles = [Patch(color=colours[c], label=label_set.display_names.get(c, str(c))) for c in present]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), frameon=False)
    fig.suptitle(title)
    with warnings.catch_warnings():
        # a case name in a script the font lacks (e.g. CJK) draws as boxes; not worth a warning per glyph
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font", category=UserWarning)
        fig.tight_layout(rect=(0, 0.08 if present else 0, 1, 0.95))
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=80), ".png")
    plt.close(fig)
    return index


def _image_index(image_dir: Optional[Union[str, Path]]) -> Dict[str, Path]:
    if image_dir is None:
        return {}
    files = list_case_files(image_dir, "image files")
    index = dict(files)
    for stem, p in files.items():
        index.setdefault(case_key(stem), p)
    return index


def _find_image(index: Dict[str, Path], case: str, label_path: Path) -> Optional[Path]:
    for key in (case, _split_suffix(label_path.name)[0], case_key(case), case_key(_split_suffix(label_path.name)[0])):
        if key in index:
            return index[key]
    return None


# --------------------------------------------------------------------------------------------
# the folder
# --------------------------------------------------------------------------------------------


def _prepare_output(output_dir: Path, overwrite: bool, files: Sequence[str] = _RESULT_FILES) -> None:
    """Create ``output_dir``; refuse an existing result (``files`` or old overlays) unless
    ``overwrite``, then remove the old overlays (a new run may draw other cases)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    existing = [output_dir / f for f in files if (output_dir / f).exists()]
    overlay_dir = output_dir / "overlays"
    old_pngs: List[Path] = []
    if overlay_dir.is_dir():
        old_pngs = sorted(overlay_dir.glob("worst_*.png")) + sorted(overlay_dir.glob("best_*.png"))
    if (existing or old_pngs) and not overwrite:
        first = (existing + old_pngs)[0]
        raise DataError(f"{first}: an evaluation result already exists; pass --overwrite to replace it")
    for p in old_pngs:
        p.unlink()


_Case = TypeVar("_Case")


def _draw_overlays(
    cases: Sequence[_Case],
    num_overlays: int,
    score: Callable[[_Case], float],
    name: Callable[[_Case], str],
    draw: Callable[[str, int, _Case], Any],
    prog: str = "balr-sam evaluate",
) -> List[Any]:
    """Draw the ``num_overlays`` worst and best cases by ``score`` (NaN scores left out, ties by
    ``name``; a case is drawn once) with ``draw(tag, rank, case)``, ``tag`` ``"worst"``/``"best"``
    and ``rank`` from 1. A :class:`DataError` (e.g. a corrupt image) skips that overlay with a line
    on stderr. Returns what ``draw`` returned for each drawn overlay."""
    if num_overlays <= 0:
        return []
    ranked = sorted((c for c in cases if not math.isnan(score(c))), key=lambda c: (score(c), name(c)))
    picks: List[Tuple[str, int, _Case]] = [("worst", i + 1, c) for i, c in enumerate(ranked[:num_overlays])]
    drawn = {name(c) for _, _, c in picks}
    best = [c for c in reversed(ranked) if name(c) not in drawn][:num_overlays]
    picks += [("best", i + 1, c) for i, c in enumerate(best)]
    results = []
    for tag, rank, case in picks:
        try:
            results.append(draw(tag, rank, case))
        except DataError as err:
            print(f"{prog}: overlay of case {name(case)} skipped: {err}", file=sys.stderr)
    return results


def evaluate_folder(
    pred_dir: Union[str, Path],
    label_dir: Union[str, Path],
    output_dir: Union[str, Path],
    image_dir: Optional[Union[str, Path]] = None,
    label_set: str = "synapse",
    label_map: str = "identity",
    pred_label_map: str = "identity",
    protocol: str = "transunet",
    device: Optional[Union[str, torch.device]] = None,
    method_name: Optional[str] = None,
    num_overlays: int = 2,
    overwrite: bool = False,
    distance_method: str = "auto",
    progress: bool = True,
) -> EvaluationResult:
    """Evaluate every prediction in ``pred_dir`` against ``label_dir`` and write the reports.

    Args:
        pred_dir, label_dir: folders of label maps, paired by name (module docstring).
        output_dir: where ``per_case.csv``, ``summary.json``, ``summary.md``, ``overlays/`` go.
        image_dir: optional images for the overlays' first panel.
        label_set: ``synapse``, ``isic2017``, ``polyp`` or ``binary``.
        label_map: numbering of the ground truth (``identity``, ``btcv``, ``totalseg``).
        pred_label_map: numbering of the predictions (default ``identity``).
        protocol: ``transunet`` or ``clinical`` empty-case rules.
        device: where the metrics run (default: CUDA if available).
        method_name: the table's Method cell (default: the prediction folder's name).
        num_overlays: number of worst and of best cases drawn (0: none).
        overwrite: replace an existing result in ``output_dir``.
        distance_method: surface-distance algorithm (:func:`balr_sam.metrics.surface_distances`).
        progress: show a tqdm progress bar.

    Returns:
        an :class:`EvaluationResult`; cases that failed are in ``failed`` (and in the summary).

    Raises:
        DataError: missing or empty folders, no evaluable case at all, an existing result.
    """
    pred_dir, label_dir = Path(pred_dir), Path(label_dir)
    pairs, problems = pair_cases(pred_dir, label_dir)
    return evaluate_pairs(
        pairs, output_dir, image_index=_image_index(image_dir), problems=problems, label_set=label_set,
        label_map=label_map, pred_label_map=pred_label_map, protocol=protocol, device=device,
        method_name=method_name or pred_dir.resolve().name, num_overlays=num_overlays, overwrite=overwrite,
        distance_method=distance_method, progress=progress, sources={"pred_dir": str(pred_dir), "label_dir": str(label_dir)},
    )


def evaluate_pairs(
    pairs: Sequence[Tuple[str, Path, Path]],
    output_dir: Union[str, Path],
    image_index: Optional[Mapping[str, Path]] = None,
    problems: Sequence[Tuple[str, str]] = (),
    label_set: str = "synapse",
    label_map: str = "identity",
    pred_label_map: str = "identity",
    protocol: str = "transunet",
    device: Optional[Union[str, torch.device]] = None,
    method_name: str = "BALR-SAM",
    num_overlays: int = 2,
    overwrite: bool = False,
    distance_method: str = "auto",
    progress: bool = True,
    sources: Optional[Mapping[str, str]] = None,
) -> EvaluationResult:
    """Evaluate explicit ``(case, prediction, label)`` triples and write the reports.

    :func:`evaluate_folder` pairs two folders by name and calls this; the bundle's evaluation
    pairs a datalist's items with their predictions. ``image_index`` maps case names (or label
    stems) to images for the overlays, ``problems`` are ``(case, error)`` found while pairing,
    ``sources`` are recorded in the summary. Other arguments as :func:`evaluate_folder`.
    """
    from tqdm.auto import tqdm

    if protocol not in PROTOCOLS:
        raise BalrSamError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
    lset = get_label_set(label_set)
    for which, m in (("--label-map", label_map), ("--pred-label-map", pred_label_map)):
        if m not in lset.maps:
            raise BalrSamError(f"{which} {m!r} is not a map of label set {label_set!r}; known: {sorted(lset.maps)}")
    dev = resolve_device(device)
    output_dir = Path(output_dir)
    images = dict(image_index or {})
    _prepare_output(output_dir, overwrite)

    failed: List[Tuple[str, str]] = list(problems)
    for case, msg in problems:
        print(f"balr-sam evaluate: case {case} failed: {msg}", file=sys.stderr)
    cases: List[CaseResult] = []
    for case, pred_path, label_path in tqdm(pairs, desc="evaluate", unit="case", disable=not progress):
        try:
            res, _, _ = evaluate_case(
                case, pred_path, label_path, lset, label_map, pred_label_map, protocol, dev, distance_method
            )
        except DataError as err:
            failed.append((case, str(err)))
            print(f"balr-sam evaluate: case {case} failed: {err}", file=sys.stderr)
            continue
        cases.append(res)
    if not cases:
        first = failed[0][1] if failed else "no case"
        where = (sources or {}).get("pred_dir", str(output_dir))
        raise DataError(f"{where}: no case could be evaluated (first problem: {first})")
    dims = sorted({c.ndim for c in cases})

    raw = torch.stack([c.raw for c in cases])
    summary = summarize_metrics(raw, lset.foreground, protocol, class_names=dict(lset.display_names))
    summary.update(
        {
            "label_set": lset.name,
            "label_map": label_map,
            "pred_label_map": pred_label_map,
            "report_order": _class_order(lset),
            "spatial_dims": dims[0] if len(dims) == 1 else dims,
            "spacing_source": "label header (affine column norms); raster images: 1",
            "device": str(dev),
            **dict(sources or {}),
            "num_failed": len(failed),
            "failed": [{"case": c, "error": e} for c, e in sorted(failed)],
            "cases": [
                {
                    "case": c.case,
                    "pred": str(c.pred_path),
                    "label": str(c.label_path),
                    "spacing": list(c.spacing),
                    "mean_dice": None if math.isnan(c.mean_dice) else c.mean_dice,
                }
                for c in cases
            ],
        }
    )
    name = method_name
    summary["method"] = name

    files = [output_dir / f for f in _RESULT_FILES]
    write_per_case_csv(files[0], cases, lset)

    overlays: List[Dict[str, Any]] = []
    if num_overlays > 0:
        overlay_dir = output_dir / "overlays"
        overlay_dir.mkdir(exist_ok=True)

        def draw(tag: str, rank: int, res: CaseResult) -> Dict[str, Any]:
            label = read_label_file(res.label_path, lset, label_map)
            pred = read_label_file(res.pred_path, lset, pred_label_map)
            image = None
            img_path = _find_image(images, res.case, res.label_path)
            if img_path is not None:
                image = read_image_file(img_path)
                spatial = image.shape[: label.data.ndim]
                if spatial != label.data.shape:
                    print(
                        f"balr-sam evaluate: {img_path}: shape {image.shape} does not match the label "
                        f"{res.label_path} {label.data.shape}; overlay without image",
                        file=sys.stderr,
                    )
                    image = None
            out = overlay_dir / f"{tag}_{rank}_{res.case}.png"
            title = f"{res.case} ({tag} {rank}): mean Dice {res.mean_dice:.3f}"
            index = save_overlay(out, label, pred, lset, title, image)
            files.append(out)
            return {"file": str(out.relative_to(output_dir)), "case": res.case, "kind": tag,
                    "rank": rank, "slice": index, "mean_dice": res.mean_dice}

        overlays = _draw_overlays(cases, num_overlays, lambda c: c.mean_dice, lambda c: c.case, draw)
    summary["overlays"] = overlays

    atomic_write_text(files[1], json.dumps(summary, indent=2, allow_nan=False) + "\n")
    atomic_write_text(files[2], summary_markdown(summary, lset, name))
    return EvaluationResult(summary, cases, sorted(failed), output_dir, files)
