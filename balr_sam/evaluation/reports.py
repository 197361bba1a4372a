"""The report files of an evaluation: per-case CSV, Markdown tables, and the output folder's rules.

Volumes and label maps (:mod:`balr_sam.evaluation.volumes`, :data:`RESULT_FILES`):

- ``per_case.csv``: one row per case and class: case, class_id, class_name, dice, iou,
  hd95_mm, hd95_voxel, pred_empty, gt_empty (values under the protocol; ``nan`` = undefined);
- ``summary.md``: the papers' table (Method | Mean DSC | Mean HD95 | classes in
  ``report_order``; DSC in %, with a Mean IoU column for 2D tasks), then a per-class table.

2D binary protocols (:mod:`balr_sam.evaluation.images2d`, :data:`RESULT_FILES_2D`):

- ``per_image.csv``: case, test set, Dice, IoU, predicted and ground-truth foreground pixels;
- ``summary.md``: ``| Method | Dice (%) | mIoU (%) |`` for ISIC 2017 (percent, as EGE-UNet
  prints it), ``| Method | Test set | Images | mDice | mIoU |`` for polyps (fractions, as
  PraNet prints them).

Both also write ``summary.json`` and ``overlays/``; an existing result is only replaced when
asked (:func:`prepare_output`). Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

from balr_sam.atomic import atomic_write_text
from balr_sam.errors import DataError
from balr_sam.labels import LabelSet
from balr_sam.metrics import METRIC_COLUMNS

if TYPE_CHECKING:  # pragma: no cover
    from balr_sam.evaluation.volumes import CaseResult

__all__ = [
    "RESULT_FILES",
    "RESULT_FILES_2D",
    "class_order",
    "prepare_output",
    "summary_markdown",
    "summary_markdown_2d",
    "write_per_case_csv",
    "write_per_image_csv",
]

#: Files of a volume / label-map evaluation (besides ``overlays/``).
RESULT_FILES = ("per_case.csv", "summary.json", "summary.md")
#: Files of a 2D protocol evaluation (besides ``overlays/``).
RESULT_FILES_2D = ("summary.json", "summary.md", "per_image.csv")


def prepare_output(output_dir: Path, overwrite: bool, files: Sequence[str] = RESULT_FILES) -> None:
    """Create ``output_dir``; refuse an existing result (``files`` or old overlays) unless
    ``overwrite``, then remove the old overlays (a new run may draw other cases).

    Raises:
        DataError: naming the first existing result file, when ``overwrite`` is false.
    """
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


def class_order(label_set: LabelSet) -> List[int]:
    """Foreground ids in the published tables' column order (``report_order``), then any others."""
    order = [c for c in label_set.report_order if c in label_set.foreground]
    return order + [c for c in label_set.foreground if c not in order]


# --------------------------------------------------------------------------------------------
# volumes and label maps
# --------------------------------------------------------------------------------------------


def _fmt(v: float) -> str:
    return "nan" if math.isnan(v) else format(float(v), ".10g")


def write_per_case_csv(path: Path, cases: Sequence["CaseResult"], label_set: LabelSet) -> None:
    """Write ``per_case.csv`` (one row per case and class, classes in :func:`class_order`)."""
    order = class_order(label_set)
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


def _md_num(v: Optional[float], scale: float = 1.0) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v * scale:.2f}"


def summary_markdown(summary: Dict[str, Any], label_set: LabelSet, method_name: str) -> str:
    """The papers' table (Method | Mean DSC | [Mean IoU |] Mean HD95 | classes in report order) and details."""
    protocol = summary["protocol"]
    primary = summary["primary_hd95"]
    order = class_order(label_set)
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
# 2D binary protocols
# --------------------------------------------------------------------------------------------


def _pct(v: Optional[float]) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100.0 * v:.2f}"


def _frac(v: Optional[float]) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def summary_markdown_2d(summary: Dict[str, Any]) -> str:
    """The Markdown report of :func:`~balr_sam.evaluation.images2d.evaluate_2d_predictions`'s summary."""
    method = summary.get("method", "BALR-SAM")
    lines = [f"# {summary.get('title', 'Evaluation')}: {summary.get('split', '')} split".rstrip(": "), ""]
    if summary["protocol"] == "isic2017":
        conf = summary["confusion"]
        lines += [
            f"Protocol `isic2017` (EGE-UNet/MALUNet): one confusion matrix pooled over all pixels of the "
            f"{summary['num_images']} evaluated images at their original sizes, threshold {summary['threshold']}. "
            "Dice and mIoU (lesion IoU) in %.",
            "",
            "| Method | Dice (%) | mIoU (%) |",
            "|---|---|---|",
            f"| {method} | {_pct(summary['dice'])} | {_pct(summary['iou'])} |",
            "",
            f"Accuracy {_pct(conf['accuracy'])} %, sensitivity {_pct(conf['sensitivity'])} %, "
            f"specificity {_pct(conf['specificity'])} % (TP {conf['tp']}, FP {conf['fp']}, FN {conf['fn']}, TN {conf['tn']}).",
        ]
    else:
        lines += [
            f"Protocol `pranet` (PraNet): Dice and IoU of each image at its original size, threshold "
            f"{summary['threshold']}, averaged over the images of each test set (fractions).",
            "",
            "| Method | Test set | Images | mDice | mIoU |",
            "|---|---|---|---|---|",
        ]
        for name, entry in summary["test_sets"].items():
            lines.append(f"| {method} | {name} | {entry['num_images']} | {_frac(entry['dice'])} | {_frac(entry['iou'])} |")
        if len(summary["test_sets"]) > 1:
            lines.append(f"| {method} | all images | {summary['num_images']} | {_frac(summary['dice'])} | {_frac(summary['iou'])} |")
    if summary["failed"]:
        lines += ["", f"**{len(summary['failed'])} image(s) not evaluated** (left out of the metrics):", ""]
        lines += [f"- {f['case']}: {f['reason']}" for f in summary["failed"]]
    return "\n".join(lines) + "\n"


def write_per_image_csv(path: Path, cases: Sequence[Dict[str, Any]]) -> None:
    """Write ``per_image.csv``: case, test set, Dice, IoU, predicted and ground-truth foreground pixels."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case", "test_set", "dice", "iou", "pred_pixels", "gt_pixels"])
    for c in cases:
        writer.writerow([c["case"], c["test_set"], f"{c['dice']:.6f}", f"{c['iou']:.6f}", c["pred_pixels"], c["gt_pixels"]])
    atomic_write_text(path, buf.getvalue())
