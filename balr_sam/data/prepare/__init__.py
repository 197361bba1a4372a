"""Dataset conversion: one module per dataset layout, each writing a datalist
(:mod:`balr_sam.data.datalist`) from the dataset's own folders, as nnU-Net's conversion scripts do.

- :mod:`~balr_sam.data.prepare.synapse`: Synapse/BTCV, raw ``img/`` + ``label/``, and
  :mod:`~balr_sam.data.prepare.synapse_npz`: TransUNet's ``train_npz/`` + ``test_vol_h5/``.
- :mod:`~balr_sam.data.prepare.isic2017`: the official ISIC 2017 Part 1 folders.
- :mod:`~balr_sam.data.prepare.polyp`: PraNet's ``TrainDataset/`` + ``TestDataset/<set>/``.
- :mod:`~balr_sam.data.prepare.images2d`: any images + masks folders (Kvasir-SEG, PH2...).
- :mod:`~balr_sam.data.prepare.nifti`: any folder of CT volumes and/or DICOM series.
- :mod:`~balr_sam.data.prepare.common`: what they share (failed cases, pairing, listing).

Every converter reads headers only (``balr-sam prepare --verify`` reads the voxels through
:func:`~balr_sam.data.datalist.verify_datalist`), and with ``skip_bad=True`` leaves a bad case out
(listed under ``failed``) instead of stopping at it.
"""

from __future__ import annotations

from typing import Callable, Dict

from balr_sam.data.prepare.images2d import prepare_images2d
from balr_sam.data.prepare.isic2017 import prepare_isic2017
from balr_sam.data.prepare.nifti import prepare_nifti
from balr_sam.data.prepare.polyp import prepare_polyp
from balr_sam.data.prepare.synapse import prepare_synapse
from balr_sam.data.prepare.synapse_npz import prepare_synapse_npz

__all__ = [
    "PREPARERS",
    "prepare_images2d",
    "prepare_isic2017",
    "prepare_nifti",
    "prepare_polyp",
    "prepare_synapse",
    "prepare_synapse_npz",
]

#: ``prepare`` functions by dataset name (the ``balr-sam prepare`` subcommands).
PREPARERS: Dict[str, Callable[..., dict]] = {
    "synapse": prepare_synapse,
    "isic2017": prepare_isic2017,
    "polyp": prepare_polyp,
    "images2d": prepare_images2d,
    "nifti": prepare_nifti,
}
