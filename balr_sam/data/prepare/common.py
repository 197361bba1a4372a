"""What every dataset converter shares: the per-case failure collector, folder checks, file
listing, and the pairing of images with their labels or masks (checked from the headers)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from balr_sam.data.io import (
    IMAGE2D_SUFFIXES,
    check_grid,
    list_folder,
    read_image_2d_size,
    read_volume_header,
    strip_suffix,
)
from balr_sam.errors import DataError

__all__ = [
    "CaseFailures",
    "check_2d_pair",
    "check_volume_pair",
    "first_existing",
    "list_files",
    "pair_2d",
    "require_dir",
]


class CaseFailures:
    """Per-case problems found while preparing: raised at once, or (``skip_bad``) recorded so that
    the case is left out, listed under ``failed``, and the other cases still get prepared.

    Args:
        skip_bad: record problems instead of raising them.

    Attributes:
        failed: the recorded ``{"case_id", "image"/"label", "error"}`` entries, in order.
    """

    def __init__(self, skip_bad: bool) -> None:
        self.skip_bad = skip_bad
        self.failed: List[dict] = []

    def add(self, case_id: str, err: DataError, image: Optional[Path] = None, label: Optional[Path] = None) -> None:
        """Record ``err`` for ``case_id`` (raise it when not skipping).

        Raises:
            DataError: ``err``, unless bad cases are skipped.
        """
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
        """Files without their partner: one error for all (strict), or one failed case each.

        Args:
            files: the unpaired files.
            what: the problem of one file (``"no matching label ..."``).
            case_id: the case id of one file.
            key: ``"image"`` or ``"label"``: what the files are.

        Raises:
            DataError: naming the first file and how many more there are, unless bad cases are skipped.
        """
        if not files:
            return
        if not self.skip_bad:
            raise _pair_error(files, what(files[0]))
        for f in files:
            self.add(case_id(f), DataError(f"{f}: {what(f)}"), **{key: f})

    def check_any_left(self, n_cases: int) -> None:
        """Every case failed: nothing to write; the error is the first problem (one line).

        Raises:
            DataError: ``n_cases`` is 0 and some case failed.
        """
        if n_cases == 0 and self.failed:
            more = f" (and {len(self.failed) - 1} more failed cases; none left to prepare)" if len(self.failed) > 1 else ""
            raise DataError(f"{self.failed[0]['error']}{more}")

    def finish(self, cases: Dict[str, List[dict]], notes: List[str]) -> None:
        """Add the ``failed`` list and a note to a datalist's cases (in place)."""
        if self.failed:
            cases["failed"] = self.failed
            notes.append(f"{len(self.failed)} cases failed the checks and were left out (listed under 'failed')")


def require_dir(path: Path, what: str) -> Path:
    """``path``, checked to be an existing folder.

    Raises:
        DataError: missing, or not a folder (``what`` says which folder it should be).
    """
    if not path.exists():
        raise DataError(f"{path}: no such folder ({what})")
    if not path.is_dir():
        raise DataError(f"{path}: not a folder ({what})")
    return path


def first_existing(candidates: Iterable[Path]) -> Optional[Path]:
    """The first of ``candidates`` that exists, or ``None``."""
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


def list_files(folder: Path, suffixes: Sequence[str], exclude: Callable[[str], bool] = lambda n: False) -> List[Path]:
    """The files directly in ``folder`` with one of ``suffixes`` (case-insensitive), sorted; hidden
    files and names ``exclude`` accepts are left out.

    Raises:
        DataError: the folder cannot be listed.
    """
    return [
        f
        for f in list_folder(folder)  # already sorted
        if f.is_file() and not f.name.startswith(".") and f.name.lower().endswith(tuple(suffixes)) and not exclude(f.name)
    ]


def check_volume_pair(image: Path, label: Path) -> Tuple[float, ...]:
    """Check from the headers that ``label`` lies on ``image``'s voxel grid.

    Returns:
        the image's voxel size in mm along its three voxel axes (rounded to 6 decimals).

    Raises:
        DataError: unreadable header, shape or geometry mismatch (naming the label file).
    """
    img_hdr = read_volume_header(image)
    lab_hdr = read_volume_header(label)
    check_grid(lab_hdr, img_hdr)
    return tuple(round(float(s), 6) for s in img_hdr.spacing)


def check_2d_pair(image: Path, mask: Path) -> None:
    """Check from the headers that ``mask`` has ``image``'s size.

    Raises:
        DataError: unreadable file, size mismatch (naming the mask).
    """
    size_i = read_image_2d_size(image)
    size_m = read_image_2d_size(mask)
    if size_i != size_m:
        raise DataError(f"{mask}: mask size {size_m[0]}x{size_m[1]} (HxW) does not match image size {size_i[0]}x{size_i[1]} of {image}")


def pair_2d(
    image_dir: Path,
    mask_dir: Path,
    mask_name: Callable[[str], str],
    *,
    image_suffixes: Sequence[str] = IMAGE2D_SUFFIXES,
    exclude: Callable[[str], bool] = lambda n: False,
    mask_exclude: Callable[[str], bool] = lambda n: False,
    extra: Optional[dict] = None,
    failures: CaseFailures,
) -> List[dict]:
    """Pair images with masks: the mask of image stem ``s`` has stem ``mask_name(s)`` (any image suffix).

    Args:
        image_dir, mask_dir: the folders (may be the same folder, with ``exclude`` and
            ``mask_exclude`` telling images from masks).
        mask_name: image stem -> mask stem.
        image_suffixes: suffixes of the images.
        exclude: file names in ``image_dir`` that are not images.
        mask_exclude: file names in ``mask_dir`` that are not masks.
        extra: keys added to every case (``{"test_set": ...}``).
        failures: where cases with a missing, unreadable or differently sized mask go (it
            raises unless it skips bad cases).

    Returns:
        ``{"case_id", "image", "label", **extra}`` per pair, sorted by image stem.

    Raises:
        DataError: missing or empty folders, two files with the same stem, and (when not
        skipping) unpaired files or mismatched sizes.
    """
    require_dir(image_dir, "images")
    require_dir(mask_dir, "masks")
    images = list_files(image_dir, image_suffixes, exclude)
    if not images:
        empty = "empty folder, " if not list_folder(image_dir) else ""
        raise DataError(f"{image_dir}: {empty}no images ({', '.join(image_suffixes)}) found")
    masks: Dict[str, Path] = {}
    for m in list_files(mask_dir, IMAGE2D_SUFFIXES, mask_exclude):
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
    failures.unpaired(
        [stems[s] for s in sorted(stems) if mask_name(s) not in masks],
        lambda f: f"no matching mask {mask_name(strip_suffix(f.name))}.* in {mask_dir}",
        lambda f: strip_suffix(f.name),
        "image",
    )
    expected = {mask_name(s) for s in stems}
    failures.unpaired(
        [masks[m] for m in sorted(masks) if m not in expected], lambda f: f"mask without an image in {image_dir}", lambda f: strip_suffix(f.name), "label"
    )
    cases = []
    for s in sorted(s for s in stems if mask_name(s) in masks):
        image, mask = stems[s], masks[mask_name(s)]
        try:
            check_2d_pair(image, mask)
        except DataError as err:
            failures.add(s, err, image=image)
            continue
        case = {"case_id": s, "image": image, "label": mask}
        case.update(extra or {})
        cases.append(case)
    return cases
