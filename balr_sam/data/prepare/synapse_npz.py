"""TransUNet's preprocessed Synapse: ``train_npz/caseXXXX_sliceYYY.npz`` training slices and
``test_vol_h5/caseXXXX.npy.h5`` test volumes, already windowed to [-125, 275] HU and scaled to
[0, 1], labels in the product's Synapse ids (``balr-sam prepare synapse`` on that layout)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional

from balr_sam.data.datalist import make_datalist
from balr_sam.data.io import h5_header, list_folder, npz_header, strip_suffix
from balr_sam.data.prepare.common import CaseFailures, require_dir
from balr_sam.data.splits import fraction_split
from balr_sam.errors import DataError
from balr_sam.types import PathLike

__all__ = ["prepare_synapse_npz"]

_NPZ = re.compile(r"^case(\d+)_slice(\d+)\.npz$")
_H5 = re.compile(r"^case(\d+)\.npy\.h5$")


def prepare_synapse_npz(
    src: PathLike,
    output: Optional[PathLike] = None,
    *,
    val_fraction: float = 0.0,
    seed: int = 0,
    list_dir: Optional[PathLike] = None,
    overwrite: bool = False,
    skip_bad: bool = False,
) -> dict:
    """Prepare TransUNet's ``train_npz/`` + ``test_vol_h5/`` (either may be missing, not both).

    Every slice of ``train_npz`` is a training case (``"slice"``: its index), every volume of
    ``test_vol_h5`` a test case (with a ``label`` when the file holds one). TransUNet's
    ``train.txt`` and ``test_vol.txt`` (looked for in ``list_dir``, ``src/lists/lists_Synapse``,
    ``src/lists_Synapse``, ``src/lists``) restrict the cases when present. ``val_fraction``
    moves a seeded fraction of the training *cases* (all their slices) to validation. Only the
    headers are read.

    Args:
        src: the folder holding ``train_npz/`` and/or ``test_vol_h5/``.
        output: datalist path to write; ``None``: write nothing.
        val_fraction, seed: the validation split (drawn over every case found, failed ones too).
        list_dir: folder with ``train.txt``/``test_vol.txt``.
        overwrite: replace an existing ``output``.
        skip_bad: leave bad slices/volumes out (listed under ``failed``) instead of raising.

    Returns:
        the datalist (format ``"transunet"``).

    Raises:
        DataError: neither folder, an empty folder, a list naming missing files, a list folder
        without lists, bad ``.npz``/``.h5`` contents (with ``skip_bad``: only when no case is left).
    """
    root = require_dir(Path(src), "Synapse dataset root")
    failures = CaseFailures(skip_bad)
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
    return make_datalist(
        name="Synapse multi-organ CT (TransUNet preprocessed)",
        description=("TransUNet's Synapse slices (train_npz) and test volumes (test_vol_h5), windowed to [-125, 275] HU and scaled to [0, 1]"),
        fmt="transunet",
        modality="CT",
        label_set="synapse",
        label_map="identity",
        split="transunet",
        cases=cases,
        output=output,
        source=root,
        notes=notes,
        overwrite=overwrite,
        extra={"seed": seed} if val_fraction > 0 else None,
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
    header = h5_header(f)
    if "image" not in header:
        raise DataError(f"{f}: no dataset 'image' (datasets: {sorted(header)})")
    shapes = {k: header[k][0] for k in ("image", "label") if k in header}
    if len(shapes["image"]) != 3:
        raise DataError(f"{f}: expected a 3D volume in 'image', got shape {shapes['image']}")
    if "label" in shapes and shapes["label"] != shapes["image"]:
        raise DataError(f"{f}: label shape {shapes['label']} does not match image shape {shapes['image']}")
    return "label" in shapes
