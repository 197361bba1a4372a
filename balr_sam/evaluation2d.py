"""Evaluation of 2D binary segmentation (ISIC 2017 lesions, polyps) by the papers' protocols.

Two protocols, picked from the label set (``isic2017`` -> ``isic2017``, anything else ->
``pranet``) unless named:

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
    summary is the mean over all images of the split. Per-image values from
    :func:`balr_sam.metrics.per_image_dice_iou` (no smoothing; an image where prediction and
    ground truth are both empty scores 1).

Both threshold predictions at 0.5 after scaling them to [0, 1] (0/255 PNG masks and 8-bit
probability maps are divided by 255; 0/1 label maps are kept); ground-truth masks are binarised
as training reads them (``value > mask_threshold`` of the datalist, 127 by default).

Predictions are paired with the datalist items of a split by the image's name without suffix
(``case``): ``<case>.png`` (written by ``balr-sam infer`` and by the bundle evaluator's
:class:`SaveMask2Dd`), then ``<case>_seg.nii.gz``, ``<case>_seg.png``, ``<case>.nii.gz`` (other
tools' outputs: 2D NIfTI label maps or probability maps). They must have the image's original size
(rows x columns); a missing or mis-sized prediction is a failed case, listed in the summary and
left out of the metrics (never scored silently).

Outputs in ``output_dir`` (an existing result is only replaced with ``overwrite=True``):

- ``summary.json``: protocol, threshold, headline ``dice`` and ``iou`` (fractions), per test set
  (``pranet``) or the pooled confusion counts (``isic2017``), every case with its own Dice/IoU,
  and the failures;
- ``summary.md``: ``| Method | Dice (%) | mIoU (%) |`` for ISIC 2017 (percent, as EGE-UNet
  prints it), ``| Method | Test set | Images | mDice | mIoU |`` for polyps (fractions, as
  PraNet prints them);
- ``per_image.csv``: case, test set, Dice, IoU, predicted and ground-truth foreground pixels;
- ``overlays/{worst,best}_<rank>_<case>.png``: image / ground truth / prediction of the images
  with the lowest and highest Dice.

Also an Ignite metric for the bundle's validation (:class:`BinaryProtocolMetrics`), the MONAI
transform that writes the evaluator's 2D predictions as ``<case>.png`` (:class:`SaveMask2Dd`;
MONAI's ``SaveImaged`` cannot write 2D NIfTI without resampling, and its PNG writer transposes
rows-first arrays), and a command line (``python -m balr_sam.evaluation2d --help``) for folders
of predicted PNG masks.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from monai.transforms import MapTransform

from balr_sam.atomic import atomic_write_text
from balr_sam.data.datalist import load_datalist, read_datalist
from balr_sam.data.io import load_nifti, open_image, read_image_2d, read_mask_2d, strip_suffix
from balr_sam.data.splits import POLYP_TEST_SETS
from balr_sam.errors import DataError, first_line
from balr_sam.evaluation import LabelVolume, _draw_overlays, _prepare_output, save_overlay
from balr_sam.metrics import (
    _gather_rows,
    _IgniteMetric,
    _init_ignite_metric,
    as_label_tensor,
    confusion_summary,
    pooled_confusion_dice_iou,
)
from balr_sam.types import PathLike

__all__ = [
    "PROTOCOLS_2D",
    "PRED_NAMES",
    "protocol_for_label_set",
    "read_prediction_2d",
    "find_prediction",
    "evaluate_2d_predictions",
    "summary_markdown_2d",
    "BinaryProtocolMetrics",
    "SaveMask2Dd",
    "main",
]


#: Protocol name -> what it computes.
PROTOCOLS_2D: Dict[str, str] = {
    "isic2017": "one confusion matrix pooled over all test pixels (EGE-UNet/MALUNet); Dice and mIoU",
    "pranet": "per-image Dice and IoU averaged over the images of each test set (PraNet)",
}
#: File names tried for a case's prediction, in order (``case``: image name without suffix).
PRED_NAMES: Tuple[str, ...] = ("{case}.png", "{case}_seg.nii.gz", "{case}_seg.png", "{case}.nii.gz")
_RESULT_FILES = ("summary.json", "summary.md", "per_image.csv")


def protocol_for_label_set(label_set: Optional[str]) -> str:
    """``"isic2017"`` for the ISIC 2017 label set, ``"pranet"`` (per-image means) for every other one."""
    return "isic2017" if label_set == "isic2017" else "pranet"


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


def read_prediction_2d(path: PathLike) -> np.ndarray:
    """Read a predicted 2D mask as ``H x W`` float32 in [0, 1] (compare with ``>= 0.5``).

    PNG/JPEG/...: converted to grey; 8-bit (16-bit) data with values above 1 is divided by 255
    (65535), so 0/255 masks and probability maps both work. NIfTI: a 2D array (trailing
    singleton axes dropped), label values 0/1 or probabilities, kept as stored.

    Raises:
        DataError: unreadable file, not 2D, NaN/Inf, values outside [0, 1] after scaling.
    """
    p = Path(path)
    name = p.name.lower()
    if name.endswith((".nii.gz", ".nii")):
        img = load_nifti(p)  # DataError for missing, empty, unreadable or corrupt files
        try:
            arr = np.asarray(img.dataobj)
        except Exception as err:  # truncated gzip, short file: nibabel raises many types
            raise DataError(f"{p}: voxel data is unreadable or truncated ({first_line(err, with_type=True)})") from None
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


def find_prediction(prediction_dir: PathLike, case: str, pred_names: Sequence[str] = PRED_NAMES) -> Optional[Path]:
    """The first existing ``prediction_dir / name.format(case=case)`` of ``pred_names``, else ``None``."""
    for name in pred_names:
        path = Path(prediction_dir) / name.format(case=case)
        if path.is_file():
            return path
    return None


# --------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------


def _test_set_order(names: Sequence[str], declared: Sequence[str]) -> List[str]:
    seen: List[str] = []
    for n in list(declared) + list(POLYP_TEST_SETS) + list(names):
        if n in names and n not in seen:
            seen.append(n)
    return seen


def _pct(v: Optional[float]) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100.0 * v:.2f}"


def _frac(v: Optional[float]) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def summary_markdown_2d(summary: Dict[str, Any]) -> str:
    """The Markdown report of :func:`evaluate_2d_predictions`'s summary (see the module docstring)."""
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


