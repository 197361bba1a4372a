"""Preparation of MONAI decathlon-style datalists from the datasets' own folder layouts.

A datalist is a JSON file (``load_decathlon_datalist`` reads it) with these keys:

``name``, ``description``
    what the data is.
``format``
    ``"volume"`` (NIfTI/DICOM CT volumes), ``"transunet"`` (TransUNet's ``.npz`` slices for
    training and ``.npy.h5`` volumes for test) or ``"image2d"`` (RGB images + binary masks);
    :func:`balr_sam.data.transforms.transforms_for_datalist` picks the pipeline from it.
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
import re
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union


from balr_sam.atomic import atomic_write_text
from balr_sam.data.io import (
    IMAGE2D_SUFFIXES,
    VOLUME_SUFFIXES,
    check_grid,
    is_dicom_series_dir,
    list_folder,
    npz_header,
    read_image_2d_size,
    read_volume_header,
    strip_suffix,
)
from balr_sam.data.splits import (
    ISIC2017_FOLDERS,
    POLYP_TEST_SETS,
    TRANSUNET_TEST_IDS,
    TRANSUNET_TRAIN_IDS,
    fraction_split,
)
from balr_sam.errors import DataError, first_line
from balr_sam.labels import get_label_set
from balr_sam.types import PathLike

__all__ = [
    "PREPARERS",
    "SPLITS",
    "exclude_failed",
    "load_datalist",
    "prepare_images2d",
    "prepare_isic2017",
    "prepare_nifti",
    "prepare_polyp",
    "prepare_synapse",
    "read_datalist",
    "verify_datalist",
    "write_datalist",
]

#: The case lists of a datalist, in order.
SPLITS = ("training", "validation", "test")
_PATH_KEYS = ("image", "label")


# --------------------------------------------------------------------------------------------
# Datalist files
# --------------------------------------------------------------------------------------------


def _rel(path: PathLike, base_dir: Optional[Path]) -> str:
    p = Path(os.path.abspath(path))
    if base_dir is None:
        return p.as_posix()
    try:
        return p.relative_to(Path(os.path.abspath(base_dir))).as_posix()
    except ValueError:  # not under the datalist's folder
        return p.as_posix()


def _finish(
    *,
    name: str,
    description: str,
    fmt: str,
    modality: str,
    label_set: str,
    label_map: str,
    split: str,
    cases: Dict[str, List[dict]],
    output: Optional[PathLike],
    source: PathLike,
    extra: Optional[dict] = None,
    notes: Sequence[str] = (),
    overwrite: bool = False,
) -> dict:
    """Assemble the datalist dict (paths made relative to ``output``'s folder) and write it."""
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
            for k in _PATH_KEYS:
                if k in case:
                    case[k] = _rel(case[k], base_dir)
            if label_map != "identity" and "label" in case and key != "failed":
                case["label_map"] = label_map
            items.append(case)
        if key in SPLITS or items:
            out[key] = items
    _set_counts(out)
    if notes:
        out["notes"] = list(notes)
    if output is not None:
        write_datalist(out, output, overwrite=overwrite)
    return out


def _set_counts(datalist: dict) -> None:
    """Set ``numTraining``/``numValidation``/``numTest`` from the sizes of the lists."""
    datalist["numTraining"] = len(datalist.get("training", []))
    datalist["numValidation"] = len(datalist.get("validation", []))
    datalist["numTest"] = len(datalist.get("test", []))


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
        for k in _PATH_KEYS:
            if isinstance(item.get(k), str):
                item[k] = os.path.normpath(str(base / item[k]))
        out.append(item)
    return out


def verify_datalist(path: PathLike, splits: Sequence[str] = SPLITS, strict_labels: bool = True,
                    progress: Optional[Callable[[int, int], None]] = None,
                    failures: Optional[List[dict]] = None) -> int:
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
    from balr_sam.data.transforms import (
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
        keys = [k for k in _PATH_KEYS if k in item]
        if fmt == "volume":
            ops = [LoadVolumed(keys=keys), AlignToReferenced(keys="label", allow_missing_keys=True),
                   MapLabelsd(keys="label", label_set=label_set, strict=strict_labels, allow_missing_keys=True)]
        elif fmt == "transunet":
            ndim = 2 if str(item["image"]).endswith(".npz") else 3
            ops = [LoadArrayd(keys=keys, ndim=ndim), AlignToReferenced(keys="label", allow_missing_keys=True),
                   MapLabelsd(keys="label", label_set=label_set, source="identity", strict=strict_labels,
                              allow_missing_keys=True)]
        elif fmt == "image2d":
            ops = [LoadImage2Dd(keys="image"), LoadMask2Dd(keys="label", threshold=data.get("mask_threshold", 127),
                                                           allow_missing_keys=True),
                   AlignToReferenced(keys="label", allow_missing_keys=True)]
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
    _set_counts(data)
    write_datalist(data, path, overwrite=True)
    return data


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


class _Failures:
    """Per-case problems found while preparing: raised at once, or (``skip_bad``) recorded so that
    the case is left out, listed under ``failed``, and the other cases still get prepared."""

    def __init__(self, skip_bad: bool) -> None:
        self.skip_bad = skip_bad
        self.failed: List[dict] = []

    def add(self, case_id: str, err: DataError, image: Optional[Path] = None, label: Optional[Path] = None) -> None:
        """Record ``err`` for ``case_id`` (raise it when not skipping)."""
        if not self.skip_bad:
            raise err
        entry: dict = {"case_id": case_id}
        if image is not None:
            entry["image"] = image
        if label is not None:
            entry["label"] = label
        entry["error"] = str(err)
        self.failed.append(entry)

    def unpaired(self, files: List[Path], what: Callable[[Path], str], case_id: Callable[[Path], str], key: str) -> None:
        """Files without their partner: one error for all (strict), or one failed case each."""
        if not files:
            return
        if not self.skip_bad:
            raise _pair_error(files, what(files[0]))
        for f in files:
            self.add(case_id(f), DataError(f"{f}: {what(f)}"), **{key: f})

    def check_any_left(self, n_cases: int) -> None:
        """Every case failed: nothing to write; the error is the first problem (one line)."""
        if n_cases == 0 and self.failed:
            more = f" (and {len(self.failed) - 1} more failed cases; none left to prepare)" if len(self.failed) > 1 else ""
            raise DataError(f"{self.failed[0]['error']}{more}")

    def finish(self, cases: Dict[str, List[dict]], notes: List[str]) -> None:
        """Add the ``failed`` list and a note to a datalist's cases."""
        if self.failed:
            cases["failed"] = self.failed
            notes.append(f"{len(self.failed)} cases failed the checks and were left out (listed under 'failed')")


def _require_dir(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataError(f"{path}: no such folder ({what})")
    if not path.is_dir():
        raise DataError(f"{path}: not a folder ({what})")
    return path


def _first_existing(candidates: Iterable[Path]) -> Optional[Path]:
    for c in candidates:
        if c.exists():
            return c
    return None


def _pair_error(unpaired: List[Path], what: str) -> DataError:
    more = ""
    if len(unpaired) > 1:
        names = ", ".join(p.name for p in unpaired[1:6]) + (", ..." if len(unpaired) > 6 else "")
        more = f" (and {len(unpaired) - 1} more: {names})"
    return DataError(f"{unpaired[0]}: {what}{more}")


def _list_files(folder: Path, suffixes: Sequence[str], exclude: Callable[[str], bool] = lambda n: False) -> List[Path]:
    return [
        f for f in list_folder(folder)  # already sorted
        if f.is_file() and not f.name.startswith(".") and f.name.lower().endswith(tuple(suffixes)) and not exclude(f.name)
    ]


def _check_volume_pair(image: Path, label: Path) -> Tuple[float, ...]:
    img_hdr = read_volume_header(image)
    lab_hdr = read_volume_header(label)
    check_grid(lab_hdr, img_hdr)
    return tuple(round(float(s), 6) for s in img_hdr.spacing)


def _check_2d_pair(image: Path, mask: Path) -> None:
    size_i = read_image_2d_size(image)
    size_m = read_image_2d_size(mask)
    if size_i != size_m:
        raise DataError(f"{mask}: mask size {size_m[0]}x{size_m[1]} (HxW) does not match image size {size_i[0]}x{size_i[1]} of {image}")


# --------------------------------------------------------------------------------------------
# Synapse
# --------------------------------------------------------------------------------------------

_BTCV_IMG = re.compile(r"^img(\d+)\.nii(\.gz)?$")
_BTCV_LAB = re.compile(r"^label(\d+)\.nii(\.gz)?$")
_NPZ = re.compile(r"^case(\d+)_slice(\d+)\.npz$")
_H5 = re.compile(r"^case(\d+)\.npy\.h5$")


def prepare_synapse(
    src: PathLike,
    output: Optional[PathLike] = None,
    *,
    layout: str = "auto",
    split: str = "auto",
    val_fraction: Optional[float] = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    list_dir: Optional[PathLike] = None,
    overwrite: bool = False,
    skip_bad: bool = False,
) -> dict:
    """Prepare Synapse (BTCV) multi-organ CT, raw or TransUNet-preprocessed.

    Layouts (``layout="auto"`` detects them):

    - ``raw``: ``img/imgXXXX.nii.gz`` + ``label/labelXXXX.nii.gz`` in ``src``, ``src/Training``,
      ``src/RawData/Training`` or ``src/Abdomen/RawData/Training``; labels in BTCV numbering
      (mapped with ``"label_map": "btcv"``). A ``Testing/img`` folder next to ``Training``
      (BTCV's unlabelled test set) is listed under ``unlabeled``, never mixed into a split.
    - ``npz``: TransUNet's ``train_npz/caseXXXX_sliceYYY.npz`` (training slices) and
      ``test_vol_h5/caseXXXX.npy.h5`` (test volumes); ``lists_Synapse/train.txt`` and
      ``test_vol.txt`` (looked for in ``list_dir``, ``src/lists/lists_Synapse``,
      ``src/lists_Synapse``) restrict the cases when present.

    Splits (raw layout): ``"transunet"``: TransUNet's 18 training / 12 test cases (other labelled
    cases are listed under ``ignored``); ``"fraction"``: a seeded random split by
    ``val_fraction`` (default 0.2) and ``test_fraction`` (default 0.2), for other case numbers
    (e.g. synthetic phantoms); ``"auto"``: ``transunet`` when all 30 TransUNet cases are present,
    else ``fraction``. With the TransUNet split, ``val_fraction`` (default 0) moves a seeded
    fraction of the 18 training cases to validation. For ``npz``, ``val_fraction`` moves whole
    training cases (all their slices) to validation.

    Args:
        src: dataset root.
        output: datalist path to write (paths under its folder written relative to it);
            ``None``: return the dict with absolute paths, write nothing.
        layout: ``"auto"``, ``"raw"`` or ``"npz"``.
        split: ``"auto"``, ``"transunet"`` or ``"fraction"``.
        val_fraction, test_fraction, seed: see above.
        list_dir: folder with TransUNet's ``train.txt``/``test_vol.txt``.
        overwrite: replace an existing ``output``.
        skip_bad: leave out the cases whose files fail the checks (listed under ``failed``)
            instead of raising on the first one; splits are computed over all cases first, so
            a bad case does not move good ones to another split.

    Raises:
        DataError: missing/empty folders, unpaired images or labels, unreadable headers,
        image/label shape or geometry mismatch, bad ``.npz``/``.h5`` contents (with
        ``skip_bad``: only when no case is left, or the problem is not one case's).
    """
    root = _require_dir(Path(src), "Synapse dataset root")
    if layout == "auto":
        if (root / "train_npz").is_dir() or (root / "test_vol_h5").is_dir():
            layout = "npz"
        elif _find_btcv_training(root) is not None:
            layout = "raw"
        else:
            raise DataError(
                f"{root}: not a Synapse layout: expected img/ + label/ (raw BTCV, possibly under Training/ or "
                "RawData/Training/) or train_npz/ + test_vol_h5/ (TransUNet)"
            )
    failures = _Failures(skip_bad)
    if layout == "raw":
        return _prepare_synapse_raw(root, output, split, val_fraction, test_fraction, seed, overwrite, failures)
    if layout == "npz":
        return _prepare_synapse_npz(root, output, val_fraction or 0.0, seed, list_dir, overwrite, failures)
    raise ValueError(f"unknown Synapse layout {layout!r}; use 'auto', 'raw' or 'npz'")


def _find_btcv_training(root: Path) -> Optional[Path]:
    for cand in (root, root / "Training", root / "RawData" / "Training", root / "Abdomen" / "RawData" / "Training"):
        if (cand / "img").is_dir():
            return cand
    return None


def _btcv_files(folder: Path, pattern: re.Pattern, what: str) -> Tuple[Dict[int, Path], List[str]]:
    found: Dict[int, Path] = {}
    others: List[str] = []
    for f in list_folder(folder):
        if f.name.startswith("."):
            continue
        m = pattern.match(f.name)
        if not m:
            others.append(f.name)
            continue
        case = int(m.group(1))
        if case in found:
            raise DataError(f"{f}: duplicate {what} for case {case} (also {found[case].name})")
        found[case] = f
    return found, others


def _prepare_synapse_raw(root, output, split, val_fraction, test_fraction, seed, overwrite, failures: _Failures) -> dict:
    train_dir = _find_btcv_training(root)
    if train_dir is None:
        raise DataError(f"{root}: no img/ folder (raw BTCV layout img/imgXXXX.nii.gz + label/labelXXXX.nii.gz)")
    img_dir = train_dir / "img"
    lab_dir = train_dir / "label"
    images, other_imgs = _btcv_files(img_dir, _BTCV_IMG, "image")
    if not images:
        raise DataError(f"{img_dir}: empty folder, no imgXXXX.nii.gz volumes found")
    if not lab_dir.is_dir():
        raise DataError(f"{lab_dir}: no such folder: raw BTCV training images need their label/labelXXXX.nii.gz")
    labels, other_labs = _btcv_files(lab_dir, _BTCV_LAB, "label")
    case_of = {f: f"{c:04d}" for c, f in list(images.items()) + list(labels.items())}
    failures.unpaired([images[c] for c in sorted(images) if c not in labels],
                      lambda f: f"no matching label (expected {lab_dir / f.name.replace('img', 'label', 1)})",
                      case_of.get, "image")
    failures.unpaired([labels[c] for c in sorted(labels) if c not in images],
                      lambda f: f"label without an image (expected {img_dir / f.name.replace('label', 'img', 1)})",
                      case_of.get, "label")
    notes = [f"ignored non-BTCV file {img_dir.name}/{n}" for n in other_imgs]
    notes += [f"ignored non-BTCV file {lab_dir.name}/{n}" for n in other_labs]
    cases: Dict[int, dict] = {}
    for c in sorted(c for c in images if c in labels):
        try:
            spacing = _check_volume_pair(images[c], labels[c])
        except DataError as err:
            failures.add(f"{c:04d}", err, image=images[c])
            continue
        cases[c] = {"case_id": f"{c:04d}", "image": images[c], "label": labels[c], "spacing": list(spacing)}
    failures.check_any_left(len(cases))
    # the split is decided over every image found, failed ones included, so that a bad case
    # neither changes the split kind nor moves good cases from one split to another
    all_ids = sorted(images)
    ids = sorted(cases)
    transunet_ids = set(TRANSUNET_TEST_IDS) | set(TRANSUNET_TRAIN_IDS)
    if split == "auto":
        split = "transunet" if transunet_ids <= set(all_ids) else "fraction"
        notes.append(
            "split 'auto': all 30 TransUNet cases present, TransUNet split used" if split == "transunet"
            else "split 'auto': the case numbers are not BTCV's 30 training cases, seeded fraction split used"
        )
    groups: Dict[str, List[int]]
    ignored: List[dict] = []
    if split == "transunet":
        train_ids = [c for c in ids if c in TRANSUNET_TRAIN_IDS]
        test_ids = [c for c in ids if c in TRANSUNET_TEST_IDS]
        absent = sorted(transunet_ids - set(all_ids))
        if absent:
            notes.append(f"TransUNet cases missing from {img_dir}: {absent}")
        extra = [c for c in ids if c not in transunet_ids]
        if extra:
            notes.append(f"labelled cases outside TransUNet's split, listed under 'ignored': {extra}")
            ignored = [cases[c] for c in extra]
        if not train_ids:
            raise DataError(f"{img_dir}: none of TransUNet's 18 training cases ({list(TRANSUNET_TRAIN_IDS)}) is present")
        vf = val_fraction or 0.0
        all_train = [c for c in all_ids if c in TRANSUNET_TRAIN_IDS]
        inner = fraction_split(all_train, vf, 0.0, seed) if vf > 0 else {"training": all_train, "validation": []}
        groups = {"training": inner["training"], "validation": inner["validation"], "test": test_ids}
    elif split == "fraction":
        groups = fraction_split(all_ids, 0.2 if val_fraction is None else val_fraction, test_fraction, seed)
    else:
        raise ValueError(f"unknown Synapse split {split!r}; use 'auto', 'transunet' or 'fraction'")
    out_cases = {k: [cases[c] for c in v if c in cases] for k, v in groups.items()}
    if ignored:
        out_cases["ignored"] = ignored
    test_dir = _first_existing([train_dir.parent / "Testing" / "img"]) if train_dir != root else None
    if test_dir is not None and test_dir.is_dir():
        unl, _ = _btcv_files(test_dir, _BTCV_IMG, "image")
        if unl:
            out_cases["unlabeled"] = [{"case_id": f"{c:04d}", "image": unl[c]} for c in sorted(unl)]
            notes.append(f"{len(unl)} unlabelled images in {test_dir} listed under 'unlabeled'")
    failures.finish(out_cases, notes)
    return _finish(
        name="Synapse multi-organ CT (BTCV, raw)",
        description="BTCV abdominal CT, labels mapped from BTCV numbering to the 8 Synapse organs",
        fmt="volume", modality="CT", label_set="synapse", label_map="btcv",
        split=split, cases=out_cases, output=output, source=root, notes=notes, overwrite=overwrite,
        extra={"seed": seed} if split == "fraction" or (val_fraction or 0) > 0 else None,
    )


def _read_list(path: Path) -> List[str]:
    names = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            names.append(strip_suffix(Path(line).name, (".npz", ".npy.h5", ".h5")))
    return names


def _select_listed(found: Dict[str, Path], lists: Optional[Path], list_name: str, what: str, suffix: str) -> List[str]:
    """The names to use from ``found`` (name -> file): those in ``lists/list_name`` when that list
    exists (TransUNet's split), else all of them, sorted.

    Raises:
        DataError: the list names files that are not there.
    """
    if lists is None or not (lists / list_name).is_file():
        return sorted(found)
    listed = _read_list(lists / list_name)
    absent = [n for n in listed if n not in found]
    if absent:
        folder = next(iter(found.values())).parent
        raise DataError(f"{lists / list_name}: lists {len(absent)} {what} missing from {folder}, e.g. {absent[0]}{suffix}")
    return listed


def _check_npz_slice(f: Path) -> None:
    """A TransUNet training slice: 2D ``image`` and ``label`` arrays of the same shape (headers only)."""
    header = npz_header(f)
    for key in ("image", "label"):
        if key not in header:
            raise DataError(f"{f}: no array {key!r} (arrays: {sorted(header)})")
        if len(header[key][0]) != 2:
            raise DataError(f"{f}: expected a 2D slice in {key!r}, got shape {header[key][0]}")
    if header["image"][0] != header["label"][0]:
        raise DataError(f"{f}: label shape {header['label'][0]} does not match image shape {header['image'][0]}")


def _check_h5_volume(f: Path) -> bool:
    """A TransUNet test volume: 3D ``image`` (and ``label`` of the same shape); returns whether it has a label."""
    import h5py

    try:
        with h5py.File(str(f), "r") as h5:
            shapes = {k: tuple(h5[k].shape) for k in ("image", "label") if k in h5}
            present = sorted(h5.keys())
    except Exception as err:
        raise DataError(f"{f}: cannot be read as HDF5 ({first_line(err, with_type=True)})") from None
    if "image" not in shapes:
        raise DataError(f"{f}: no dataset 'image' (datasets: {present})")
    if len(shapes["image"]) != 3:
        raise DataError(f"{f}: expected a 3D volume in 'image', got shape {shapes['image']}")
    if "label" in shapes and shapes["label"] != shapes["image"]:
        raise DataError(f"{f}: label shape {shapes['label']} does not match image shape {shapes['image']}")
    return "label" in shapes


def _prepare_synapse_npz(root, output, val_fraction, seed, list_dir, overwrite, failures: _Failures) -> dict:
    train_dir, test_dir = root / "train_npz", root / "test_vol_h5"
    notes: List[str] = []
    if not train_dir.is_dir() and not test_dir.is_dir():
        raise DataError(f"{root}: neither train_npz/ nor test_vol_h5/ found (TransUNet layout)")
    lists = None
    for cand in ([Path(list_dir)] if list_dir else []) + [root / "lists" / "lists_Synapse", root / "lists_Synapse", root / "lists"]:
        if (cand / "train.txt").is_file() or (cand / "test_vol.txt").is_file():
            lists = cand
            break
    if list_dir and lists is None:
        raise DataError(f"{list_dir}: no train.txt or test_vol.txt in the list folder")
    training: List[dict] = []
    if train_dir.is_dir():
        files = {f.name[:-4]: f for f in list_folder(train_dir) if _NPZ.match(f.name)}
        if not files:
            raise DataError(f"{train_dir}: empty folder, no caseXXXX_sliceYYY.npz slices found")
        names = _select_listed(files, lists, "train.txt", "slices", ".npz")
        if len(names) < len(files):
            notes.append(f"{len(files) - len(names)} slices in train_npz not in train.txt: left out")
        for n in names:
            f = files[n]
            m = _NPZ.match(f.name)
            try:
                _check_npz_slice(f)
            except DataError as err:
                failures.add(f"{int(m.group(1)):04d}", err, image=f)
                continue
            training.append({"case_id": f"{int(m.group(1)):04d}", "slice": int(m.group(2)), "image": f, "label": f})
    test: List[dict] = []
    if test_dir.is_dir():
        vols = {f.name[: -len(".npy.h5")]: f for f in list_folder(test_dir) if _H5.match(f.name)}
        if not vols:
            raise DataError(f"{test_dir}: empty folder, no caseXXXX.npy.h5 volumes found")
        names = _select_listed(vols, lists, "test_vol.txt", "volumes", ".npy.h5")
        for n in names:
            f = vols[n]
            case_id = f"{int(_H5.match(f.name).group(1)):04d}"
            try:
                has_label = _check_h5_volume(f)
            except DataError as err:
                failures.add(case_id, err, image=f)
                continue
            entry = {"case_id": case_id, "image": f}
            if has_label:
                entry["label"] = f
            test.append(entry)
    failures.check_any_left(len(training) + len(test))
    validation: List[dict] = []
    if val_fraction > 0 and training:
        # over every case found (failed slices included): a bad slice must not reshuffle the split
        failed_train = {e["case_id"] for e in failures.failed if Path(e["image"]).parent == train_dir}
        case_ids = sorted({e["case_id"] for e in training} | failed_train)
        val_cases = set(fraction_split(case_ids, val_fraction, 0.0, seed)["validation"])
        validation = [e for e in training if e["case_id"] in val_cases]
        training = [e for e in training if e["case_id"] not in val_cases]
    cases = {"training": training, "validation": validation, "test": test}
    failures.finish(cases, notes)
    return _finish(
        name="Synapse multi-organ CT (TransUNet preprocessed)",
        description=("TransUNet's Synapse slices (train_npz) and test volumes (test_vol_h5), "
                     "windowed to [-125, 275] HU and scaled to [0, 1]"),
        fmt="transunet", modality="CT", label_set="synapse", label_map="identity",
        split="transunet", cases=cases,
        output=output, source=root, notes=notes, overwrite=overwrite,
        extra={"seed": seed} if val_fraction > 0 else None,
    )


# --------------------------------------------------------------------------------------------
# 2D datasets
# --------------------------------------------------------------------------------------------


def _pair_2d(
    image_dir: Path,
    mask_dir: Path,
    mask_name: Callable[[str], str],
    *,
    image_suffixes: Sequence[str] = IMAGE2D_SUFFIXES,
    exclude: Callable[[str], bool] = lambda n: False,
    mask_exclude: Callable[[str], bool] = lambda n: False,
    extra: Optional[dict] = None,
    failures: _Failures,
) -> List[dict]:
    """Pair images with masks: the mask of image stem ``s`` has stem ``mask_name(s)`` (any image suffix).

    Cases with a missing, unreadable or differently sized mask go to ``failures`` (which raises
    unless it skips bad cases).
    """
    _require_dir(image_dir, "images")
    _require_dir(mask_dir, "masks")
    images = _list_files(image_dir, image_suffixes, exclude)
    if not images:
        empty = "empty folder, " if not list_folder(image_dir) else ""
        raise DataError(f"{image_dir}: {empty}no images ({', '.join(image_suffixes)}) found")
    masks: Dict[str, Path] = {}
    for m in _list_files(mask_dir, IMAGE2D_SUFFIXES, mask_exclude):
        stem = strip_suffix(m.name)
        if stem in masks:
            raise DataError(f"{m}: two masks with the same name stem (also {masks[stem].name})")
        masks[stem] = m
    stems: Dict[str, Path] = {}
    for f in images:
        stem = strip_suffix(f.name)
        if stem in stems:
            raise DataError(f"{f}: two images with the same name stem (also {stems[stem].name})")
        stems[stem] = f
    failures.unpaired([stems[s] for s in sorted(stems) if mask_name(s) not in masks],
                      lambda f: f"no matching mask {mask_name(strip_suffix(f.name))}.* in {mask_dir}",
                      lambda f: strip_suffix(f.name), "image")
    expected = {mask_name(s) for s in stems}
    failures.unpaired([masks[m] for m in sorted(masks) if m not in expected],
                      lambda f: f"mask without an image in {image_dir}", lambda f: strip_suffix(f.name), "label")
    cases = []
    for s in sorted(s for s in stems if mask_name(s) in masks):
        image, mask = stems[s], masks[mask_name(s)]
        try:
            _check_2d_pair(image, mask)
        except DataError as err:
            failures.add(s, err, image=image)
            continue
        case = {"case_id": s, "image": image, "label": mask}
        case.update(extra or {})
        cases.append(case)
    return cases


def prepare_isic2017(
    src: PathLike,
    output: Optional[PathLike] = None,
    *,
    mask_threshold: float = 127,
    overwrite: bool = False,
    skip_bad: bool = False,
) -> dict:
    """Prepare ISIC 2017 Part 1 (lesion segmentation) with the official splits.

    ``ISIC-2017_{Training,Validation,Test_v2}_Data/ISIC_XXXXXXX.jpg`` with
    ``ISIC-2017_{...}_Part1_GroundTruth/ISIC_XXXXXXX_segmentation.png``; the
    ``*_superpixels.png`` files and the metadata CSV in the data folders are ignored. The
    training folders are required; a missing validation/test pair of folders is noted.
    ``skip_bad=True`` leaves out the cases whose files fail the checks (listed under ``failed``)
    instead of raising on the first one.

    Raises:
        DataError: missing training folders, empty folders, unpaired images or masks, size mismatch.
    """
    root = _require_dir(Path(src), "ISIC 2017 root")
    failures = _Failures(skip_bad)
    cases: Dict[str, List[dict]] = {}
    notes: List[str] = []
    for split, (data_name, gt_name) in ISIC2017_FOLDERS.items():
        data_dir, gt_dir = root / data_name, root / gt_name
        if not data_dir.exists() and not gt_dir.exists() and split != "training":
            notes.append(f"{data_name} and {gt_name} not found: '{split}' is empty")
            cases[split] = []
            continue
        if not data_dir.exists():
            raise DataError(f"{data_dir}: no such folder (ISIC 2017 {split} images)")
        if not gt_dir.exists():
            raise DataError(f"{gt_dir}: no such folder (ISIC 2017 {split} ground truth)")
        cases[split] = _pair_2d(
            data_dir, gt_dir, lambda s: f"{s}_segmentation",
            image_suffixes=(".jpg", ".jpeg", ".png"),
            exclude=lambda n: "_superpixels" in n,
            mask_exclude=lambda n: "_superpixels" in n,
            failures=failures,
        )
    failures.check_any_left(sum(len(v) for v in cases.values()))
    failures.finish(cases, notes)
    return _finish(
        name="ISIC 2017 lesion segmentation",
        description="ISIC 2017 Part 1 dermoscopy images with binary lesion masks, official training/validation/test folders",
        fmt="image2d", modality="dermoscopy", label_set="isic2017", label_map="identity",
        split="official", cases=cases, output=output, source=root, notes=notes, overwrite=overwrite,
        extra={"mask_threshold": mask_threshold},
    )


def _polyp_dirs(folder: Path) -> Tuple[Path, Path]:
    img = _first_existing([folder / "images", folder / "image"])
    msk = _first_existing([folder / "masks", folder / "mask", folder / "GT"])
    if img is None:
        raise DataError(f"{folder}: no images/ (or image/) folder")
    if msk is None:
        raise DataError(f"{folder}: no masks/ (or mask/) folder")
    return img, msk


def prepare_polyp(
    src: PathLike,
    output: Optional[PathLike] = None,
    *,
    val_fraction: float = 0.0,
    seed: int = 0,
    mask_threshold: float = 127,
    overwrite: bool = False,
    skip_bad: bool = False,
) -> dict:
    """Prepare polyp segmentation data in PraNet's layout.

    ``TrainDataset/{images,masks}`` (or ``image``/``mask``) is the training set (Kvasir 900 +
    CVC-ClinicDB 550 in PraNet's release); every folder of ``TestDataset/`` with
    ``images``/``masks`` is a test set, its name in each test case's ``"test_set"`` (PraNet's five
    are :data:`~balr_sam.data.splits.POLYP_TEST_SETS`; missing ones are noted). Masks and images
    pair by file name stem. ``val_fraction`` moves a seeded fraction of training images to
    validation (PraNet uses none). ``skip_bad=True`` leaves out the cases whose files fail the
    checks (listed under ``failed``) instead of raising on the first one.

    Raises:
        DataError: missing/empty folders, unpaired images or masks, size mismatch.
    """
    root = _require_dir(Path(src), "polyp dataset root (PraNet layout)")
    train_root = root / "TrainDataset"
    test_root = root / "TestDataset"
    if not train_root.is_dir() and not test_root.is_dir():
        raise DataError(f"{root}: neither TrainDataset/ nor TestDataset/ found (PraNet layout)")
    failures = _Failures(skip_bad)
    notes: List[str] = []
    training: List[dict] = []
    if train_root.is_dir():
        img_dir, msk_dir = _polyp_dirs(train_root)
        training = _pair_2d(img_dir, msk_dir, lambda s: s, failures=failures)
    else:
        notes.append("TrainDataset/ not found: 'training' is empty")
    failed_train = [f["case_id"] for f in failures.failed if "image" in f]
    test: List[dict] = []
    if test_root.is_dir():
        sets = sorted(p.name for p in list_folder(test_root) if p.is_dir() and not p.name.startswith("."))
        if not sets:
            raise DataError(f"{test_root}: empty folder, no test sets found")
        order = [s for s in POLYP_TEST_SETS if s in sets] + [s for s in sets if s not in POLYP_TEST_SETS]
        for name in order:
            img_dir, msk_dir = _polyp_dirs(test_root / name)
            test += _pair_2d(img_dir, msk_dir, lambda s: s, extra={"test_set": name}, failures=failures)
        missing = [s for s in POLYP_TEST_SETS if s not in sets]
        if missing:
            notes.append(f"PraNet test sets not found: {missing}")
        unusual = [s for s in sets if s not in POLYP_TEST_SETS]
        if unusual:
            notes.append(f"test sets outside PraNet's five included: {unusual}")
    else:
        notes.append("TestDataset/ not found: 'test' is empty")
    failures.check_any_left(len(training) + len(test))
    validation: List[dict] = []
    if val_fraction > 0 and training:
        ids = sorted({c["case_id"] for c in training} | set(failed_train))  # failed ones too: a stable split
        val_ids = set(fraction_split(ids, val_fraction, 0.0, seed)["validation"])
        validation = [c for c in training if c["case_id"] in val_ids]
        training = [c for c in training if c["case_id"] not in val_ids]
    cases = {"training": training, "validation": validation, "test": test}
    failures.finish(cases, notes)
    return _finish(
        name="Polyp segmentation (PraNet protocol)",
        description="Colonoscopy images with binary polyp masks: PraNet's TrainDataset and five test sets",
        fmt="image2d", modality="endoscopy", label_set="polyp", label_map="identity",
        split="official", cases=cases,
        output=output, source=root, notes=notes, overwrite=overwrite,
        extra={"mask_threshold": mask_threshold, "test_sets": [s for s in POLYP_TEST_SETS if any(c.get("test_set") == s for c in test)]
               + sorted({c["test_set"] for c in test} - set(POLYP_TEST_SETS))},
    )


def prepare_images2d(
    src: PathLike,
    output: Optional[PathLike] = None,
    *,
    images: str = "images",
    masks: str = "masks",
    mask_suffix: str = "",
    label_set: str = "binary",
    mask_threshold: float = 127,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
    modality: str = "photograph",
    name: Optional[str] = None,
    overwrite: bool = False,
    skip_bad: bool = False,
) -> dict:
    """Prepare a generic "image folder + mask folder" 2D dataset.

    The mask of ``<images>/<stem>.<ext>`` is ``<masks>/<stem><mask_suffix>.<any image ext>``:
    Kvasir-SEG (``images/x.jpg`` + ``masks/x.jpg``, JPEG masks: threshold 127) and PH2
    (``images/IMD002.png`` + ``masks/IMD002_lesion.png``: ``mask_suffix="_lesion"``) fit.
    Cases are split with a seeded fraction split (``test_fraction=1`` puts everything in test).
    ``skip_bad=True`` leaves out the cases whose files fail the checks (listed under ``failed``)
    instead of raising on the first one; the split is computed over all images first, so a bad
    case does not move good ones to another split.

    Raises:
        DataError: missing/empty folders, unpaired images or masks, size mismatch.
    """
    root = _require_dir(Path(src), "2D dataset root")
    failures = _Failures(skip_bad)
    cases = _pair_2d(root / images, root / masks, lambda s: f"{s}{mask_suffix}", failures=failures)
    failures.check_any_left(len(cases))
    by_id = {c["case_id"]: c for c in cases}
    all_ids = sorted(set(by_id) | {f["case_id"] for f in failures.failed if "image" in f})
    groups = fraction_split(all_ids, val_fraction, test_fraction, seed)
    out = {k: [by_id[i] for i in v if i in by_id] for k, v in groups.items()}
    notes: List[str] = []
    failures.finish(out, notes)
    return _finish(
        name=name or root.name,
        description=f"2D images ({images}/) with binary masks ({masks}/<name>{mask_suffix}.*)",
        fmt="image2d", modality=modality, label_set=label_set, label_map="identity",
        split="fraction", cases=out, notes=notes,
        output=output, source=root, overwrite=overwrite,
        extra={"mask_threshold": mask_threshold, "seed": seed},
    )


# --------------------------------------------------------------------------------------------
# Generic volumes
# --------------------------------------------------------------------------------------------


def _volume_candidates(folder: Path, label_suffix: str = "") -> List[Path]:
    out = []
    for f in list_folder(folder):
        if f.name.startswith("."):
            continue
        if f.is_file() and f.name.lower().endswith(VOLUME_SUFFIXES):
            if label_suffix and strip_suffix(f.name).endswith(label_suffix):
                continue
            out.append(f)
        elif f.is_dir() and is_dicom_series_dir(f):
            out.append(f)
    return out


def _stem(path: Path) -> str:
    """Case id of a volume file (name without suffix) or DICOM folder (its name)."""
    return strip_suffix(path.name) if path.is_file() else path.name


def _find_label(label_dir: Path, stem: str, suffix: str) -> Optional[Path]:
    for ext in VOLUME_SUFFIXES:
        cand = label_dir / f"{stem}{suffix}{ext}"
        if cand.is_file():
            return cand
    return None


def prepare_nifti(
    src: PathLike,
    output: Optional[PathLike] = None,
    *,
    images: Optional[PathLike] = None,
    labels: Optional[PathLike] = None,
    label_suffix: str = "",
    image_names: Sequence[str] = (),
    label_name: Optional[str] = None,
    label_set: str = "synapse",
    label_map: str = "identity",
    modality: str = "CT",
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
    name: Optional[str] = None,
    overwrite: bool = False,
    skip_bad: bool = False,
) -> dict:
    """Prepare any folder of CT volumes (NIfTI/NRRD/MHA files and/or DICOM series folders).

    Two ways to find the cases:

    - **flat** (default): every volume file and every DICOM series folder directly in
      ``images`` (default ``src``) is a case, its id the file name without suffix. With
      ``labels`` (a folder, may be the same as ``images``), the label of ``<stem>.nii.gz`` is
      ``<labels>/<stem><label_suffix>.nii.gz`` (any volume suffix); files ending in
      ``label_suffix`` are labels, never images.
    - **case folders** (``image_names`` given): ``src`` and each of its sub-folders that holds
      one of ``image_names`` (a file such as ``image.nii.gz`` or a DICOM folder such as
      ``series``) is a case, its id the folder name; its label is ``<folder>/<label_name>``.
      The shared ``ct-abdomen-nifti`` (``image.nii.gz`` + ``label_totalseg.nii.gz``) and
      ``ct-abdomen-dicom`` (``series/`` + ``label_totalseg.nii.gz``) samples are case folders.

    Labelled cases are split with a seeded fraction split (``test_fraction=1`` puts all in
    test); unlabelled cases always go to ``test`` (inference only). ``label_map`` names the label
    files' numbering (``"totalseg"`` for TotalSegmentator output, ``"btcv"``...).
    ``skip_bad=True`` leaves out the cases whose files fail the checks (listed under ``failed``)
    instead of raising on the first one; the split is computed over all cases first, so a bad
    case does not move good ones to another split.

    Raises:
        DataError: no volumes, unpaired labels (a labels folder or ``label_name`` was given but a
        case has none, or a label has no image), unreadable headers, shape/geometry mismatch.
    """
    root = _require_dir(Path(src), "volume folder")
    ls = get_label_set(label_set)
    if label_map not in ls.maps:
        raise ValueError(f"label set {label_set!r} has no label map {label_map!r}; known: {sorted(ls.maps)}")
    failures = _Failures(skip_bad)
    found: List[Tuple[str, Path, Optional[Path]]] = []
    all_ids: List[str] = []  # every case found, failed ones included (for a stable split)
    if image_names:
        expects_labels = bool(label_name)
        folders = [root] + [p for p in list_folder(root) if p.is_dir() and not p.name.startswith(".")]
        for folder in folders:
            image = _first_existing(folder / n for n in image_names)
            if image is None:
                continue
            all_ids.append(folder.name)
            if image.is_dir() and not is_dicom_series_dir(image):
                failures.add(folder.name, DataError(f"{image}: folder holds no DICOM files"), image=image)
                continue
            label = None
            if label_name:
                label = folder / label_name
                if not label.exists():
                    failures.add(folder.name, DataError(f"{image}: no matching label {label}"), image=image)
                    continue
            found.append((folder.name, image, label))
        if not all_ids:
            raise DataError(f"{root}: no case folder holds any of {list(image_names)}")
    else:
        img_dir = _require_dir(Path(images) if images else root, "images")
        lab_dir = _require_dir(Path(labels), "labels") if labels else None
        same_dir = lab_dir is not None and lab_dir.resolve() == img_dir.resolve()
        if same_dir and not label_suffix:
            raise DataError(f"{lab_dir}: images and labels in the same folder need a label suffix (e.g. --label-suffix _seg)")
        expects_labels = lab_dir is not None
        vols = _volume_candidates(img_dir, label_suffix if same_dir else "")
        if not vols:
            empty = "empty folder, " if not list_folder(img_dir) else ""
            raise DataError(f"{img_dir}: {empty}no volumes ({', '.join(VOLUME_SUFFIXES)}) or DICOM series folders found")
        stems: Dict[str, Path] = {}
        for v in vols:
            stem = _stem(v)
            if stem in stems:
                raise DataError(f"{v}: two volumes with the same name stem (also {stems[stem].name})")
            stems[stem] = v
        used = set()
        missing: List[Path] = []
        all_ids = list(stems)
        for stem, v in stems.items():
            label = None
            if lab_dir is not None:
                label = _find_label(lab_dir, stem, label_suffix)
                if label is None:
                    missing.append(v)
                    continue
                used.add(label.resolve())
            found.append((stem, v, label))
        failures.unpaired(missing, lambda f: f"no matching label {_stem(f)}{label_suffix}.nii.gz in {lab_dir}", _stem, "image")
        if lab_dir is not None:
            orphans = [f for f in _list_files(lab_dir, VOLUME_SUFFIXES)
                       if f.resolve() not in used and (not same_dir or strip_suffix(f.name).endswith(label_suffix))]
            failures.unpaired(orphans, lambda f: f"label without an image in {img_dir}", _stem, "label")
    cases: Dict[str, dict] = {}
    unlabeled: List[dict] = []
    for case_id, image, label in found:
        try:
            if label is not None:
                spacing = _check_volume_pair(image, label)
                cases[case_id] = {"case_id": case_id, "image": image, "label": label, "spacing": list(spacing)}
            else:
                hdr = read_volume_header(image)
                unlabeled.append({"case_id": case_id, "image": image, "spacing": [round(float(s), 6) for s in hdr.spacing]})
        except DataError as err:
            failures.add(case_id, err, image=image)
    failures.check_any_left(len(cases) + len(unlabeled))
    groups = fraction_split(sorted(all_ids) if expects_labels else [], val_fraction, test_fraction, seed)
    out = {k: [cases[i] for i in v if i in cases] for k, v in groups.items()}
    out["test"] = out["test"] + unlabeled
    notes = [f"{len(unlabeled)} cases without labels put in 'test' (inference only)"] if unlabeled else []
    failures.finish(out, notes)
    return _finish(
        name=name or root.name,
        description="CT volumes (NIfTI/DICOM)" + (f", labels in {label_map!r} numbering" if cases else ", no labels"),
        fmt="volume", modality=modality, label_set=label_set, label_map=label_map,
        split="fraction", cases=out, output=output, source=root, notes=notes, overwrite=overwrite,
        extra={"seed": seed},
    )


#: ``prepare`` functions by dataset name (the ``balr-sam prepare`` subcommands).
PREPARERS: Dict[str, Callable[..., dict]] = {
    "synapse": prepare_synapse,
    "isic2017": prepare_isic2017,
    "polyp": prepare_polyp,
    "images2d": prepare_images2d,
    "nifti": prepare_nifti,
}
