"""Polyp segmentation in PraNet's layout: ``TrainDataset/`` (Kvasir + CVC-ClinicDB) and the five
``TestDataset/<set>/`` folders (``balr-sam prepare polyp``)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

from balr_sam.data.datalist import make_datalist
from balr_sam.data.io import list_folder
from balr_sam.data.prepare.common import CaseFailures, first_existing, pair_2d, require_dir
from balr_sam.data.splits import POLYP_TEST_SETS, fraction_split
from balr_sam.errors import DataError
from balr_sam.types import PathLike

__all__ = ["prepare_polyp"]


def _polyp_dirs(folder: Path) -> Tuple[Path, Path]:
    img = first_existing([folder / "images", folder / "image"])
    msk = first_existing([folder / "masks", folder / "mask", folder / "GT"])
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
    pair by file name stem.

    Args:
        src: the folder holding ``TrainDataset/`` and/or ``TestDataset/``.
        output: datalist path to write; ``None``: write nothing.
        val_fraction: moves a seeded fraction of training images to validation (PraNet uses none).
        seed: seed of that split.
        mask_threshold: masks are binarised with ``value > mask_threshold``.
        overwrite: replace an existing ``output``.
        skip_bad: leave out the cases whose files fail the checks (listed under ``failed``)
            instead of raising on the first one.

    Returns:
        the datalist (format ``"image2d"``, split ``"official"``, ``test_sets`` in PraNet's order).

    Raises:
        DataError: missing/empty folders, unpaired images or masks, size mismatch.
    """
    root = require_dir(Path(src), "polyp dataset root (PraNet layout)")
    train_root = root / "TrainDataset"
    test_root = root / "TestDataset"
    if not train_root.is_dir() and not test_root.is_dir():
        raise DataError(f"{root}: neither TrainDataset/ nor TestDataset/ found (PraNet layout)")
    failures = CaseFailures(skip_bad)
    notes: List[str] = []
    training: List[dict] = []
    if train_root.is_dir():
        img_dir, msk_dir = _polyp_dirs(train_root)
        training = pair_2d(img_dir, msk_dir, lambda s: s, failures=failures)
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
            test += pair_2d(img_dir, msk_dir, lambda s: s, extra={"test_set": name}, failures=failures)
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
    test_sets = [s for s in POLYP_TEST_SETS if any(c.get("test_set") == s for c in test)]
    test_sets += sorted({c["test_set"] for c in test} - set(POLYP_TEST_SETS))
    return make_datalist(
        name="Polyp segmentation (PraNet protocol)",
        description="Colonoscopy images with binary polyp masks: PraNet's TrainDataset and five test sets",
        fmt="image2d",
        modality="endoscopy",
        label_set="polyp",
        label_map="identity",
        split="official",
        cases=cases,
        output=output,
        source=root,
        notes=notes,
        overwrite=overwrite,
        extra={"mask_threshold": mask_threshold, "test_sets": test_sets},
    )