def _write_csv(path: Path, cases: Sequence[Dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case", "test_set", "dice", "iou", "pred_pixels", "gt_pixels"])
    for c in cases:
        writer.writerow([c["case"], c["test_set"], f"{c['dice']:.6f}", f"{c['iou']:.6f}", c["pred_pixels"], c["gt_pixels"]])
    atomic_write_text(path, buf.getvalue())


def _overlays(output_dir: Path, cases: Sequence[Dict[str, Any]], label_set: str, num_overlays: int, threshold: float,
              mask_threshold: float) -> None:
    if num_overlays <= 0 or not cases:
        return
    from balr_sam.labels import get_label_set

    try:
        ls = get_label_set(label_set)
    except KeyError:
        ls = get_label_set("binary")
    folder = output_dir / "overlays"
    folder.mkdir(exist_ok=True)

    def draw(tag: str, rank: int, c: Dict[str, Any]) -> None:
        pred = read_prediction_2d(c["prediction"]) >= threshold
        gt = read_mask_2d(c["label"], threshold=mask_threshold)
        gt_vol, pred_vol = (LabelVolume(a.astype(np.uint8), None, (1.0, 1.0), 1, True) for a in (gt, pred))
        save_overlay(folder / f"{tag}_{rank}_{c['case']}.png", gt_vol, pred_vol, ls,
                     f"{c['case']}: Dice {c['dice']:.3f}, IoU {c['iou']:.3f}", image=read_image_2d(c["image"]))

    _draw_overlays(cases, num_overlays, lambda c: c["dice"], lambda c: c["case"], draw, prog="balr-sam evaluation2d")


def _read_pair(pred_path: Path, item: Dict[str, Any], mask_threshold: float) -> Tuple[np.ndarray, np.ndarray]:
    """(prediction in [0, 1], ground truth 0/1) of one datalist item, checked to have the same size."""
    if "label" not in item:
        raise DataError(f"{item['image']}: the datalist item has no ground-truth 'label'")
    gt = read_mask_2d(item["label"], threshold=mask_threshold)
    pred = read_prediction_2d(pred_path)
    if pred.shape != gt.shape:
        raise DataError(f"{pred_path}: prediction is {pred.shape[0]}x{pred.shape[1]} (HxW) but the ground truth "
                        f"{item['label']} is {gt.shape[0]}x{gt.shape[1]}; predictions must have the image's original size")
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
        prediction_dir: folder of predicted masks (see :data:`PRED_NAMES` for the names).
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
    _prepare_output(output_dir, overwrite, files=_RESULT_FILES)

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
        cases.append({
            "case": case, "test_set": str(item.get("test_set") or default_set), "image": item["image"],
            "label": item["label"], "prediction": str(pred_path), "dice": one["dice"], "iou": one["miou"],
            "pred_pixels": counts["tp"] + counts["fp"], "gt_pixels": counts["tp"] + counts["fn"],
            "counts": {k: counts[k] for k in ("tp", "fp", "fn", "tn")},
        })
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
            summary["test_sets"][name] = {"num_images": len(group), **_per_image(group),
                                          "n_gt_empty": sum(c["gt_pixels"] == 0 for c in group)}
    summary["cases"] = cases
    summary["failed"] = failed
    summary["sources"] = {"datalist": str(datalist), "split": split, "pred_dir": str(prediction_dir)}

    _write_csv(output_dir / "per_image.csv", cases)
    _overlays(output_dir, cases, label_set, num_overlays, threshold, mask_threshold)
    atomic_write_text(output_dir / "summary.md", summary_markdown_2d(summary))
    atomic_write_text(output_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


# --------------------------------------------------------------------------------------------
# Ignite metric for the bundle's validation
# --------------------------------------------------------------------------------------------

def _foreground(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """Channel-first item ``C x H x W`` -> boolean foreground: argmax == 1 if C > 1, else ``>= threshold``."""
    if x.shape[0] > 1:
        return x.argmax(dim=0) == 1
    return x[0].to(torch.float64) >= threshold


class BinaryProtocolMetrics(_IgniteMetric):  # type: ignore[misc,valid-type]
    """Dice and IoU of binary 2D segmentation by the ISIC 2017 or PraNet protocol; an Ignite ``Metric``.

    ``update((y_pred, y))`` takes batch-first tensors ``B x C x H x W`` or lists of channel-first
    items ``C x H x W`` (MONAI's decollated batches; images of different sizes). ``C > 1``: the
    foreground is where the argmax is class 1 (logits, probabilities, one-hot); ``C == 1``: a
    label map or probability, foreground ``>= threshold``. The per-image confusion counts (TP,
    FP, FN, TN) are kept on ``device``; ``compute()`` returns ``{"dice", "iou"}`` pooled over
    all pixels (``isic2017``) or averaged over images (``pranet``), the same numbers as
    :func:`balr_sam.metrics.pooled_confusion_dice_iou` / :func:`~balr_sam.metrics.per_image_dice_iou`.
    In distributed runs the counts of all ranks are gathered first.

    Args:
        protocol: ``"isic2017"`` or ``"pranet"``.
        threshold: for single-channel predictions.
        output_transform: Ignite's transform of ``engine.state.output`` into ``(y_pred, y)``.
        device: where the counts live.
    """

    def __init__(self, protocol: str = "pranet", threshold: float = 0.5, output_transform: Callable = lambda x: x,
                 device: Union[str, torch.device] = "cpu") -> None:
        if protocol not in PROTOCOLS_2D:
            raise ValueError(f"unknown 2D protocol {protocol!r}; choose one of {sorted(PROTOCOLS_2D)}")
        self.protocol = protocol
        self.threshold = threshold
        self._counts: List[torch.Tensor] = []
        _init_ignite_metric(self, output_transform, device)

    def reset(self) -> None:
        """Forget every accumulated image."""
        self._counts = []

    @staticmethod
    def _items(x: Any) -> List[torch.Tensor]:
        if isinstance(x, (list, tuple)):
            return [as_label_tensor(t) for t in x]
        t = as_label_tensor(x)
        return [t[b] for b in range(t.shape[0])] if t.ndim == 4 else [t]

    def update(self, output: Sequence[Any]) -> None:
        """Add the images of one batch: ``output = (y_pred, y)``."""
        preds, gts = self._items(output[0]), self._items(output[1])
        if len(preds) != len(gts):
            raise ValueError(f"y_pred has {len(preds)} items but y has {len(gts)}")
        for p, g in zip(preds, gts):
            pb = _foreground(p, self.threshold)
            gb = _foreground(g.to(pb.device), 0.5)
            if pb.shape != gb.shape:
                raise ValueError(f"prediction {tuple(pb.shape)} and ground truth {tuple(gb.shape)} differ in size")
            counts = torch.stack([(pb & gb).sum(), (pb & ~gb).sum(), (~pb & gb).sum(), (~pb & ~gb).sum()])
            self._counts.append(counts.to(torch.float64).to(self._device))

    def compute(self) -> Dict[str, float]:
        """``{"dice", "iou"}`` by the protocol (NaN before any update)."""
        data = _gather_rows(self._counts, (4,), self._device)
        if data.shape[0] == 0:
            return {"dice": float("nan"), "iou": float("nan")}
        if self.protocol == "isic2017":
            s = confusion_summary(*data.sum(dim=0).tolist())
            return {"dice": s["dice"], "iou": s["miou"]}
        # agreement on an empty image scores 1, as per_image_dice_iou
        scores = [confusion_summary(*row, empty_score=1.0) for row in data.tolist()]
        dice, iou = (torch.tensor([s[k] for s in scores], dtype=torch.float64, device=data.device) for k in ("dice", "miou"))
        return {"dice": float(dice.mean()), "iou": float(iou.mean())}


# --------------------------------------------------------------------------------------------
# writing the evaluator's predictions
# --------------------------------------------------------------------------------------------

class SaveMask2Dd(MapTransform):
    """Write 2D label maps as 8-bit PNG masks ``<output_dir>/<case><output_postfix>.png``, atomically.

    The same files as ``balr-sam infer`` writes for 2D images: rows first (the image as
    displayed), label ``k`` stored as ``k * scale`` (0/255 for binary masks). ``case`` is the
    name without suffix of the MetaTensor's ``filename_or_obj`` (the input image, which
    ``Invertd`` copies to the prediction), else of ``data[name_key]``.

    Args:
        keys: keys of ``1 x H x W`` (or ``H x W``) label maps (after ``AsDiscreted(argmax=True)``).
        output_dir: folder, created if needed.
        output_postfix: appended to the case name (default none).
        scale: multiplier of the label values (255: binary masks as 0/255).
        name_key: item key holding the input path when the label map carries no file name.
        allow_missing_keys: skip absent keys.
    """

    def __init__(self, keys: Any, output_dir: PathLike, output_postfix: str = "", scale: int = 255,
                 name_key: str = "image", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.output_postfix = output_postfix
        self.scale = scale
        self.name_key = name_key

    def _case(self, d: Dict[Any, Any], key: Any) -> str:
        for value in (d[key], d.get(self.name_key)):
            meta = getattr(value, "meta", None)
            if meta and meta.get("filename_or_obj"):
                return strip_suffix(Path(str(meta["filename_or_obj"])).name)
            if isinstance(value, (str, Path)):
                return strip_suffix(Path(value).name)
        raise ValueError(f"SaveMask2Dd: no file name for {key!r} (no filename_or_obj and no {self.name_key!r} path)")

    def __call__(self, data: Any) -> Dict[Any, Any]:
        from balr_sam.inference import write_label_png

        d = dict(data)
        for key in self.key_iterator(d):
            arr = d[key].detach().cpu().numpy() if isinstance(d[key], torch.Tensor) else np.asarray(d[key])
            if arr.ndim == 3 and arr.shape[0] == 1:
                arr = arr[0]
            if arr.ndim != 2:
                raise ValueError(f"SaveMask2Dd: {key!r} must be a 1 x H x W label map, got shape {tuple(arr.shape)}")
            write_label_png(self.output_dir / f"{self._case(d, key)}{self.output_postfix}.png", np.rint(arr).astype(np.int64), scale=self.scale)
        return d


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m balr_sam.evaluation2d``: score a folder of predicted masks; 0 when every image was evaluated."""
    parser = argparse.ArgumentParser(
        prog="python -m balr_sam.evaluation2d",
        description="Dice/IoU of predicted 2D masks (balr-sam infer's <case>.png, or the bundle evaluator's "
                    "<case>_seg.nii.gz) against a 2D datalist split, by the ISIC 2017 (pooled confusion matrix) "
                    "or PraNet (per-image mean, per test set) protocol.",
    )
    parser.add_argument("--datalist", required=True, help="prepared 2D datalist JSON")
    parser.add_argument("--split", default="test", help="split to score (default: test)")
    parser.add_argument("--pred", required=True, metavar="DIR", help="folder of predicted masks")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for summary.json/summary.md")
    parser.add_argument("--label-set", default=None, help="task label set: isic2017 or polyp (default: the datalist's)")
    parser.add_argument("--protocol", default=None, choices=sorted(PROTOCOLS_2D), help="default: from the label set")
    parser.add_argument("--name", default="BALR-SAM", help="Method cell of the table")
    parser.add_argument("--overlays", type=int, default=2, metavar="N", help="draw the N worst and N best images (0: none)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing result")
    args = parser.parse_args(argv)
    try:
        summary = evaluate_2d_predictions(args.datalist, args.split, args.pred, args.output, protocol=args.protocol,
                                          label_set=args.label_set, method_name=args.name, num_overlays=args.overlays,
                                          overwrite=args.overwrite)
    except (DataError, ValueError) as err:
        print(f"balr-sam evaluation2d: {err}", file=sys.stderr)
        return 1
    print(summary_markdown_2d(summary), end="")
    return 0 if not summary["failed"] else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
