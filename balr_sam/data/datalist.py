"""The datalist format: MONAI decathlon-style JSON files listing a dataset's cases and splits.

The converters of :mod:`balr_sam.data.prepare` write them (through :func:`make_datalist`); the
bundle, ``balr-sam prepare --verify`` and the evaluation read them through this module. A
datalist is a JSON file (MONAI's ``load_decathlon_datalist`` reads it too) with these keys:

``name``, ``description``
    what the data is.
``format``
    ``"volume"`` (NIfTI/DICOM CT volumes), ``"transunet"`` (TransUNet's ``.npz`` slices for
    training and ``.npy.h5`` volumes for test) or ``"image2d"`` (RGB images + binary masks);
    :func:`balr_sam.data.pipelines.transforms_for_datalist` picks the pipeline from it.
``tensorImageSize``
    ``"3D"`` or ``"2D"`` (as in the Medical Segmentation Decathlon).
``modality``
    ``"CT"``, ``"dermoscopy"``, ``"endoscopy"``...
``label_set``, ``labels``
    the product's label set name and its ``{"0": "background", "1": "spleen", ...}``.
``label_map``
    the numbering of the label files on disk: ``"btcv"``, ``"totalseg"`` or ``"identity"``.
    Every case whose numbering is not the identity also carries ``"label_map"``, so that
    :class:`~balr_sam.data.transforms.MapLabelsd` converts its label on load.
``mask_threshold``
    (2D only) masks are binarised with ``value > mask_threshold``.
``split``
    how the cases were split: ``"transunet"``, ``"official"`` or ``"fraction"`` (seeded).
``training``, ``validation``, ``test``
    lists of cases: ``{"case_id", "image", "label", ...}``; volume cases carry ``"spacing"``
    (voxel size in mm along the file's three voxel axes, from the header) where the format has
    it; polyp test cases carry ``"test_set"``; TransUNet slices carry ``"slice"``.
``unlabeled``, ``ignored``, ``notes``
    (optional) images without labels (e.g. BTCV's test set), cases left out of every split,
    and human-readable remarks about the preparation.
``failed``
    (optional, ``skip_bad=True``) cases left out because their files failed the checks:
    ``{"case_id", "image" (or "label"), "error"}``, the error a one-line message naming the file.
``numTraining``, ``numValidation``, ``numTest``
    list sizes.

Paths: relative to the datalist file's folder (POSIX separators) when the file lies inside that
folder, as in the Medical Segmentation Decathlon (the datalist then moves with the data);
absolute otherwise (never ``..``). DICOM series are given by their folder. :func:`load_datalist`
and MONAI's ``load_decathlon_datalist`` resolve both (``image`` and ``label`` keys).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence

from balr_sam.atomic import atomic_write_text
from balr_sam.errors import DataError
from balr_sam.labels import get_label_set
from balr_sam.types import PathLike

__all__ = [
    "PATH_KEYS",
    "SPLITS",
    "exclude_failed",
    "load_datalist",
    "make_datalist",
    "read_datalist",
    "relative_path",
    "set_counts",
    "slices_as_volumes",
    "verify_datalist",
    "write_datalist",
]

#: The case lists of a datalist, in order.
SPLITS = ("training", "validation", "test")
#: The case keys holding file paths (relative to the datalist's folder in the file).
PATH_KEYS = ("image", "label")


def relative_path(path: PathLike, base_dir: Optional[PathLike]) -> str:
    """``path`` as a datalist stores it: relative to ``base_dir`` (POSIX) when it lies under it, else absolute.

    Args:
        path: a file or folder.
        base_dir: the datalist's folder, or ``None`` for an absolute path.

    Returns:
        the POSIX path string (never with ``..``).
    """
    p = Path(os.path.abspath(path))
    if base_dir is None:
        return p.as_posix()
    try:
        return p.relative_to(Path(os.path.abspath(base_dir))).as_posix()
    except ValueError:  # not under the datalist's folder
        return p.as_posix()


def set_counts(datalist: dict) -> None:
    """Set ``numTraining``/``numValidation``/``numTest`` from the sizes of the lists (in place)."""
    datalist["numTraining"] = len(datalist.get("training", []))
    datalist["numValidation"] = len(datalist.get("validation", []))
    datalist["numTest"] = len(datalist.get("test", []))


def make_datalist(
    *,
    name: str,
    description: str,
    fmt: str,
    modality: str,
    label_set: str,
    label_map: str,
    split: str,
    cases: Mapping[str, List[dict]],
    output: Optional[PathLike],
    source: PathLike,
    extra: Optional[dict] = None,
    notes: Sequence[str] = (),
    overwrite: bool = False,
) -> dict:
    """Assemble a datalist from a converter's case lists and write it (when ``output`` is given).

    Args:
        name, description, modality, label_set, label_map, split: the keys of the same names.
        fmt: the ``format`` key (``"volume"``, ``"transunet"`` or ``"image2d"``).
        cases: list name -> cases with ``Path`` or string paths: the :data:`SPLITS` (always
            written, possibly empty) and optional lists (``unlabeled``, ``ignored``, ``failed``:
            written when not empty). Cases of every list but ``failed`` get the datalist's
            ``label_map`` when it is not the identity and they have a label.
        output: the datalist file; paths under its folder are stored relative to it. ``None``:
            write nothing, keep absolute paths.
        source: the dataset root (stored absolute as ``source``).
        extra: further top-level keys (``mask_threshold``, ``seed``...).
        notes: remarks about the preparation (``notes``).
        overwrite: replace an existing ``output``.

    Returns:
        the datalist dict, as written.

    Raises:
        DataError: ``output`` exists and ``overwrite`` is false.
    """
    base_dir = Path(os.path.abspath(output)).parent if output is not None else None
    ls = get_label_set(label_set)
    out: dict = {
        "name": name,
        "description": description,
        "format": fmt,
        "tensorImageSize": "2D" if fmt == "image2d" else "3D",
        "modality": modality,
        "label_set": label_set,
        "labels": {str(k): v for k, v in sorted(ls.labels.items())},
        "label_map": label_map,
        "split": split,
        "source": Path(source).resolve().as_posix(),
    }
    out.update(extra or {})
    for key in list(SPLITS) + [k for k in cases if k not in SPLITS]:
        items = []
        for case in cases.get(key, []):
            case = dict(case)
            for k in PATH_KEYS:
                if k in case:
                    case[k] = relative_path(case[k], base_dir)
            if label_map != "identity" and "label" in case and key != "failed":
                case["label_map"] = label_map
            items.append(case)
        if key in SPLITS or items:
            out[key] = items
    set_counts(out)
    if notes:
        out["notes"] = list(notes)
    if output is not None:
        write_datalist(out, output, overwrite=overwrite)
    return out


def write_datalist(datalist: dict, path: PathLike, overwrite: bool = False) -> Path:
    """Write a datalist JSON atomically (temporary file then rename).

    Raises:
        DataError: ``path`` exists and ``overwrite`` is false.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise DataError(f"{path}: already exists; pass overwrite=True (--overwrite) to replace it")
    text = json.dumps(datalist, indent=2) + "\n"
    return atomic_write_text(path, text)


