"""ISIC 2017 Part 1 (lesion segmentation): the official training/validation/test folders
(``balr-sam prepare isic2017``)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

from balr_sam.data.datalist import make_datalist
from balr_sam.data.prepare.common import CaseFailures, pair_2d, require_dir
from balr_sam.data.splits import ISIC2017_FOLDERS
from balr_sam.errors import DataError
from balr_sam.types import PathLike

__all__ = ["prepare_isic2017"]


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

    Args:
        src: the folder holding the ``ISIC-2017_*`` folders.
        output: datalist path to write; ``None``: write nothing.
        mask_threshold: masks are binarised with ``value > mask_threshold``.
        overwrite: replace an existing ``output``.
        skip_bad: leave out the cases whose files fail the checks (listed under ``failed``)
            instead of raising on the first one.

    Returns:
        the datalist (format ``"image2d"``, split ``"official"``).

    Raises:
        DataError: missing training folders, empty folders, unpaired images or masks, size mismatch.
    """
    root = require_dir(Path(src), "ISIC 2017 root")
    failures = CaseFailures(skip_bad)
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
        cases[split] = pair_2d(
            data_dir,
            gt_dir,
            lambda s: f"{s}_segmentation",
            image_suffixes=(".jpg", ".jpeg", ".png"),
            exclude=lambda n: "_superpixels" in n,
            mask_exclude=lambda n: "_superpixels" in n,
            failures=failures,
        )
    failures.check_any_left(sum(len(v) for v in cases.values()))
    failures.finish(cases, notes)
    return make_datalist(
        name="ISIC 2017 lesion segmentation",
        description="ISIC 2017 Part 1 dermoscopy images with binary lesion masks, official training/validation/test folders",
        fmt="image2d",
        modality="dermoscopy",
        label_set="isic2017",
        label_map="identity",
        split="official",
        cases=cases,
        output=output,
        source=root,
        notes=notes,
        overwrite=overwrite,
        extra={"mask_threshold": mask_threshold},
    )
