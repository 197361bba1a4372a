"""Any "image folder + mask folder" 2D dataset (Kvasir-SEG, PH2...), split by a seeded fraction
split (``balr-sam prepare images2d``)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from balr_sam.data.datalist import make_datalist
from balr_sam.data.io import strip_suffix
from balr_sam.data.prepare.common import CaseFailures, pair_2d, require_dir
from balr_sam.data.splits import fraction_split
from balr_sam.errors import DataError
from balr_sam.types import PathLike

__all__ = ["prepare_images2d"]


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
    (``images/IMD002.png`` + ``masks/IMD002_lesion.png``: ``mask_suffix="_lesion"``) fit. Images
    and masks may share one folder (``images="."``, ``masks="."``: ``IMD002.bmp`` beside
    ``IMD002_lesion.bmp``); the files whose name ends in ``mask_suffix`` are then the masks, the
    others the images, and a suffix is required. Cases are split with a seeded fraction split
    (``test_fraction=1`` puts everything in test).

    Args:
        src: dataset root.
        output: datalist path to write; ``None``: write nothing.
        images, masks: the image and mask folders, relative to ``src`` (may be the same).
        mask_suffix: mask stem = image stem + ``mask_suffix``.
        label_set: the product's label set (``binary``, ``isic2017``, ``polyp``).
        mask_threshold: masks are binarised with ``value > mask_threshold``.
        val_fraction, test_fraction, seed: the fraction split.
        modality, name: the datalist's ``modality`` and ``name`` (default: ``src``'s name).
        overwrite: replace an existing ``output``.
        skip_bad: leave out the cases whose files fail the checks (listed under ``failed``)
            instead of raising on the first one; the split is computed over all images first,
            so a bad case does not move good ones to another split.

    Returns:
        the datalist (format ``"image2d"``, split ``"fraction"``).

    Raises:
        DataError: missing/empty folders, one folder for images and masks without a
        ``mask_suffix``, unpaired images or masks, size mismatch.
    """
    root = require_dir(Path(src), "2D dataset root")
    image_dir, mask_dir = root / images, root / masks
    failures = CaseFailures(skip_bad)
    if image_dir.resolve() == mask_dir.resolve():
        if not mask_suffix:
            raise DataError(f"{mask_dir}: images and masks in the same folder need a mask suffix (e.g. --mask-suffix _lesion)")

        def is_mask(name: str) -> bool:
            return strip_suffix(name).endswith(mask_suffix)

        cases = pair_2d(image_dir, mask_dir, lambda s: f"{s}{mask_suffix}", exclude=is_mask, mask_exclude=lambda name: not is_mask(name), failures=failures)
    else:
        cases = pair_2d(image_dir, mask_dir, lambda s: f"{s}{mask_suffix}", failures=failures)
    failures.check_any_left(len(cases))
    by_id = {c["case_id"]: c for c in cases}
    all_ids = sorted(set(by_id) | {f["case_id"] for f in failures.failed if "image" in f})
    groups = fraction_split(all_ids, val_fraction, test_fraction, seed)
    out = {k: [by_id[i] for i in v if i in by_id] for k, v in groups.items()}
    notes: List[str] = []
    failures.finish(out, notes)
    return make_datalist(
        name=name or root.name,
        description=f"2D images ({images}/) with binary masks ({masks}/<name>{mask_suffix}.*)",
        fmt="image2d",
        modality=modality,
        label_set=label_set,
        label_map="identity",
        split="fraction",
        cases=out,
        notes=notes,
        output=output,
        source=root,
        overwrite=overwrite,
        extra={"mask_threshold": mask_threshold, "seed": seed},
    )
