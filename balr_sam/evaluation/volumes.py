"""Evaluation of label maps (CT volumes, or 2D label images) per case and per class, with reports.

:func:`evaluate_folder` scores a folder of predicted label maps against a folder of ground truth
(paired by name, :mod:`balr_sam.evaluation.pairing`; ``balr-sam evaluate --pred --label``);
:func:`evaluate_pairs` scores explicit ``(case, prediction, label)`` triples (the bundle's
datalist evaluation, :mod:`balr_sam.evaluation.datalist`). Each pair is read and checked
(:mod:`balr_sam.evaluation.reading`), measured on the evaluator's device with
:func:`balr_sam.metrics.raw_case_metrics` and summarised under an empty-case protocol
(``transunet`` or ``clinical``, :mod:`balr_sam.metrics.protocols`). A case that fails is reported
on stderr and in the summary, and the others go on.

Outputs in ``output_dir`` (an existing result is only replaced with ``overwrite=True``):
``per_case.csv`` and ``summary.md`` (:mod:`balr_sam.evaluation.reports`), ``summary.json``
(protocol, HD95 conventions and the primary one, per-class means, overall means over cases then
classes, empty-case counts, the cases, the failures and the overlays drawn) and
``overlays/{worst,best}_<rank>_<case>.png`` (:mod:`balr_sam.evaluation.overlays`).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from balr_sam.atomic import atomic_write_text
from balr_sam.errors import BalrSamError, DataError
from balr_sam.evaluation.overlays import draw_overlays, save_overlay
from balr_sam.evaluation.pairing import Pair, find_image, index_images, pair_cases
from balr_sam.evaluation.reading import LabelVolume, check_pair_geometry, read_image_file, read_label_file
from balr_sam.evaluation.reports import RESULT_FILES, class_order, prepare_output, summary_markdown, write_per_case_csv
from balr_sam.labels import LabelSet, get_label_set
from balr_sam.metrics import PROTOCOLS, apply_protocol, raw_case_metrics, summarize_metrics
from balr_sam.types import PathLike

__all__ = ["CaseResult", "EvaluationResult", "evaluate_case", "evaluate_folder", "evaluate_pairs", "resolve_device"]

DeviceLike = Optional[Union[str, torch.device]]


def resolve_device(device: DeviceLike = None) -> torch.device:
    """``None``/``"auto"`` -> CUDA when available, else CPU.

    Raises:
        BalrSamError: CUDA was asked for but is not available.
    """
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
    """What :func:`evaluate_folder` / :func:`evaluate_pairs` produced."""

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
    pred_path: PathLike,
    label_path: PathLike,
    label_set: LabelSet,
    label_map: str = "identity",
    pred_label_map: str = "identity",
    protocol: str = "transunet",
    device: DeviceLike = "cpu",
    method: str = "auto",
) -> Tuple[CaseResult, LabelVolume, LabelVolume]:
    """Read, check and score one pair.

    Returns:
        ``(result, prediction, label)``: the :class:`CaseResult` and the two label volumes.

    Raises:
        DataError: a file is unreadable or invalid, or the pair's geometries differ.
    """
    pred_path, label_path = Path(pred_path), Path(label_path)
    label = read_label_file(label_path, label_set, label_map)
    pred = read_label_file(pred_path, label_set, pred_label_map)
    check_pair_geometry(pred_path, pred, label_path, label)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    p = torch.from_numpy(pred.data).to(dev)
    g = torch.from_numpy(label.data).to(dev)
    raw = raw_case_metrics(p, g, label_set.foreground, spacing=label.spacing, method=method).cpu()
    values = apply_protocol(raw, protocol).numpy()
    d = values[:, 0]
    mean_dice = float(np.nanmean(d)) if np.any(~np.isnan(d)) else float("nan")
    result = CaseResult(case, pred_path, label_path, label.spacing, raw, values, mean_dice, label.data.ndim)
    return result, pred, label


def evaluate_folder(
    pred_dir: PathLike,
    label_dir: PathLike,
    output_dir: PathLike,
    image_dir: Optional[PathLike] = None,
    label_set: str = "synapse",
    label_map: str = "identity",
    pred_label_map: str = "identity",
    protocol: str = "transunet",
    device: DeviceLike = None,
    method_name: Optional[str] = None,
    num_overlays: int = 2,
    overwrite: bool = False,
    distance_method: str = "auto",
    progress: bool = True,
) -> EvaluationResult:
    """Evaluate every prediction in ``pred_dir`` against ``label_dir`` and write the reports.

    Args:
        pred_dir, label_dir: folders of label maps, paired by name (:func:`~balr_sam.evaluation.pairing.pair_cases`).
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
        pairs,
        output_dir,
        image_index=index_images(image_dir),
        problems=problems,
        label_set=label_set,
        label_map=label_map,
        pred_label_map=pred_label_map,
        protocol=protocol,
        device=device,
        method_name=method_name or pred_dir.resolve().name,
        num_overlays=num_overlays,
        overwrite=overwrite,
        distance_method=distance_method,
        progress=progress,
        sources={"pred_dir": str(pred_dir), "label_dir": str(label_dir)},
    )


