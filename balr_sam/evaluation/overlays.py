"""Overlay pictures of evaluated cases: image / ground truth / prediction panels of one slice.

An evaluation draws its worst and best cases (:func:`draw_overlays`, ``num_overlays`` of each,
by mean Dice; a case drawn as worst is not drawn again as best) into
``overlays/{worst,best}_<rank>_<case>.png`` with :func:`save_overlay`: the slice with the most
ground-truth foreground (the prediction's when the ground truth is empty); panels image / ground
truth / prediction (the image panel only when an image is known).

**Orientation.** Volumes are shown as radiologists read them, whatever the voxel order the file
stores (:func:`overlay_slice` reorients by the affine, with nibabel's orientation tools): axial
slices with the patient's right on the viewer's **left** and anterior **up** (picture rows run
towards posterior, columns towards the patient's left: nibabel axis codes ``P, L`` for rows and
columns, ``S`` across the slices). A volume stored RAS, LPS or with permuted axes gives the same
picture. A single-slice volume (a 2D NIfTI label map) is shown in its own plane: coronal with
superior up and the patient's right on the left (``I, L``), sagittal with superior up and
anterior on the left (``I, P``). Raster images (PNG, JPEG...) have no affine and are shown as
stored (row 0 at the top). Pixels are drawn with their physical aspect ratio.
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

import numpy as np

from balr_sam.atomic import atomic_write
from balr_sam.errors import DataError
from balr_sam.evaluation.reading import LabelVolume
from balr_sam.evaluation.reports import class_order
from balr_sam.labels import LabelSet
from balr_sam.types import PathLike

__all__ = ["DISPLAY_AXES", "OverlaySlice", "draw_overlays", "overlay_slice", "save_overlay"]

#: Picture axes (rows, columns, slices) as nibabel axis codes, keyed by the world axis normal to the
#: picture (0: left-right, 1: posterior-anterior, 2: inferior-superior); radiological convention.
DISPLAY_AXES: Dict[int, Tuple[str, str, str]] = {
    2: ("P", "L", "S"),  # axial: anterior up, the patient's right on the viewer's left
    1: ("I", "L", "P"),  # coronal: superior up, the patient's right on the viewer's left
    0: ("I", "P", "L"),  # sagittal: superior up, anterior on the viewer's left
}

_Case = TypeVar("_Case")


def draw_overlays(
    cases: Sequence[_Case],
    num_overlays: int,
    score: Callable[[_Case], float],
    name: Callable[[_Case], str],
    draw: Callable[[str, int, _Case], Any],
) -> List[Any]:
    """Draw the ``num_overlays`` worst and best cases by ``score``.

    NaN scores are left out, ties are broken by ``name``, and a case is drawn once. A
    :class:`~balr_sam.errors.DataError` raised by ``draw`` (e.g. a corrupt image) skips that
    overlay with one line on stderr.

    Args:
        cases: the evaluated cases.
        num_overlays: how many worst and how many best cases (0: none).
        score: a case's score (higher is better).
        name: a case's name.
        draw: ``draw(tag, rank, case)`` with ``tag`` ``"worst"``/``"best"`` and ``rank`` from 1.

    Returns:
        what ``draw`` returned for each drawn overlay.
    """
    if num_overlays <= 0:
        return []
    ranked = sorted((c for c in cases if not math.isnan(score(c))), key=lambda c: (score(c), name(c)))
    picks: List[Tuple[str, int, _Case]] = [("worst", i + 1, c) for i, c in enumerate(ranked[:num_overlays])]
    drawn = {name(c) for _, _, c in picks}
    best = [c for c in reversed(ranked) if name(c) not in drawn][:num_overlays]
    picks += [("best", i + 1, c) for i, c in enumerate(best)]
    results = []
    for tag, rank, case in picks:
        try:
            results.append(draw(tag, rank, case))
        except DataError as err:
            print(f"balr-sam evaluate: overlay of case {name(case)} skipped: {err}", file=sys.stderr)
    return results


@dataclass
class OverlaySlice:
    """The 2D arrays an overlay draws, in display order (row 0 at the top, column 0 on the left).

    Attributes:
        label: ``H x W`` ground-truth product ids.
        pred: ``H x W`` predicted product ids.
        image: ``H x W`` intensities or ``H x W x 3`` colours, ``None`` without an image.
        pixel_size: ``(row, column)`` pixel size (mm for volumes, 1 for raster images).
        index: the slice's index along the file's own slice axis (0 for 2D data).
    """

    label: np.ndarray
    pred: np.ndarray
    image: Optional[np.ndarray]
    pixel_size: Tuple[float, float]
    index: int


def _orientation(affine: np.ndarray) -> np.ndarray:
    """nibabel's ``io_orientation`` of ``affine``; the undefined third axis of a 2D image's affine
    (a zero column) is given the world axis its two in-plane axes leave free."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(np.asarray(affine, dtype=np.float64))
    missing = np.isnan(ornt[:, 0])
    if missing.any():
        free = [w for w in range(3) if w not in {int(a) for a in ornt[~missing, 0]}]
        for axis, world in zip(np.flatnonzero(missing), free):
            ornt[axis] = (world, 1.0)
    return ornt


