"""Small functions the bundle configs call (``$balr_sam.bundle_support.xxx(...)``).

They keep the JSON configs declarative: finding the prepared datalist (with a clear message when
there is none), picking the transform pipeline that fits it, and sizing the LR schedule.
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
    "write_evaluation_report",
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


def write_evaluation_report(
    datalist: Union[str, Path],
    split: str,
    prediction_dir: Union[str, Path],
    output_dir: Union[str, Path],
    pred_name: str = "{case}_seg.nii.gz",
    protocol: str = "transunet",
    method_name: str = "BALR-SAM",
    overwrite: bool = True,
    label_set: Optional[str] = None,
) -> Dict[str, Any]:
    """Per-case CSV, summary JSON/Markdown and overlays for a split's predictions.

    A 2D datalist (format ``image2d``: ISIC 2017, polyps) is scored by its task's protocol
    instead, by :func:`balr_sam.evaluation2d.evaluate_2d_predictions`: ``label_set`` (the bundle
    config's; default the datalist's) picks it (``isic2017``: pooled confusion matrix, others:
    PraNet's per-image means per test set); ``protocol`` is used only when it names one of
    those (``transunet``/``clinical`` are CT empty-case rules).

    Each datalist item of ``split`` is paired with ``prediction_dir / pred_name`` where ``case`` is
    the image's name without suffix (``SaveImaged``'s ``<name>_seg.nii.gz``, or ``balr-sam
    infer``'s ``<name>.nii.gz`` with ``pred_name="{case}.nii.gz"``); labels are read in the
    datalist's numbering (its ``label_map``). Missing predictions are reported as failed cases.

    Returns:
        the summary dict (also written to ``output_dir/summary.json``).
    """
    from balr_sam.data.io import strip_suffix
    from balr_sam.evaluation import evaluate_pairs

    info = read_datalist(datalist)
    if info.get("format") == "image2d":
        from balr_sam.evaluation2d import PROTOCOLS_2D, evaluate_2d_predictions

        return evaluate_2d_predictions(
            datalist, split, prediction_dir, output_dir, protocol=protocol if protocol in PROTOCOLS_2D else None,
            label_set=label_set, pred_names=(pred_name, "{case}.png"), method_name=method_name, overwrite=overwrite,
        )
    items = load_datalist(datalist, split)
    pairs, problems, images = [], [], {}
    for item in items:
        case = strip_suffix(Path(item["image"]).name)
        pred = Path(prediction_dir) / pred_name.format(case=case)
        images[case] = Path(item["image"])
        if pred.is_file():
            pairs.append((case, pred, Path(item["label"])))
        else:
            problems.append((case, f"{pred}: no prediction for {item['image']}"))
    label_maps = {item.get("label_map", info.get("label_map", "identity")) for item in items}
    if len(label_maps) > 1:
        raise ValueError(f"{datalist}: split {split!r} mixes label numberings {sorted(label_maps)}")
    result = evaluate_pairs(
        pairs, output_dir, image_index=images, problems=problems, label_set=info.get("label_set", "synapse"),
        label_map=label_maps.pop() if label_maps else "identity", protocol=protocol, method_name=method_name,
        overwrite=overwrite, progress=False, sources={"datalist": str(datalist), "split": split, "pred_dir": str(prediction_dir)},
    )
    return result.summary