def evaluate_pairs(
    pairs: Sequence[Pair],
    output_dir: PathLike,
    image_index: Optional[Mapping[str, Path]] = None,
    problems: Sequence[Tuple[str, str]] = (),
    label_set: str = "synapse",
    label_map: str = "identity",
    pred_label_map: str = "identity",
    protocol: str = "transunet",
    device: DeviceLike = None,
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

    Raises:
        BalrSamError: unknown protocol or label map.
        DataError: no case could be evaluated, or an existing result without ``overwrite``.
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
    prepare_output(output_dir, overwrite)

    failed: List[Tuple[str, str]] = list(problems)
    for case, msg in problems:
        print(f"balr-sam evaluate: case {case} failed: {msg}", file=sys.stderr)
    cases: List[CaseResult] = []
    for case, pred_path, label_path in tqdm(pairs, desc="evaluate", unit="case", disable=not progress):
        try:
            res, _, _ = evaluate_case(case, pred_path, label_path, lset, label_map, pred_label_map, protocol, dev, distance_method)
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
            "report_order": class_order(lset),
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
    summary["method"] = method_name

    files = [output_dir / f for f in RESULT_FILES]
    write_per_case_csv(files[0], cases, lset)

    overlays: List[Dict[str, Any]] = []
    if num_overlays > 0:
        overlay_dir = output_dir / "overlays"
        overlay_dir.mkdir(exist_ok=True)

        def draw(tag: str, rank: int, res: CaseResult) -> Dict[str, Any]:
            label = read_label_file(res.label_path, lset, label_map)
            pred = read_label_file(res.pred_path, lset, pred_label_map)
            image = None
            img_path = find_image(images, res.case, res.label_path)
            if img_path is not None:
                image, image_affine = read_image_file(img_path)
                problem = None
                if image.shape[: label.data.ndim] != label.data.shape:
                    problem = f"shape {image.shape} does not match the label {res.label_path} {label.data.shape}"
                elif (
                    image_affine is not None and label.affine is not None and not np.allclose(image_affine, label.affine, rtol=1e-4, atol=1e-3)
                ):  # the overlay orients the image by the label's affine
                    problem = f"voxel-to-world affine does not match the label {res.label_path}"
                if problem:
                    print(f"balr-sam evaluate: {img_path}: {problem}; overlay without image", file=sys.stderr)
                    image = None
            out = overlay_dir / f"{tag}_{rank}_{res.case}.png"
            title = f"{res.case} ({tag} {rank}): mean Dice {res.mean_dice:.3f}"
            index = save_overlay(out, label, pred, lset, title, image)
            files.append(out)
            return {"file": str(out.relative_to(output_dir)), "case": res.case, "kind": tag, "rank": rank, "slice": index, "mean_dice": res.mean_dice}

        overlays = draw_overlays(cases, num_overlays, lambda c: c.mean_dice, lambda c: c.case, draw)
    summary["overlays"] = overlays

    atomic_write_text(files[1], json.dumps(summary, indent=2, allow_nan=False) + "\n")
    atomic_write_text(files[2], summary_markdown(summary, lset, method_name))
    return EvaluationResult(summary, cases, sorted(failed), output_dir, files)
