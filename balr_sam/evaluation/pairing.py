"""Pairing predictions with ground truth (and with images for the overlays) by file name.

Folders (:func:`pair_cases`, as nnU-Net's evaluation does): files are matched by name without
the extension (the suffixes :mod:`balr_sam.data.io` reads: :data:`~balr_sam.data.io.VOLUME_SUFFIXES`
``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``, ``.mhd`` and :data:`~balr_sam.data.io.IMAGE2D_SUFFIXES`
``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.tif``, ``.tiff``). Names that do not match exactly are
matched again after removing one trailing tag among :data:`LABEL_TAGS` (``_pred``,
``_prediction``, ``_seg``, ``_segmentation``, ``_label``, ``_labels``, ``_gt``, ``_mask``,
``_lesion``; for images also :data:`IMAGE_TAGS` ``_img``, ``_image``, ``_0000``), so
``case0001_pred.nii.gz`` pairs with ``case0001_gt.nii.gz`` and ``ISIC_0000000.png`` with
``ISIC_0000000_segmentation.png``. A prediction without a label, or a label without a
prediction, is a failed case.

Datalists (:func:`find_prediction`): a datalist item's prediction is the first existing
``prediction_dir / name.format(case=case)`` of a list of name patterns (:data:`PRED_NAMES` for
2D masks, :data:`VOLUME_PRED_NAMES` for volumes), ``case`` being the image's name without suffix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from balr_sam.data.io import IMAGE2D_SUFFIXES, VOLUME_SUFFIXES, list_folder, strip_suffix
from balr_sam.errors import DataError
from balr_sam.types import PathLike

__all__ = [
    "CASE_SUFFIXES",
    "IMAGE_TAGS",
    "LABEL_TAGS",
    "PRED_NAMES",
    "VOLUME_PRED_NAMES",
    "Pair",
    "case_key",
    "find_image",
    "find_prediction",
    "index_images",
    "list_case_files",
    "pair_cases",
]

#: File suffixes of the label maps, predictions and images an evaluation reads.
CASE_SUFFIXES: Tuple[str, ...] = VOLUME_SUFFIXES + IMAGE2D_SUFFIXES
#: Trailing tags of label-map names removed when names do not match exactly.
LABEL_TAGS: Tuple[str, ...] = ("_prediction", "_pred", "_segmentation", "_seg", "_labels", "_label", "_gt", "_mask", "_lesion")
#: Trailing tags of image names removed as well when looking up a case's image.
IMAGE_TAGS: Tuple[str, ...] = ("_image", "_img", "_0000")
#: File names tried for a datalist case's prediction, in order (``case``: image name without suffix):
#: ``balr-sam infer``'s and :class:`~balr_sam.evaluation.SaveMask2Dd`'s ``<case>.png``, then the
#: bundle's ``<case>_seg.nii.gz``, then other tools' outputs.
PRED_NAMES: Tuple[str, ...] = ("{case}.png", "{case}_seg.nii.gz", "{case}_seg.png", "{case}.nii.gz")
#: File names tried for a datalist case's predicted volume: ``balr-sam infer``'s, then the bundle's.
VOLUME_PRED_NAMES: Tuple[str, ...] = ("{case}.nii.gz", "{case}_seg.nii.gz")

Pair = Tuple[str, Path, Path]
"""``(case, prediction path, label path)``."""


def case_key(stem: str, tags: Sequence[str] = LABEL_TAGS + IMAGE_TAGS) -> str:
    """``stem`` without one trailing tag such as ``_pred`` or ``_segmentation`` (case-insensitive)."""
    low = stem.lower()
    for tag in tags:
        if low.endswith(tag) and len(stem) > len(tag):
            return stem[: -len(tag)]
    return stem


def list_case_files(folder: PathLike, what: str = "files") -> Dict[str, Path]:
    """Label-map (or image) files of ``folder`` by name without extension.

    Args:
        folder: the folder; hidden files, sub-folders and other suffixes are ignored.
        what: what the files are, for messages (``"prediction files"``...).

    Returns:
        ``{name without suffix: path}``.

    Raises:
        DataError: the folder is missing, holds no file of :data:`CASE_SUFFIXES`, or holds two
            files of the same name (e.g. ``a.nii`` and ``a.nii.gz``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a directory ({what})")
    found: Dict[str, Path] = {}
    for path in list_folder(folder):
        if path.name.startswith(".") or not path.is_file() or not path.name.lower().endswith(CASE_SUFFIXES):
            continue
        stem = strip_suffix(path.name, CASE_SUFFIXES)
        if stem in found:
            raise DataError(f"{path}: same case name as {found[stem]}")
        found[stem] = path
    if not found:
        raise DataError(f"{folder}: no {what} found (expected {', '.join(CASE_SUFFIXES)})")
    return found


def _match(left: Dict[str, Path], right: Dict[str, Path], tags: Sequence[str]) -> Tuple[List[Pair], Dict[str, Path], Dict[str, Path]]:
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


def pair_cases(pred_dir: PathLike, label_dir: PathLike) -> Tuple[List[Pair], List[Tuple[str, str]]]:
    """Pair the predictions of ``pred_dir`` with the labels of ``label_dir`` by name.

    Returns:
        ``(pairs, problems)``: ``pairs`` = sorted ``(case, pred_path, label_path)``; ``problems`` =
        ``(case, message)`` for a prediction without a label or a label without a prediction.

    Raises:
        DataError: a folder is missing or empty (see :func:`list_case_files`).
    """
    preds = list_case_files(pred_dir, "prediction files")
    labels = list_case_files(label_dir, "label files")
    pairs, lone_p, lone_l = _match(preds, labels, LABEL_TAGS)
    problems = [(s, f"{p}: no matching label in {label_dir}") for s, p in lone_p.items()]
    problems += [(s, f"{p}: no matching prediction in {pred_dir}") for s, p in lone_l.items()]
    return pairs, sorted(problems)


def index_images(image_dir: Optional[PathLike]) -> Dict[str, Path]:
    """Images of ``image_dir`` by name without suffix and by :func:`case_key` (``{}`` for ``None``)."""
    if image_dir is None:
        return {}
    files = list_case_files(image_dir, "image files")
    index = dict(files)
    for stem, p in files.items():
        index.setdefault(case_key(stem), p)
    return index


def find_image(index: Mapping[str, Path], case: str, label_path: Path) -> Optional[Path]:
    """The image of ``case`` in an :func:`index_images` result: by case name or label name, with or without tags."""
    stem = strip_suffix(label_path.name, CASE_SUFFIXES)
    for key in (case, stem, case_key(case), case_key(stem)):
        if key in index:
            return index[key]
    return None


def find_prediction(prediction_dir: PathLike, case: str, pred_names: Sequence[str] = PRED_NAMES) -> Optional[Path]:
    """The first existing ``prediction_dir / name.format(case=case)`` of ``pred_names``, else ``None``."""
    for name in pred_names:
        path = Path(prediction_dir) / name.format(case=case)
        if path.is_file():
            return path
    return None
