"""Evaluation of 2D binary segmentation (ISIC 2017 lesions, polyps) by the papers' protocols.

Two protocols (:data:`~balr_sam.metrics.PROTOCOLS_2D`), picked from the label set
(``isic2017`` -> ``isic2017``, anything else -> ``pranet``) unless named:

``isic2017`` (EGE-UNet / MALUNet)
    One confusion matrix pooled over **all test pixels** of all images at the images' original
    sizes; ``Dice = 2TP / (2TP + FP + FN)`` and ``mIoU = TP / (TP + FP + FN)`` (the lesion IoU,
    which these papers call mIoU). The confusion counts of each image come from
    :func:`balr_sam.metrics.pooled_confusion_dice_iou` and are summed over the split (images are
    read one at a time: full-size ISIC images do not all fit in memory).
``pranet`` (PraNet, Polyp-PVT)
    Dice and IoU **per image**, averaged over the images of each test set (the datalist items'
    ``"test_set"``: Kvasir, CVC-ClinicDB, CVC-ColonDB, ETIS-LaribPolypDB, CVC-300). Items without
    a ``test_set`` form one set named after the datalist. The headline ``dice``/``iou`` of the
    summary is the mean over all images of the split. Per-image values as
    :func:`balr_sam.metrics.per_image_dice_iou` (no smoothing; an image where prediction and
    ground truth are both empty scores 1).

Both threshold predictions at 0.5 after scaling them to [0, 1] (0/255 PNG masks and 8-bit
probability maps are divided by 255; 0/1 label maps are kept,
:func:`~balr_sam.evaluation.reading.read_prediction_2d`); ground-truth masks are binarised as
training reads them (``value > mask_threshold`` of the datalist, 127 by default).

Predictions are paired with the datalist items of a split by the image's name without suffix
(``case``, :data:`~balr_sam.evaluation.pairing.PRED_NAMES`). They must have the image's
original size (rows x columns); a missing or mis-sized prediction is a failed case, listed in the
summary and left out of the metrics (never scored silently).

Outputs in ``output_dir`` (an existing result is only replaced with ``overwrite=True``):
``summary.json`` (protocol, threshold, headline ``dice`` and ``iou`` (fractions), per test set
(``pranet``) or the pooled confusion counts (``isic2017``), every case with its own Dice/IoU, and
the failures), ``summary.md`` and ``per_image.csv`` (:mod:`balr_sam.evaluation.reports`), and
``overlays/{worst,best}_<rank>_<case>.png`` of the images with the lowest and highest Dice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from balr_sam.atomic import atomic_write_text
from balr_sam.data.datalist import load_datalist, read_datalist
from balr_sam.data.io import read_image_2d, read_mask_2d, strip_suffix
from balr_sam.data.splits import POLYP_TEST_SETS
from balr_sam.errors import DataError
from balr_sam.evaluation.overlays import draw_overlays, save_overlay
from balr_sam.evaluation.pairing import PRED_NAMES, find_prediction
from balr_sam.evaluation.reading import LabelVolume, read_prediction_2d
from balr_sam.evaluation.reports import RESULT_FILES_2D, prepare_output, summary_markdown_2d, write_per_image_csv
from balr_sam.labels import get_label_set
from balr_sam.metrics import PROTOCOLS_2D, confusion_summary, pooled_confusion_dice_iou
from balr_sam.types import PathLike

__all__ = ["evaluate_2d_predictions", "protocol_for_label_set"]


def protocol_for_label_set(label_set: Optional[str]) -> str:
    """``"isic2017"`` for the ISIC 2017 label set, ``"pranet"`` (per-image means) for every other one."""
    return "isic2017" if label_set == "isic2017" else "pranet"


def _test_set_order(names: Sequence[str], declared: Sequence[str]) -> List[str]:
    seen: List[str] = []
    for n in list(declared) + list(POLYP_TEST_SETS) + list(names):
        if n in names and n not in seen:
            seen.append(n)
    return seen


def _read_pair(pred_path: Path, item: Dict[str, Any], mask_threshold: float) -> Tuple[np.ndarray, np.ndarray]:
    """(prediction in [0, 1], ground truth 0/1) of one datalist item, checked to have the same size."""
    if "label" not in item:
        raise DataError(f"{item['image']}: the datalist item has no ground-truth 'label'")
    gt = read_mask_2d(item["label"], threshold=mask_threshold)
    pred = read_prediction_2d(pred_path)
    if pred.shape != gt.shape:
        raise DataError(
            f"{pred_path}: prediction is {pred.shape[0]}x{pred.shape[1]} (HxW) but the ground truth "
            f"{item['label']} is {gt.shape[0]}x{gt.shape[1]}; predictions must have the image's original size"
        )
    return pred, gt


def _pooled(cases: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """The ISIC protocol from per-image confusion counts: summed, then Dice/mIoU (as ``pooled_confusion_dice_iou``)."""
    s = confusion_summary(*(sum(c["counts"][k] for c in cases) for k in ("tp", "fp", "fn", "tn")))
    return {
        "dice": s["dice"],
        "iou": s["miou"],
        "confusion": {k: s[k] for k in ("tp", "fp", "fn", "tn", "accuracy", "sensitivity", "specificity")},
    }


def _per_image(cases: Sequence[Dict[str, Any]]) -> Dict[str, float]:
    """The PraNet protocol: mean of the images' Dice and IoU (as ``per_image_dice_iou``)."""
    return {"dice": float(np.mean([c["dice"] for c in cases])), "iou": float(np.mean([c["iou"] for c in cases]))}


