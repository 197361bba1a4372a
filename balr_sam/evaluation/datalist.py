"""Evaluation of a datalist split's predictions: the bundle's report and ``balr-sam evaluate --datalist``.

The bundle's ``evaluate.json`` calls :func:`write_evaluation_report` after its evaluator has
written the predictions (``$balr_sam.evaluation.write_evaluation_report(...)``), and so do
``balr-sam demo`` and ``balr-sam evaluate --datalist``. The datalist's format picks the protocol
family: a 2D datalist (format ``image2d``: ISIC 2017, polyps) is scored by its task's protocol
(:mod:`balr_sam.evaluation.images2d`), any other one per case and class
(:mod:`balr_sam.evaluation.volumes`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from balr_sam.data.datalist import load_datalist, read_datalist
from balr_sam.data.io import strip_suffix
from balr_sam.errors import DataError
from balr_sam.evaluation.images2d import evaluate_2d_predictions
from balr_sam.evaluation.pairing import PRED_NAMES, VOLUME_PRED_NAMES, Pair, find_prediction
from balr_sam.evaluation.volumes import DeviceLike, evaluate_pairs
from balr_sam.metrics import PROTOCOLS_2D
from balr_sam.types import PathLike

__all__ = ["write_evaluation_report"]


def write_evaluation_report(
    datalist: PathLike,
    split: str,
    prediction_dir: PathLike,
    output_dir: PathLike,
    pred_name: Optional[Union[str, Sequence[str]]] = "{case}_seg.nii.gz",
    protocol: Optional[str] = "transunet",
    method_name: str = "BALR-SAM",
    overwrite: bool = True,
    label_set: Optional[str] = None,
    num_overlays: int = 2,
    device: DeviceLike = None,
    distance_method: str = "auto",
    progress: bool = False,
) -> Dict[str, Any]:
    """Per-case CSV, summary JSON/Markdown and overlays for a split's predictions.

    A 2D datalist (format ``image2d``: ISIC 2017, polyps) is scored by its task's protocol
    instead, by :func:`~balr_sam.evaluation.images2d.evaluate_2d_predictions`: ``label_set``
    (the bundle config's; default the datalist's) picks it (``isic2017``: pooled confusion
    matrix, others: PraNet's per-image means per test set); ``protocol`` is used only when it
    names one of those (``transunet``/``clinical`` are CT empty-case rules).

    Each datalist item of ``split`` is paired with ``prediction_dir / pred_name`` where ``case`` is
    the image's name without suffix (``SaveImaged``'s ``<name>_seg.nii.gz``, or ``balr-sam
    infer``'s ``<name>.nii.gz`` with ``pred_name="{case}.nii.gz"``); labels are read in the
    datalist's numbering (its ``label_map``) and label set. Missing predictions are reported as
    failed cases.

    Args:
        datalist: the prepared datalist JSON.
        split: ``"test"``, ``"validation"``...
        prediction_dir: folder of predictions.
        output_dir: folder of the reports.
        pred_name: a prediction's file name pattern, or several tried in order. A single pattern
            is tried before ``{case}.png`` for a 2D datalist. ``None``: the names of
            ``balr-sam infer`` and of the bundle (:data:`~balr_sam.evaluation.pairing.PRED_NAMES`
            for a 2D datalist, :data:`~balr_sam.evaluation.pairing.VOLUME_PRED_NAMES` for others).
        protocol: empty-case rules (``transunet``, ``clinical``) of a volume datalist, or a 2D
            protocol (``isic2017``, ``pranet``) of a 2D one; ``None``: the default of each.
        method_name: the Method cell of the tables.
        overwrite: replace an existing result.
        label_set: a 2D task's label set, which picks its protocol (default: the datalist's).
        num_overlays: number of worst and of best cases drawn (0: none).
        device, distance_method, progress: of the volume evaluation
            (:func:`~balr_sam.evaluation.volumes.evaluate_pairs`).

    Returns:
        the summary dict (also written to ``output_dir/summary.json``).

    Raises:
        DataError: an unreadable datalist, a split mixing label numberings, no evaluable case.
    """
    info = read_datalist(datalist)
    two_d = info.get("format") == "image2d"
    if pred_name is None:
        names: Tuple[str, ...] = PRED_NAMES if two_d else VOLUME_PRED_NAMES
    elif isinstance(pred_name, str):
        names = (pred_name, "{case}.png") if two_d else (pred_name,)
    else:
        names = tuple(pred_name)
    if two_d:
        return evaluate_2d_predictions(
            datalist,
            split,
            prediction_dir,
            output_dir,
            protocol=protocol if protocol in PROTOCOLS_2D else None,
            label_set=label_set,
            pred_names=names,
            method_name=method_name,
            num_overlays=num_overlays,
            overwrite=overwrite,
        )
    items = load_datalist(datalist, split)
    pairs: List[Pair] = []
    problems: List[Tuple[str, str]] = []
    images: Dict[str, Path] = {}
    for item in items:
        case = strip_suffix(Path(item["image"]).name)
        pred = find_prediction(prediction_dir, case, names)
        images[case] = Path(item["image"])
        if pred is not None:
            pairs.append((case, pred, Path(item["label"])))
        else:
            problems.append((case, f"{Path(prediction_dir) / names[0].format(case=case)}: no prediction for {item['image']}"))
    label_maps = {item.get("label_map", info.get("label_map", "identity")) for item in items}
    if len(label_maps) > 1:
        raise DataError(f"{datalist}: split {split!r} mixes label numberings {sorted(label_maps)}")
    result = evaluate_pairs(
        pairs,
        output_dir,
        image_index=images,
        problems=problems,
        label_set=info.get("label_set", "synapse"),
        label_map=label_maps.pop() if label_maps else "identity",
        protocol=protocol or "transunet",
        device=device,
        method_name=method_name,
        num_overlays=num_overlays,
        overwrite=overwrite,
        distance_method=distance_method,
        progress=progress,
        sources={"datalist": str(datalist), "split": split, "pred_dir": str(prediction_dir)},
    )
    return result.summary
