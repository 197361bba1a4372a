"""Evaluation of predicted segmentations against ground truth: pairing, reading, protocols, reports, overlays.

One job, one package (as nnU-Net's ``evaluation``), over the pure metric functions of
:mod:`balr_sam.metrics`:

- :mod:`~balr_sam.evaluation.pairing`: which prediction goes with which label (and image);
- :mod:`~balr_sam.evaluation.reading`: label maps, predictions and images through :mod:`balr_sam.data.io`,
  checked and converted to the product's label ids;
- :mod:`~balr_sam.evaluation.volumes`: per-case, per-class Dice/IoU/HD95 of label maps
  (``balr-sam evaluate --pred --label``), TransUNet or clinical empty-case rules;
- :mod:`~balr_sam.evaluation.images2d`: the 2D binary protocols (ISIC 2017 pooled, PraNet per image);
- :mod:`~balr_sam.evaluation.datalist`: a datalist split's predictions, either kind (the bundle's
  ``evaluate.json``, ``balr-sam evaluate --datalist``, ``balr-sam demo``);
- :mod:`~balr_sam.evaluation.reports`: ``per_case.csv``/``per_image.csv`` and ``summary.md``;
- :mod:`~balr_sam.evaluation.overlays`: pictures of the worst and best cases;
- :mod:`~balr_sam.evaluation.predictions`: the transform that writes the bundle's 2D predictions.
"""

from __future__ import annotations

from balr_sam.evaluation.datalist import write_evaluation_report
from balr_sam.evaluation.images2d import evaluate_2d_predictions, protocol_for_label_set
from balr_sam.evaluation.overlays import OverlaySlice, draw_overlays, overlay_slice, save_overlay
from balr_sam.evaluation.pairing import (
    PRED_NAMES,
    case_key,
    find_image,
    find_prediction,
    index_images,
    list_case_files,
    pair_cases,
)
from balr_sam.evaluation.predictions import SaveMask2Dd
from balr_sam.evaluation.reading import (
    LabelVolume,
    check_pair_geometry,
    read_image_file,
    read_label_file,
    read_prediction_2d,
)
from balr_sam.evaluation.reports import (
    class_order,
    prepare_output,
    summary_markdown,
    summary_markdown_2d,
    write_per_case_csv,
    write_per_image_csv,
)
from balr_sam.evaluation.volumes import (
    CaseResult,
    EvaluationResult,
    evaluate_case,
    evaluate_folder,
    evaluate_pairs,
    resolve_device,
)

__all__ = [
    "PRED_NAMES",
    "CaseResult",
    "EvaluationResult",
    "LabelVolume",
    "OverlaySlice",
    "SaveMask2Dd",
    "case_key",
    "check_pair_geometry",
    "class_order",
    "draw_overlays",
    "evaluate_2d_predictions",
    "evaluate_case",
    "evaluate_folder",
    "evaluate_pairs",
    "find_image",
    "find_prediction",
    "index_images",
    "list_case_files",
    "overlay_slice",
    "pair_cases",
    "prepare_output",
    "protocol_for_label_set",
    "read_image_file",
    "read_label_file",
    "read_prediction_2d",
    "resolve_device",
    "save_overlay",
    "summary_markdown",
    "summary_markdown_2d",
    "write_evaluation_report",
    "write_per_case_csv",
    "write_per_image_csv",
]