def overlay_slice(label: LabelVolume, pred: LabelVolume, image: Optional[np.ndarray] = None) -> OverlaySlice:
    """The slice an overlay shows, reoriented for display (see the module docstring).

    A volume's slice is the one with the most ground-truth foreground (the prediction's when the
    ground truth is empty) along the axis nearest to the patient's z axis (ties: the most inferior).

    Args:
        label, pred: the ground truth and the prediction, on the same voxel grid.
        image: the image on the same grid (``label.data.shape``, colour channels last), or ``None``.

    Returns:
        the :class:`OverlaySlice`.
    """
    if label.affine is None:  # a raster image: as stored
        return OverlaySlice(label.data, pred.data, image, (label.spacing[0], label.spacing[1]), 0)
    import nibabel as nib

    flat = label.data.ndim == 2
    ornt = _orientation(label.affine)
    normal = int(ornt[2, 0]) if flat else 2
    transform = nib.orientations.ornt_transform(ornt, nib.orientations.axcodes2ornt(DISPLAY_AXES[normal]))

    def shown(arr: np.ndarray) -> np.ndarray:
        return nib.orientations.apply_orientation(arr[:, :, None] if flat else arr, transform)

    gt, pr = shown(label.data), shown(pred.data)
    img = shown(image) if image is not None else None
    fg = (gt > 0).sum(axis=(0, 1))
    if not fg.any():
        fg = (pr > 0).sum(axis=(0, 1))
    k = int(np.argmax(fg))
    source = [int(np.flatnonzero(transform[:, 0] == out)[0]) for out in range(3)]  # file axis of each display axis
    index = 0 if flat else (label.data.shape[source[2]] - 1 - k if transform[source[2], 1] < 0 else k)
    spacing = tuple(label.spacing) + (1.0,) * (3 - len(label.spacing))
    return OverlaySlice(
        np.ascontiguousarray(gt[:, :, k]),
        np.ascontiguousarray(pr[:, :, k]),
        np.ascontiguousarray(img[:, :, k]) if img is not None else None,
        (spacing[source[0]], spacing[source[1]]),
        index,
    )


def _normalise_image(img: np.ndarray) -> np.ndarray:
    if img.ndim == 3 and img.shape[-1] in (3, 4):
        out = img[..., :3].astype(np.float32)
        return out / 255.0 if out.max() > 1.0 else out
    lo, hi = np.percentile(img, [0.5, 99.5]) if img.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((img.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)


def save_overlay(
    path: PathLike,
    label: LabelVolume,
    pred: LabelVolume,
    label_set: LabelSet,
    title: str,
    image: Optional[np.ndarray] = None,
) -> int:
    """Save image / ground truth / prediction panels of :func:`overlay_slice` as a PNG, atomically.

    Args:
        path: the PNG file.
        label, pred: the ground truth and the prediction, on the same voxel grid.
        label_set: the classes' names (legend) and order (colours).
        title: the picture's title.
        image: the image on the label's voxel grid, or ``None`` (no image panel).

    Returns:
        the slice index in the file's own voxel order (0 for 2D).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    shown = overlay_slice(label, pred, image)
    gt2, pr2, img2 = shown.label, shown.pred, shown.image
    aspect = shown.pixel_size[0] / shown.pixel_size[1]  # square millimetres on screen
    base = _normalise_image(img2) if img2 is not None else np.zeros(gt2.shape, dtype=np.float32)

    order = class_order(label_set)
    palette = [plt.get_cmap("tab10")(i) for i in range(10) if i != 7]  # no grey: it hides in CT
    palette += [plt.get_cmap("tab20")(i) for i in range(1, 20, 2) if i != 15]
    colours = {c: palette[i % len(palette)] for i, c in enumerate(order)}

    def coloured(lab: np.ndarray) -> np.ndarray:
        rgba = np.zeros(lab.shape + (4,), dtype=np.float32)
        for c, col in colours.items():
            m = lab == c
            rgba[m, :3] = col[:3]
            rgba[m, 3] = 0.55 if img2 is not None else 1.0
        return rgba

    panels = ([("Image", None)] if img2 is not None else []) + [("Ground truth", gt2), ("Prediction", pr2)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.8), squeeze=False)
    for axis, (name, lab) in zip(axes[0], panels):
        axis.imshow(base, cmap="gray" if base.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest", aspect=aspect)
        if lab is not None:
            axis.imshow(coloured(lab), interpolation="nearest", aspect=aspect)
        axis.set_title(name)
        axis.axis("off")
    present = [c for c in order if np.any(gt2 == c) or np.any(pr2 == c)]
    if present:
        handles = [Patch(color=colours[c], label=label_set.display_names.get(c, str(c))) for c in present]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), frameon=False)
    fig.suptitle(title)
    with warnings.catch_warnings():
        # a case name in a script the font lacks (e.g. CJK) draws as boxes; not worth a warning per glyph
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font", category=UserWarning)
        fig.tight_layout(rect=(0, 0.08 if present else 0, 1, 0.95))
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=80), ".png")
    plt.close(fig)
    return shown.index