def _draw_overlays_2d(output_dir: Path, cases: Sequence[Dict[str, Any]], label_set: str, num_overlays: int, threshold: float, mask_threshold: float) -> None:
    """Image / ground truth / prediction of the worst and best images by Dice."""
    if num_overlays <= 0 or not cases:
        return
    try:
        ls = get_label_set(label_set)
    except KeyError:
        ls = get_label_set("binary")
    folder = output_dir / "overlays"
    folder.mkdir(exist_ok=True)

    def draw(tag: str, rank: int, c: Dict[str, Any]) -> None:
        pred = read_prediction_2d(c["prediction"]) >= threshold
        gt = read_mask_2d(c["label"], threshold=mask_threshold)
        gt_vol, pred_vol = (LabelVolume(a.astype(np.uint8), None, (1.0, 1.0), True) for a in (gt, pred))
        save_overlay(
            folder / f"{tag}_{rank}_{c['case']}.png",
            gt_vol,
            pred_vol,
            ls,
            f"{c['case']}: Dice {c['dice']:.3f}, IoU {c['iou']:.3f}",
            image=read_image_2d(c["image"]),
        )

    draw_overlays(cases, num_overlays, lambda c: c["dice"], lambda c: c["case"], draw)


def evaluate_2d_predictions(
    datalist: PathLike,
    split: str,
    prediction_dir: PathLike,
    output_dir: PathLike,
    protocol: Optional[str] = None,
    label_set: Optional[str] = None,
    pred_names: Sequence[str] = PRED_NAMES,
    threshold: float = 0.5,
    method_name: str = "BALR-SAM",
    num_overlays: int = 2,
    overwrite: bool = False,
) -> Dict[str, Any]:
    """Score the predicted masks of a 2D datalist split by the ISIC 2017 or PraNet protocol.

    Args:
        datalist: a prepared ``image2d`` datalist (``balr-sam prepare isic2017|polyp|images2d``).
        split: ``"test"``, ``"validation"``...
        prediction_dir: folder of predicted masks (see :data:`~balr_sam.evaluation.pairing.PRED_NAMES`).
        output_dir: where ``summary.json``, ``summary.md``, ``per_image.csv``, ``overlays/`` go.
        protocol: ``"isic2017"`` or ``"pranet"``; default: :func:`protocol_for_label_set`.
        label_set: the task's label set (default: the datalist's); picks the protocol.
        pred_names: prediction file names tried per case.
        threshold: decision threshold of predictions scaled to [0, 1].
        method_name: the Method cell of the table.
        num_overlays: number of worst and of best images drawn (0: none).
        overwrite: replace an existing result.

    Returns:
        the summary dict (also written to ``output_dir/summary.json``).

    Raises:
        DataError: not a 2D datalist, an empty split, no prediction could be evaluated, an
            existing result without ``overwrite``.
        ValueError: an unknown protocol.
    """
    info = read_datalist(datalist)
    if info.get("format") != "image2d":
        raise DataError(f"{datalist}: a 2D (format 'image2d') datalist is needed, this one is {info.get('format')!r}")
    label_set = label_set or info.get("label_set", "binary")
    protocol = protocol or protocol_for_label_set(label_set)
    if protocol not in PROTOCOLS_2D:
        raise ValueError(f"unknown 2D protocol {protocol!r}; choose one of {sorted(PROTOCOLS_2D)}")
    items = load_datalist(datalist, split)
    if not items:
        raise DataError(f"{datalist}: split {split!r} has no images")
    mask_threshold = float(info.get("mask_threshold", 127))
    default_set = str(info.get("name") or split)
    output_dir = Path(output_dir)
    prepare_output(output_dir, overwrite, files=RESULT_FILES_2D)

    cases: List[Dict[str, Any]] = []
    failed: List[Dict[str, str]] = []
    for item in items:  # one image at a time: full-size ISIC images do not all fit in memory
        case = strip_suffix(Path(item["image"]).name)
        pred_path = find_prediction(prediction_dir, case, pred_names)
        if pred_path is None:
            failed.append({"case": case, "reason": f"{Path(prediction_dir) / pred_names[0].format(case=case)}: no prediction for {item['image']}"})
            continue
        try:
            pred, gt = _read_pair(pred_path, item, mask_threshold)
        except DataError as err:
            failed.append({"case": case, "reason": str(err)})
            continue
        counts = pooled_confusion_dice_iou([pred], [gt], threshold=threshold)
        # per-image scores as per_image_dice_iou (no smoothing): both masks empty scores 1
        one = confusion_summary(*(counts[k] for k in ("tp", "fp", "fn", "tn")), empty_score=1.0)
        cases.append(
            {
                "case": case,
                "test_set": str(item.get("test_set") or default_set),
                "image": item["image"],
                "label": item["label"],
                "prediction": str(pred_path),
                "dice": one["dice"],
                "iou": one["miou"],
                "pred_pixels": counts["tp"] + counts["fp"],
                "gt_pixels": counts["tp"] + counts["fn"],
                "counts": {k: counts[k] for k in ("tp", "fp", "fn", "tn")},
            }
        )
    if not cases:
        reasons = "; ".join(f["reason"] for f in failed[:3])
        raise DataError(f"{prediction_dir}: no prediction of split {split!r} of {datalist} could be evaluated ({reasons})")

    summary: Dict[str, Any] = {
        "title": info.get("name", "2D segmentation"),
        "task": label_set,
        "protocol": protocol,
        "protocol_description": PROTOCOLS_2D[protocol],
        "threshold": threshold,
        "mask_threshold": mask_threshold,
        "method": method_name,
        "split": split,
        "num_images": len(cases),
        "num_failed": len(failed),
    }
    if protocol == "isic2017":
        summary.update(_pooled(cases))
    else:
        summary.update(_per_image(cases))
        summary["test_sets"] = {}
        names = sorted({c["test_set"] for c in cases})
        for name in _test_set_order(names, info.get("test_sets", [])):
            group = [c for c in cases if c["test_set"] == name]
            summary["test_sets"][name] = {"num_images": len(group), **_per_image(group), "n_gt_empty": sum(c["gt_pixels"] == 0 for c in group)}
    summary["cases"] = cases
    summary["failed"] = failed
    summary["sources"] = {"datalist": str(datalist), "split": split, "pred_dir": str(prediction_dir)}

    write_per_image_csv(output_dir / "per_image.csv", cases)
    _draw_overlays_2d(output_dir, cases, label_set, num_overlays, threshold, mask_threshold)
    atomic_write_text(output_dir / "summary.md", summary_markdown_2d(summary))
    atomic_write_text(output_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
