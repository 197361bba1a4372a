"""Any folder of CT volumes: NIfTI/NRRD/MHA files and/or DICOM series folders, flat or one folder
per case, labels optional (``balr-sam prepare nifti``)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from balr_sam.data.datalist import make_datalist
from balr_sam.data.io import VOLUME_SUFFIXES, is_dicom_series_dir, list_folder, read_volume_header, strip_suffix
from balr_sam.data.prepare.common import CaseFailures, check_volume_pair, first_existing, list_files, require_dir
from balr_sam.data.splits import fraction_split
from balr_sam.errors import DataError
from balr_sam.labels import get_label_set
from balr_sam.types import PathLike

__all__ = ["prepare_nifti"]


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

    Args:
        src: dataset root.
        output: datalist path to write; ``None``: write nothing.
        images, labels, label_suffix: the flat layout (see above).
        image_names, label_name: the case-folder layout (see above).
        label_set, label_map: the product's label set and the label files' numbering.
        modality, name: the datalist's ``modality`` and ``name`` (default: ``src``'s name).
        val_fraction, test_fraction, seed: the fraction split.
        overwrite: replace an existing ``output``.
        skip_bad: see above.

    Returns:
        the datalist (format ``"volume"``, split ``"fraction"``).

    Raises:
        ValueError: ``label_map`` is not a numbering of ``label_set``.
        DataError: no volumes, unpaired labels (a labels folder or ``label_name`` was given but a
        case has none, or a label has no image), unreadable headers, shape/geometry mismatch.
    """
    root = require_dir(Path(src), "volume folder")
    ls = get_label_set(label_set)
    if label_map not in ls.maps:
        raise ValueError(f"label set {label_set!r} has no label map {label_map!r}; known: {sorted(ls.maps)}")
    failures = CaseFailures(skip_bad)
    found: List[Tuple[str, Path, Optional[Path]]] = []
    all_ids: List[str] = []  # every case found, failed ones included (for a stable split)
    if image_names:
        expects_labels = bool(label_name)
        folders = [root] + [p for p in list_folder(root) if p.is_dir() and not p.name.startswith(".")]
        for folder in folders:
            image = first_existing(folder / n for n in image_names)
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
        img_dir = require_dir(Path(images) if images else root, "images")
        lab_dir = require_dir(Path(labels), "labels") if labels else None
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
            orphans = [
                f for f in list_files(lab_dir, VOLUME_SUFFIXES) if f.resolve() not in used and (not same_dir or strip_suffix(f.name).endswith(label_suffix))
            ]
            failures.unpaired(orphans, lambda f: f"label without an image in {img_dir}", _stem, "label")
    cases: Dict[str, dict] = {}
    unlabeled: List[dict] = []
    for case_id, image, label in found:
        try:
            if label is not None:
                spacing = check_volume_pair(image, label)
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
    return make_datalist(
        name=name or root.name,
        description="CT volumes (NIfTI/DICOM)" + (f", labels in {label_map!r} numbering" if cases else ", no labels"),
        fmt="volume",
        modality=modality,
        label_set=label_set,
        label_map=label_map,
        split="fraction",
        cases=out,
        output=output,
        source=root,
        notes=notes,
        overwrite=overwrite,
        extra={"seed": seed},
    )
