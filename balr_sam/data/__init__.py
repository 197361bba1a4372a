"""The data side of BALR-SAM: readers, MONAI transforms, datalist preparation, synthetic data.

- :mod:`balr_sam.data.io`: readers (NIfTI, DICOM series incl. JPEG 2000, 2D images/masks,
  TransUNet ``.npz``/``.h5``) with validation, and a MONAI ``ImageReader`` for volumes.
- :mod:`balr_sam.data.transforms`: MONAI dictionary transforms (loading, label checks, slice sampling).
- :mod:`balr_sam.data.pipelines`: the training/inference pipelines built from them, per datalist format.
- :mod:`balr_sam.data.datalist`: the datalist format (MONAI decathlon-style JSON): write, read,
  load a split, verify every file.
- :mod:`balr_sam.data.prepare`: one converter per dataset layout (``prepare_*``), writing datalists.
- :mod:`balr_sam.data.splits`: the official splits (TransUNet, PraNet, ISIC 2017).
- :mod:`balr_sam.data.synthetic`: deterministic phantoms in the real datasets' layouts.
"""

from balr_sam.data.datalist import load_datalist, read_datalist, verify_datalist, write_datalist
from balr_sam.data.io import VolumeReader, read_dicom_series, read_image_2d, read_mask_2d, read_volume
from balr_sam.data.pipelines import (
    AXCODES,
    HU_WINDOW,
    ct_inference_preprocessing,
    ct_train_transforms,
    image2d_inference_preprocessing,
    image2d_train_transforms,
    synapse_h5_preprocessing,
    synapse_npz_train_transforms,
    transforms_for_datalist,
)
from balr_sam.data.prepare import (
    PREPARERS,
    prepare_images2d,
    prepare_isic2017,
    prepare_nifti,
    prepare_polyp,
    prepare_synapse,
)
from balr_sam.data.synthetic import generate_ct_dataset, generate_isic_dataset, generate_polyp_dataset
from balr_sam.data.transforms import (
    AlignToReferenced,
    LoadArrayd,
    LoadImage2Dd,
    LoadMask2Dd,
    LoadVolumed,
    MapLabelsd,
    RandSampleSlicesd,
    find_data_error,
)

__all__ = [
    "AXCODES",
    "HU_WINDOW",
    "PREPARERS",
    "AlignToReferenced",
    "LoadArrayd",
    "LoadImage2Dd",
    "LoadMask2Dd",
    "LoadVolumed",
    "MapLabelsd",
    "RandSampleSlicesd",
    "VolumeReader",
    "ct_inference_preprocessing",
    "ct_train_transforms",
    "find_data_error",
    "generate_ct_dataset",
    "generate_isic_dataset",
    "generate_polyp_dataset",
    "image2d_inference_preprocessing",
    "image2d_train_transforms",
    "load_datalist",
    "prepare_images2d",
    "prepare_isic2017",
    "prepare_nifti",
    "prepare_polyp",
    "prepare_synapse",
    "read_datalist",
    "read_dicom_series",
    "read_image_2d",
    "read_mask_2d",
    "read_volume",
    "synapse_h5_preprocessing",
    "synapse_npz_train_transforms",
    "transforms_for_datalist",
    "verify_datalist",
    "write_datalist",
]
