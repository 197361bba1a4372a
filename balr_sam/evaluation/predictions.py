"""The MONAI transform that writes the bundle evaluator's predicted 2D masks as ``<case>.png``.

MONAI's ``SaveImaged`` cannot write 2D NIfTI without resampling, and its PNG writer transposes
rows-first arrays, so the 2D jobs (``isic2017.json``, ``polyp.json``, ``evaluate.json``) write
their predictions with :class:`SaveMask2Dd`: the same files as ``balr-sam infer`` writes, which
:func:`~balr_sam.evaluation.images2d.evaluate_2d_predictions` then scores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch
from monai.transforms import MapTransform

from balr_sam.data.io import strip_suffix
from balr_sam.types import PathLike

__all__ = ["SaveMask2Dd"]


class SaveMask2Dd(MapTransform):
    """Write 2D label maps as 8-bit PNG masks ``<output_dir>/<case><output_postfix>.png``, atomically.

    The same files as ``balr-sam infer`` writes for 2D images: rows first (the image as
    displayed), label ``k`` stored as ``k * scale`` (0/255 for binary masks). ``case`` is the
    name without suffix of the MetaTensor's ``filename_or_obj`` (the input image, which
    ``Invertd`` copies to the prediction), else of ``data[name_key]``.

    Args:
        keys: keys of ``1 x H x W`` (or ``H x W``) label maps (after ``AsDiscreted(argmax=True)``).
        output_dir: folder, created if needed.
        output_postfix: appended to the case name (default none).
        scale: multiplier of the label values (255: binary masks as 0/255).
        name_key: item key holding the input path when the label map carries no file name.
        allow_missing_keys: skip absent keys.
    """

    def __init__(
        self, keys: Any, output_dir: PathLike, output_postfix: str = "", scale: int = 255, name_key: str = "image", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.output_postfix = output_postfix
        self.scale = scale
        self.name_key = name_key

    def _case(self, d: Dict[Any, Any], key: Any) -> str:
        for value in (d[key], d.get(self.name_key)):
            meta = getattr(value, "meta", None)
            if meta and meta.get("filename_or_obj"):
                return strip_suffix(Path(str(meta["filename_or_obj"])).name)
            if isinstance(value, (str, Path)):
                return strip_suffix(Path(value).name)
        raise ValueError(f"SaveMask2Dd: no file name for {key!r} (no filename_or_obj and no {self.name_key!r} path)")

    def __call__(self, data: Any) -> Dict[Any, Any]:
        from balr_sam.inference.writers import write_label_png

        d = dict(data)
        for key in self.key_iterator(d):
            arr = d[key].detach().cpu().numpy() if isinstance(d[key], torch.Tensor) else np.asarray(d[key])
            if arr.ndim == 3 and arr.shape[0] == 1:
                arr = arr[0]
            if arr.ndim != 2:
                raise ValueError(f"SaveMask2Dd: {key!r} must be a 1 x H x W label map, got shape {tuple(arr.shape)}")
            write_label_png(self.output_dir / f"{self._case(d, key)}{self.output_postfix}.png", np.rint(arr).astype(np.int64), scale=self.scale)
        return d
