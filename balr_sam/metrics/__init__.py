"""Segmentation metrics of BALR-SAM: pure functions of label maps, computed with torch on their device.

Dice, IoU and HD95 per class and case, and the papers' protocols. Everything runs on the device of
the input tensors (a GPU when the evaluator has one). The reference is ``medpy.metric.binary``
(``dc`` and ``hd95``), which produced the published Synapse numbers (TransUNet, Swin-Unet, SAMed,
H-SAM); the tests check agreement to 1e-6 (Dice) and 1e-3 (HD95).

One module per concept:

- :mod:`~balr_sam.metrics.inputs`: label maps as tensors, spacings, per-class masks;
- :mod:`~balr_sam.metrics.overlap`: Dice, IoU, confusion matrix of two label maps;
- :mod:`~balr_sam.metrics.hd95`: surfaces and nearest-surface distances, HD95 exactly as medpy;
- :mod:`~balr_sam.metrics.protocols`: per-case rows, the ``transunet``/``clinical`` empty-case
  protocols and the means over cases and classes;
- :mod:`~balr_sam.metrics.confusion`: the 2D binary protocols (ISIC 2017 pooled, PraNet per image).

The Ignite metrics that accumulate these during validation are in :mod:`balr_sam.engine.metrics`;
the folder and datalist evaluators that write reports are in :mod:`balr_sam.evaluation`.
"""

from __future__ import annotations

from balr_sam.metrics.confusion import PROTOCOLS_2D, confusion_summary, per_image_dice_iou, pooled_confusion_dice_iou
from balr_sam.metrics.hd95 import DISTANCE_METHODS, hd95, hd95_voxel_and_mm, mask_surface, surface_distances
from balr_sam.metrics.inputs import ArrayLike, SpacingLike, as_label_tensor, as_spacing, class_masks
from balr_sam.metrics.overlap import confusion_counts, dice, iou
from balr_sam.metrics.protocols import (
    HD95_CONVENTIONS,
    METRIC_COLUMNS,
    PRIMARY_HD95,
    PROTOCOLS,
    RAW_COLUMNS,
    apply_protocol,
    compute_case_metrics,
    raw_case_metrics,
    summarize_metrics,
)

__all__ = [
    "DISTANCE_METHODS",
    "HD95_CONVENTIONS",
    "METRIC_COLUMNS",
    "PRIMARY_HD95",
    "PROTOCOLS",
    "PROTOCOLS_2D",
    "RAW_COLUMNS",
    "ArrayLike",
    "SpacingLike",
    "apply_protocol",
    "as_label_tensor",
    "as_spacing",
    "class_masks",
    "compute_case_metrics",
    "confusion_counts",
    "confusion_summary",
    "dice",
    "hd95",
    "hd95_voxel_and_mm",
    "iou",
    "mask_surface",
    "per_image_dice_iou",
    "pooled_confusion_dice_iou",
    "raw_case_metrics",
    "summarize_metrics",
    "surface_distances",
]
