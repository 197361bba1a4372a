"""What batch inference writes per case: the label map (NIfTI for volumes, PNG for 2D images) and
its JSON sidecar, each atomically (:mod:`balr_sam.atomic`: temporary file in the same folder,
flushed to disk, then renamed into place), so a reader never sees a half-written file under a
final name. The label map writers pass the crash-test step ``image-temporary-written``
(:func:`balr_sam.atomic.fault_point`) once the temporary file is complete.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping

import numpy as np

from balr_sam.atomic import atomic_write, fault_point

__all__ = ["write_label_nifti", "write_label_png", "case_sidecar"]


def write_label_nifti(path: Path, labels: np.ndarray, affine: np.ndarray) -> None:
    """Write a ``X x Y x Z`` label array as uint8 NIfTI with ``affine`` (voxel -> RAS), atomically."""
    import nibabel as nib

    image = nib.Nifti1Image(np.asarray(labels, dtype=np.uint8), np.asarray(affine, dtype=np.float64))
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=1)

    def write(tmp: str) -> None:
        nib.save(image, tmp)
        fault_point("image-temporary-written")

    atomic_write(path, write, ".nii.gz")


def write_label_png(path: Path, labels: np.ndarray, scale: int = 255) -> None:
    """Write a ``H x W`` binary/label array as an 8-bit PNG (foreground ``scale``), atomically."""
    from PIL import Image

    data = np.clip(np.asarray(labels) * scale, 0, 255).astype(np.uint8)

    def write(tmp: str) -> None:
        Image.fromarray(data).save(tmp, format="PNG")
        fault_point("image-temporary-written")

    atomic_write(path, write, ".png")


def case_sidecar(case: str, image: str, output: Path, label_names: Mapping[Any, str], model: str) -> Dict[str, Any]:
    """The ``<case>.json`` sidecar of one output.

    Args:
        case: the case name (output stem).
        image: the input file or DICOM folder (recorded resolved).
        output: the label map written for it (its file name is recorded).
        label_names: id -> name.
        model: the trained weights used.

    Returns:
        ``{"case", "input", "output", "labels", "model"}``, JSON-ready.
    """
    return {
        "case": case,
        "input": str(Path(image).resolve()),
        "output": output.name,
        "labels": {str(k): v for k, v in label_names.items()},
        "model": model,
    }
