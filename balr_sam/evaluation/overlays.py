"""Overlay pictures of evaluated cases: image / ground truth / prediction panels of one slice.

An evaluation draws its worst and best cases (:func:`draw_overlays`, ``num_overlays`` of each,
by mean Dice; a case drawn as worst is not drawn again as best) into
``overlays/{worst,best}_<rank>_<case>.png`` with :func:`save_overlay`: for a volume the axial
slice (the array axis closest to the patient's z axis) with the most ground-truth foreground;
panels image / ground truth / prediction (the image panel only when an image is known).
"""

from __future__ import annotations

import math
import sys
import warnings
from typing import Any, Callable, List, Optional, Sequence, Tuple, TypeVar

import numpy as np

from balr_sam.atomic import atomic_write
from balr_sam.errors import DataError
from balr_sam.evaluation.reading import LabelVolume
from balr_sam.evaluation.reports import class_order
from balr_sam.labels import LabelSet
from balr_sam.types import PathLike

__all__ = ["draw_overlays", "save_overlay"]

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


def _slice(arr: np.ndarray, axis: int, index: int) -> np.ndarray:
    return np.take(arr, index, axis=axis)


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
    """Save image / ground truth / prediction panels of the slice with the most foreground.

    For 3D data the slice is taken along ``label.axial_axis`` where the ground truth has the most
    foreground voxels (the prediction's when the ground truth is empty); NIfTI slices are rotated
    by 90 degrees for display. Returns the slice index (0 for 2D).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    gt, pr = label.data, pred.data
    index = 0
    in_plane: Tuple[int, ...] = (0, 1)
    if gt.ndim == 3:
        ax = label.axial_axis
        others = tuple(d for d in range(3) if d != ax)
        in_plane = others
        fg = (gt > 0).sum(axis=others)
        if not fg.any():
            fg = (pr > 0).sum(axis=others)
        index = int(np.argmax(fg))
        gt2, pr2 = _slice(gt, ax, index), _slice(pr, ax, index)
        img2 = _slice(image, ax, index) if image is not None else None
    else:
        gt2, pr2, img2 = gt, pr, image
    row_sp, col_sp = label.spacing[in_plane[0]], label.spacing[in_plane[1]]
    if not label.raster:
        gt2, pr2 = np.rot90(gt2), np.rot90(pr2)
        img2 = np.rot90(img2) if img2 is not None else None
        row_sp, col_sp = col_sp, row_sp
    aspect = row_sp / col_sp  # square millimetres on screen
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
        axis.imshow(
            base, cmap="gray" if base.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest", aspect=aspect
        )
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
    return index
