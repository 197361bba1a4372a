"""Synapse (BTCV) multi-organ CT: the ``balr-sam prepare synapse`` converter and its raw layout.

:func:`prepare_synapse` detects the layout: raw BTCV (``img/imgXXXX.nii.gz`` +
``label/labelXXXX.nii.gz``, converted here) or TransUNet's preprocessed ``train_npz/`` +
``test_vol_h5/`` (converted by :mod:`balr_sam.data.prepare.synapse_npz`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from balr_sam.data.datalist import make_datalist
from balr_sam.data.io import list_folder
from balr_sam.data.prepare.common import CaseFailures, check_volume_pair, first_existing, require_dir
from balr_sam.data.prepare.synapse_npz import prepare_synapse_npz
from balr_sam.data.splits import TRANSUNET_TEST_IDS, TRANSUNET_TRAIN_IDS, fraction_split
from balr_sam.errors import DataError
from balr_sam.types import PathLike

__all__ = ["prepare_synapse"]

_BTCV_IMG = re.compile(r"^img(\d+)\.nii(\.gz)?$")
_BTCV_LAB = re.compile(r"^label(\d+)\.nii(\.gz)?$")


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
      ``src/lists_Synapse``) restrict the cases when present (see
      :func:`~balr_sam.data.prepare.synapse_npz.prepare_synapse_npz`).

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

    Returns:
        the datalist (see :mod:`balr_sam.data.datalist`).

    Raises:
        DataError: missing/empty folders, unpaired images or labels, unreadable headers,
        image/label shape or geometry mismatch, bad ``.npz``/``.h5`` contents (with
        ``skip_bad``: only when no case is left, or the problem is not one case's).
        ValueError: unknown ``layout`` or ``split``.
    """
    root = require_dir(Path(src), "Synapse dataset root")
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
    if layout == "raw":
        return _prepare_synapse_raw(root, output, split, val_fraction, test_fraction, seed, overwrite, CaseFailures(skip_bad))
    if layout == "npz":
        return prepare_synapse_npz(root, output, val_fraction=val_fraction or 0.0, seed=seed, list_dir=list_dir, overwrite=overwrite, skip_bad=skip_bad)
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


def _prepare_synapse_raw(
    root: Path, output: Optional[PathLike], split: str, val_fraction: Optional[float], test_fraction: float, seed: int, overwrite: bool, failures: CaseFailures
) -> dict:
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
    failures.unpaired(
        [images[c] for c in sorted(images) if c not in labels],
        lambda f: f"no matching label (expected {lab_dir / f.name.replace('img', 'label', 1)})",
        case_of.get,
        "image",
    )
    failures.unpaired(
        [labels[c] for c in sorted(labels) if c not in images],
        lambda f: f"label without an image (expected {img_dir / f.name.replace('label', 'img', 1)})",
        case_of.get,
        "label",
    )
    notes = [f"ignored non-BTCV file {img_dir.name}/{n}" for n in other_imgs]
    notes += [f"ignored non-BTCV file {lab_dir.name}/{n}" for n in other_labs]
    cases: Dict[int, dict] = {}
    for c in sorted(c for c in images if c in labels):
        try:
            spacing = check_volume_pair(images[c], labels[c])
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
            "split 'auto': all 30 TransUNet cases present, TransUNet split used"
            if split == "transunet"
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
    test_dir = first_existing([train_dir.parent / "Testing" / "img"]) if train_dir != root else None
    if test_dir is not None and test_dir.is_dir():
        unl, _ = _btcv_files(test_dir, _BTCV_IMG, "image")
        if unl:
            out_cases["unlabeled"] = [{"case_id": f"{c:04d}", "image": unl[c]} for c in sorted(unl)]
            notes.append(f"{len(unl)} unlabelled images in {test_dir} listed under 'unlabeled'")
    failures.finish(out_cases, notes)
    return make_datalist(
        name="Synapse multi-organ CT (BTCV, raw)",
        description="BTCV abdominal CT, labels mapped from BTCV numbering to the 8 Synapse organs",
        fmt="volume",
        modality="CT",
        label_set="synapse",
        label_map="btcv",
        split=split,
        cases=out_cases,
        output=output,
        source=root,
        notes=notes,
        overwrite=overwrite,
        extra={"seed": seed} if split == "fraction" or (val_fraction or 0) > 0 else None,
    )