def read_datalist(path: PathLike) -> dict:
    """Read a datalist JSON (no path resolution).

    Raises:
        DataError: missing file, invalid JSON, not an object.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such datalist file")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{p}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise DataError(f"{p}: a datalist must be a JSON object with 'training'/'validation'/'test' lists")
    return data


def load_datalist(path: PathLike, split: str = "training", base_dir: Optional[PathLike] = None) -> List[dict]:
    """Return one split's cases with ``image``/``label`` resolved to absolute paths.

    Relative paths are resolved against ``base_dir`` (default: the datalist's folder), as MONAI's
    ``load_decathlon_datalist`` does. A split the file does not have gives an empty list.

    Args:
        path: the datalist JSON.
        split: ``"training"``, ``"validation"``, ``"test"`` or another list key (``"unlabeled"``).
        base_dir: folder relative paths start from.

    Raises:
        DataError: unreadable datalist, a split that is not a list of objects with an ``image``.
    """
    p = Path(path)
    data = read_datalist(p)
    base = Path(base_dir) if base_dir is not None else p.resolve().parent
    items = data.get(split, [])
    if not isinstance(items, list):
        raise DataError(f"{p}: {split!r} must be a list of cases")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            item = {"image": item}
        if not isinstance(item, dict) or "image" not in item:
            raise DataError(f"{p}: {split}[{i}] must be an object with an 'image' path")
        item = dict(item)
        for k in PATH_KEYS:
            if isinstance(item.get(k), str):
                item[k] = os.path.normpath(str(base / item[k]))
        out.append(item)
    return out


def slices_as_volumes(items: Sequence[dict]) -> List[dict]:
    """One volume item per case from a ``transunet`` datalist's slice items, for whole-volume evaluation.

    TransUNet ships its training cases only as ``.npz`` slices; a case moved to ``validation``
    (``prepare_synapse(..., val_fraction=...)``) is therefore listed slice by slice. Validation
    scores whole volumes (Dice and HD95 per case, as on the ``test_vol_h5`` volumes), so the
    slices of each case are grouped, in slice order, into one item whose ``image`` and ``label``
    are the lists of its slice files (:class:`~balr_sam.data.transforms.LoadArrayd` stacks them).
    Items without a ``slice`` (h5 volumes) are kept as they are; cases keep their first order.

    Args:
        items: a split's cases (from :func:`load_datalist`).

    Returns:
        ``{"case_id", "image": [...], "label": [...], "slices": [...]}`` per sliced case, and the
        other items unchanged.
    """
    out: List[dict] = []
    cases: Dict[str, dict] = {}
    for item in items:
        if "slice" not in item:
            out.append(item)
            continue
        case = cases.get(item["case_id"])
        if case is None:
            case = cases[item["case_id"]] = {"case_id": item["case_id"], "parts": []}
            out.append(case)
        case["parts"].append(item)
    for case in cases.values():
        parts = sorted(case.pop("parts"), key=lambda it: int(it["slice"]))
        case["slices"] = [int(it["slice"]) for it in parts]
        for key in PATH_KEYS:
            if all(key in it for it in parts):
                case[key] = [it[key] for it in parts]
    return out


def verify_datalist(
    path: PathLike,
    splits: Sequence[str] = SPLITS,
    strict_labels: bool = True,
    progress: Optional[Callable[[int, int], None]] = None,
    failures: Optional[List[dict]] = None,
) -> int:
    """Read every case of a datalist completely, as training/inference will, and validate it.

    Volumes: readable, 3D, finite, label on the image's grid, label values within the case's
    label map. TransUNet arrays: readable, right keys and dimensionality, finite, labels valid.
    2D: images and masks readable, same size.

    Args:
        path: the datalist JSON.
        splits: the lists to check.
        strict_labels: reject label values the case's numbering does not define.
        progress: called with ``(done, total)`` after each case.
        failures: when given, a problem does not stop the check: it is appended as
            ``{"split", "index", "case_id", "error"}`` (see :func:`exclude_failed`) and the
            remaining cases are still read.

    Returns:
        number of cases checked.

    Raises:
        DataError: the first problem found (file path first), unless ``failures`` is given.
    """
    from balr_sam.data.transforms import (  # MONAI and torch only when files are read
        AlignToReferenced,
        LoadArrayd,
        LoadImage2Dd,
        LoadMask2Dd,
        LoadVolumed,
        MapLabelsd,
    )

    data = read_datalist(path)
    fmt = data.get("format", "volume")
    label_set = data.get("label_set", "synapse")
    todo = [(s, i, item) for s in splits for i, item in enumerate(load_datalist(path, s))]
    for n, (split, index, item) in enumerate(todo):
        keys = [k for k in PATH_KEYS if k in item]
        if fmt == "volume":
            ops = [
                LoadVolumed(keys=keys),
                AlignToReferenced(keys="label", allow_missing_keys=True),
                MapLabelsd(keys="label", label_set=label_set, strict=strict_labels, allow_missing_keys=True),
            ]
        elif fmt == "transunet":
            ndim = 2 if str(item["image"]).endswith(".npz") else 3
            ops = [
                LoadArrayd(keys=keys, ndim=ndim),
                AlignToReferenced(keys="label", allow_missing_keys=True),
                MapLabelsd(keys="label", label_set=label_set, source="identity", strict=strict_labels, allow_missing_keys=True),
            ]
        elif fmt == "image2d":
            ops = [
                LoadImage2Dd(keys="image"),
                LoadMask2Dd(keys="label", threshold=data.get("mask_threshold", 127), allow_missing_keys=True),
                AlignToReferenced(keys="label", allow_missing_keys=True),
            ]
        else:
            raise DataError(f"{path}: unknown datalist format {fmt!r}")
        d = dict(item)
        try:
            for op in ops:
                d = op(d)
        except DataError as err:
            if failures is None:
                raise
            failures.append({"split": split, "index": index, "case_id": item.get("case_id"), "error": str(err)})
        if progress is not None:
            progress(n + 1, len(todo))
    return len(todo)


def exclude_failed(path: PathLike, failures: Sequence[dict]) -> dict:
    """Move the cases :func:`verify_datalist` found bad from their lists to ``failed`` and rewrite the datalist.

    Args:
        path: the datalist JSON (rewritten atomically).
        failures: ``{"split", "index", "case_id", "error"}`` entries from :func:`verify_datalist`.

    Returns:
        the rewritten datalist (paths as stored).
    """
    data = read_datalist(path)
    drop: Dict[str, Dict[int, str]] = {}  # split -> index -> error (the first one reported)
    for f in failures:
        drop.setdefault(f["split"], {}).setdefault(int(f["index"]), f["error"])
    failed = list(data.get("failed", []))
    for split, errors in drop.items():
        items = data.get(split, [])
        for i in sorted(errors):
            item = items[i] if isinstance(items[i], dict) else {"image": items[i]}
            failed.append({"case_id": item.get("case_id"), "image": item.get("image"), "error": errors[i]})
        data[split] = [item for i, item in enumerate(items) if i not in errors]
    data["failed"] = failed
    set_counts(data)
    write_datalist(data, path, overwrite=True)
    return data
