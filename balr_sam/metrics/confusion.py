"""Binary 2D segmentation by the papers' protocols: one pooled confusion matrix, or per-image means.

- ISIC 2017 as in EGE-UNet/MALUNet (:func:`pooled_confusion_dice_iou`): one confusion matrix over
  all test pixels, threshold 0.5, ``Dice = 2TP / (2TP + FP + FN)`` and
  ``mIoU = TP / (TP + FP + FN)`` (the lesion IoU, which these papers call mIoU, as their code
  computes it).
- Polyps as in PraNet (:func:`per_image_dice_iou`): Dice and IoU of each image, averaged over the
  images of a test set.

:func:`confusion_summary` turns confusion counts into these scores, so that an evaluator that
reads one image at a time (full-size ISIC images do not all fit in memory) or an Ignite metric
that accumulates counts gets the same numbers.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch

from balr_sam.metrics.inputs import ArrayLike, as_label_tensor

__all__ = ["PROTOCOLS_2D", "confusion_summary", "per_image_dice_iou", "pooled_confusion_dice_iou"]

PROTOCOLS_2D: Dict[str, str] = {
    "isic2017": "one confusion matrix pooled over all test pixels (EGE-UNet/MALUNet); Dice and mIoU",
    "pranet": "per-image Dice and IoU averaged over the images of each test set (PraNet)",
}
"""2D protocol name -> what it computes."""


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
