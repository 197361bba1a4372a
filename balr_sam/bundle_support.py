"""Small functions the bundle configs call (``$balr_sam.bundle_support.xxx(...)``).

They keep the JSON configs declarative: finding the prepared datalist (with a clear message when
there is none) and picking the transform pipeline that fits it. The evaluation report the bundle
writes is :func:`balr_sam.evaluation.write_evaluation_report`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from monai.transforms import Compose

from balr_sam.data.datalist import load_datalist, read_datalist, slices_as_volumes
from balr_sam.data.pipelines import transforms_for_datalist

__all__ = [
    "DATALIST_NAME",
    "MISSING_DATASET_HELP",
    "resolve_datalist",
    "require_dataset",
    "split_items",
    "split_transforms",
]

DATALIST_NAME = "datalist.json"

MISSING_DATASET_HELP = (
    "no dataset: set dataset_dir to a datalist JSON or to a folder holding '{name}'.\n"
    "  Prepare one with:  balr-sam prepare synapse /path/to/Synapse --output /path/to/Synapse/{name}\n"
    "  (also isic2017, polyp, images2d, nifti; see 'balr-sam prepare --help'),\n"
    "  or try the whole pipeline on generated data first:  balr-sam demo"
)


def resolve_datalist(dataset_dir: Union[str, Path, None]) -> str:
    """Path of the prepared datalist for ``dataset_dir`` (a JSON file, or a folder holding ``datalist.json``).

    Raises:
        FileNotFoundError: with instructions naming ``balr-sam prepare`` and ``balr-sam demo``.
    """
    if dataset_dir:
        path = Path(dataset_dir)
        if path.is_file() and path.suffix == ".json":
            return str(path)
        if (path / DATALIST_NAME).is_file():
            return str(path / DATALIST_NAME)
        where = f"{path}: no {DATALIST_NAME} there" if path.exists() else f"{path}: no such file or folder"
        raise FileNotFoundError(where + "; " + MISSING_DATASET_HELP.format(name=DATALIST_NAME))
    raise FileNotFoundError(MISSING_DATASET_HELP.format(name=DATALIST_NAME))


def require_dataset(dataset_dir: Union[str, Path, None]) -> str:
    """Like :func:`resolve_datalist`, but a missing dataset ends the process with the message only (no traceback)."""
    try:
        return resolve_datalist(dataset_dir)
    except FileNotFoundError as err:
        raise SystemExit(f"balr-sam bundle: {err}") from None


def split_items(datalist: Union[str, Path], split: str, limit: Optional[int] = None) -> List[Dict[str, Any]]:
    """The items of one split with absolute paths (``limit``: keep the first N, for quick runs).

    Outside ``training``, the slices of a ``transunet`` datalist's cases are grouped into one
    volume item per case (:func:`~balr_sam.data.datalist.slices_as_volumes`), so that validation
    and evaluation score whole volumes, as on TransUNet's test volumes.
    """
    items = load_datalist(datalist, split)
    if split != "training" and read_datalist(datalist).get("format") == "transunet":
        items = slices_as_volumes(items)
    return items[:limit] if limit else items


def split_transforms(datalist: Union[str, Path], split: str, img_size: int, **kwargs: Any) -> Compose:
    """The transform pipeline that fits the datalist's format for ``split`` (see ``transforms_for_datalist``;
    ``num_slices``, the slices drawn per training volume, applies to the volume format only)."""
    return transforms_for_datalist(read_datalist(datalist), split, img_size=img_size, **kwargs)
