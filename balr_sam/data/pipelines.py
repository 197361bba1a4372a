"""Training and inference pipelines: the MONAI ``Compose`` chains each data format goes through.

Conventions (the rest of the product relies on them):

- **Axis order of CT volumes**: after loading, volumes are ``1 x X x Y x Z`` MetaTensors in the
  file's voxel order with a voxel -> RAS affine; every pipeline then reorients them to
  :data:`AXCODES` = ``"PLS"``: axis 1 (H, image rows) runs anterior -> posterior, axis 2 (W,
  image columns) runs patient right -> left, axis 3 (D) inferior -> superior. Axial slices are
  therefore the **last axis** (MONAI ``SliceInferer(spatial_dim=2)`` slices it), and an axial
  slice ``volume[0, :, :, k]`` is in the radiological display convention (anterior up, the
  patient's right on the image's left), the same convention as TransUNet's preprocessed slices
  (``sitk.GetArrayFromImage`` order of the BTCV volumes).
- **Intensities**: CT is clipped to the HU window :data:`HU_WINDOW` = [-125, 275] and scaled to
  [0, 1]; RGB images are scaled from [0, 255] to [0, 1].
- **Labels**: integer class ids of the product's label set, converted on load by
  :class:`~balr_sam.data.transforms.MapLabelsd`.
- **Channels**: the network repeats a single channel to three itself; training pipelines return
  3-channel images (``RepeatChanneld``) as SAM expects, inference pipelines return one channel
  (``channels=3`` to repeat) to keep whole volumes small.

:func:`transforms_for_datalist` picks the pipeline for a prepared datalist's ``format`` and split.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from monai.transforms import (
    Compose,
    EnsureTyped,
    Orientationd,
    RandFlipd,
    RandRotated,
    RepeatChanneld,
    Resized,
    ScaleIntensityRanged,
)

from balr_sam.data.transforms import (
    AlignToReferenced,
    LoadArrayd,
    LoadImage2Dd,
    LoadMask2Dd,
    LoadVolumed,
    MapLabelsd,
    RandSampleSlicesd,
)

__all__ = [
    "AXCODES",
    "HU_WINDOW",
    "ct_inference_preprocessing",
    "ct_train_transforms",
    "image2d_inference_preprocessing",
    "image2d_train_transforms",
    "synapse_h5_preprocessing",
    "synapse_npz_train_transforms",
    "transforms_for_datalist",
]

#: Orientation every CT pipeline puts volumes in: axial slices last, radiological display in-plane.
AXCODES = "PLS"
#: Abdominal CT window in Hounsfield units (TransUNet/SAMed): clipped, then scaled to [0, 1].
HU_WINDOW: Tuple[float, float] = (-125.0, 275.0)


def _orientation(keys) -> Orientationd:
    return Orientationd(keys=keys, axcodes=AXCODES, labels=None)


def _augment_2d(keys: Sequence[str], modes: Sequence[str], rotate_range_deg: float, rotate_prob: float, flip_prob: float, flip_axes: Sequence[int]) -> list:
    ops: list = []
    if rotate_prob > 0 and rotate_range_deg > 0:
        ops.append(
            RandRotated(keys=keys, range_x=float(np.deg2rad(rotate_range_deg)), prob=rotate_prob, mode=list(modes), padding_mode="zeros", keep_size=True)
        )
    for axis in flip_axes:
        if flip_prob > 0:
            ops.append(RandFlipd(keys=keys, prob=flip_prob, spatial_axis=int(axis)))
    return ops


def ct_train_transforms(
    img_size: int = 512,
    num_slices: int = 4,
    foreground_fraction: float = 0.5,
    class_balanced: bool = False,
    rotate_range_deg: float = 20.0,
    rotate_prob: float = 0.5,
    flip_prob: float = 0.5,
    flip_axes: Sequence[int] = (0,),
    hu_window: Tuple[float, float] = HU_WINDOW,
    label_set: str = "synapse",
    strict_labels: bool = True,
    image_key: str = "image",
    label_key: str = "label",
) -> Compose:
    """Training pipeline for CT volumes: volume + label in, ``num_slices`` augmented 2D slices out.

    Load (:class:`LoadVolumed`) -> check label grid (:class:`AlignToReferenced`) -> map labels
    (:class:`MapLabelsd`, per-case ``label_map``) -> ``Orientationd("PLS")`` -> HU window to
    [0, 1] -> *(deterministic part ends: MONAI's ``CacheDataset`` caches up to here)* ->
    :class:`RandSampleSlicesd` -> ``Resized`` to ``img_size`` -> ``RandRotated`` (±
    ``rotate_range_deg``) -> ``RandFlipd`` -> ``RepeatChanneld`` to 3 channels.

    Flips default to the anterior-posterior axis only: left-right flips swap the meaning of
    "kidney left"/"kidney right" for a model that sees position. Pass ``flip_axes=(0, 1)`` for
    TransUNet's ``random_rot_flip``-like augmentation.

    Args:
        img_size: output side ``S``.
        num_slices: slices sampled per volume and call.
        foreground_fraction: fraction of slices drawn among slices with foreground.
        class_balanced: draw a class first, then a slice containing it.
        rotate_range_deg: maximum in-plane rotation in degrees.
        rotate_prob: probability of a rotation.
        flip_prob: probability of a flip, per axis in ``flip_axes``.
        flip_axes: in-plane axes to flip (0 = rows/AP, 1 = columns/LR).
        hu_window: (low, high) HU clipped and scaled to [0, 1].
        label_set: the product's label set.
        strict_labels: reject label values the source numbering does not define.
        image_key, label_key: item keys (paths in, tensors out).

    Returns:
        ``Compose`` mapping ``{"image": path, "label": path, "label_map": ...}`` to a list of
        ``num_slices`` dicts with ``image`` ``3 x S x S`` float32 in [0, 1] and ``label``
        ``1 x S x S`` int64.
    """
    keys = [image_key, label_key]
    return Compose(
        [
            LoadVolumed(keys=keys, dtype=[np.float32, np.float32]),
            AlignToReferenced(keys=label_key, ref_key=image_key),
            MapLabelsd(keys=label_key, label_set=label_set, strict=strict_labels),
            _orientation(keys),
            ScaleIntensityRanged(keys=image_key, a_min=hu_window[0], a_max=hu_window[1], b_min=0.0, b_max=1.0, clip=True),
            RandSampleSlicesd(keys=keys, label_key=label_key, num_samples=num_slices, foreground_fraction=foreground_fraction, class_balanced=class_balanced),
            Resized(keys=keys, spatial_size=(img_size, img_size), mode=("bilinear", "nearest")),
            *_augment_2d(keys, ("bilinear", "nearest"), rotate_range_deg, rotate_prob, flip_prob, flip_axes),
            RepeatChanneld(keys=image_key, repeats=3),
            EnsureTyped(keys=image_key, dtype=torch.float32, track_meta=False),
            EnsureTyped(keys=label_key, dtype=torch.int64, track_meta=False),
        ]
    )


def ct_inference_preprocessing(
    img_size: int = 512,
    hu_window: Tuple[float, float] = HU_WINDOW,
    image_key: str = "image",
    label_key: Optional[str] = None,
    label_set: str = "synapse",
    strict_labels: bool = True,
    channels: int = 1,
    load: bool = True,
) -> Compose:
    """Whole-volume preprocessing for slice-by-slice inference, invertible by MONAI ``Invertd``.

    Load -> ``Orientationd("PLS")`` -> HU window to [0, 1] -> ``Resized`` in-plane to
    ``img_size`` (depth kept). Predict with ``SliceInferer(spatial_dim=2)`` over the last axis,
    then restore the original geometry with::

        Invertd(keys="pred", transform=preprocessing, orig_keys="image", nearest_interp=False)

    which undoes the resize and the reorientation: the result has the input file's exact shape
    and affine (``SaveImaged`` writes it in the original geometry). Invert logits/probabilities
    (bilinear) and take the argmax afterwards, or argmax first and pass ``nearest_interp=True``.

    Args:
        img_size: in-plane side ``S`` the model sees.
        hu_window: (low, high) HU clipped and scaled to [0, 1].
        image_key: key of the volume path (file or DICOM folder).
        label_key: optional reference label, loaded for evaluation: checked against the image's
            grid, reordered to the image's voxel order and mapped to ``label_set``, but kept in
            the original geometry (not reoriented, not resized) to compare with the inverted
            prediction.
        label_set: the product's label set (for ``label_key``).
        strict_labels: reject label values outside the source numbering.
        channels: 1, or 3 to repeat the channel (``RepeatChannel`` is ignored by ``Invertd``).
        load: include the loader (``False`` when the item already holds a loaded MetaTensor).

    Returns:
        ``Compose``; ``image`` becomes ``channels x S x S x D`` float32 in [0, 1].
    """
    ops: list = []
    if load:
        ops.append(LoadVolumed(keys=image_key, dtype=np.float32))
        if label_key:
            ops.append(LoadVolumed(keys=label_key, dtype=np.float32, allow_missing_keys=True))
    if label_key:
        ops += [
            AlignToReferenced(keys=label_key, ref_key=image_key, allow_missing_keys=True),
            MapLabelsd(keys=label_key, label_set=label_set, strict=strict_labels, allow_missing_keys=True),
        ]
    ops += [
        _orientation(image_key),
        ScaleIntensityRanged(keys=image_key, a_min=hu_window[0], a_max=hu_window[1], b_min=0.0, b_max=1.0, clip=True),
        Resized(keys=image_key, spatial_size=(img_size, img_size, -1), mode="bilinear"),
    ]
    if channels != 1:
        ops.append(RepeatChanneld(keys=image_key, repeats=channels))
    return Compose(ops)


def image2d_train_transforms(
    img_size: int = 512,
    mask_threshold: float = 127,
    rotate_range_deg: float = 20.0,
    rotate_prob: float = 0.5,
    flip_prob: float = 0.5,
    flip_axes: Sequence[int] = (0, 1),
    image_key: str = "image",
    label_key: str = "label",
) -> Compose:
    """Training pipeline for 2D RGB tasks (ISIC 2017, polyp).

    RGB read -> mask read and binarised (``> mask_threshold``) -> shape check -> [0, 255] to
    [0, 1] -> ``Resized`` -> ``RandRotated`` -> ``RandFlipd`` (both axes: no laterality in these
    tasks).

    Args:
        img_size: output side ``S``.
        mask_threshold: 127 for JPEG masks and ISIC/PraNet PNGs, 0 for {0, 1} masks.
        rotate_range_deg, rotate_prob, flip_prob, flip_axes: augmentation (see
            :func:`ct_train_transforms`).
        image_key, label_key: item keys.

    Returns:
        ``Compose`` mapping ``{"image": path, "label": path}`` to ``image`` ``3 x S x S``
        float32 in [0, 1] and ``label`` ``1 x S x S`` int64 in {0, 1}.
    """
    keys = [image_key, label_key]
    return Compose(
        [
            LoadImage2Dd(keys=image_key),
            LoadMask2Dd(keys=label_key, threshold=mask_threshold),
            AlignToReferenced(keys=label_key, ref_key=image_key),
            ScaleIntensityRanged(keys=image_key, a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0, clip=True),
            Resized(keys=keys, spatial_size=(img_size, img_size), mode=("bilinear", "nearest")),
            *_augment_2d(keys, ("bilinear", "nearest"), rotate_range_deg, rotate_prob, flip_prob, flip_axes),
            EnsureTyped(keys=image_key, dtype=torch.float32, track_meta=False),
            EnsureTyped(keys=label_key, dtype=torch.int64, track_meta=False),
        ]
    )


def image2d_inference_preprocessing(
    img_size: int = 512,
    mask_threshold: float = 127,
    image_key: str = "image",
    label_key: Optional[str] = None,
    load: bool = True,
) -> Compose:
    """Preprocessing of a 2D RGB image for inference, invertible by ``Invertd``.

    RGB read -> [0, 1] -> ``Resized`` to ``img_size``. An optional mask (``label_key``) is read,
    binarised and shape-checked but kept at the original size for metrics.

    Returns:
        ``Compose``; ``image`` becomes ``3 x S x S`` float32 in [0, 1].
    """
    ops: list = []
    if load:
        ops.append(LoadImage2Dd(keys=image_key))
        if label_key:
            ops.append(LoadMask2Dd(keys=label_key, threshold=mask_threshold, allow_missing_keys=True))
    if label_key:
        ops.append(AlignToReferenced(keys=label_key, ref_key=image_key, allow_missing_keys=True))
    ops += [
        ScaleIntensityRanged(keys=image_key, a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0, clip=True),
        Resized(keys=image_key, spatial_size=(img_size, img_size), mode="bilinear"),
    ]
    return Compose(ops)


def synapse_npz_train_transforms(
    img_size: int = 512,
    rotate_range_deg: float = 20.0,
    rotate_prob: float = 0.5,
    flip_prob: float = 0.5,
    flip_axes: Sequence[int] = (0,),
    label_set: str = "synapse",
    strict_labels: bool = True,
    image_key: str = "image",
    label_key: str = "label",
) -> Compose:
    """Training pipeline for TransUNet's preprocessed slices (``train_npz/*.npz``).

    The ``.npz`` arrays are already windowed and scaled to [0, 1] and in Synapse ids; the label
    is validated against the identity map. Then resize, rotate, flip and repeat to 3 channels as
    in :func:`ct_train_transforms`.

    Returns:
        ``Compose`` mapping ``{"image": npz, "label": npz}`` (the same file) to ``image``
        ``3 x S x S`` float32 and ``label`` ``1 x S x S`` int64.
    """
    keys = [image_key, label_key]
    return Compose(
        [
            LoadArrayd(keys=keys, array_keys=["image", "label"], ndim=2),
            AlignToReferenced(keys=label_key, ref_key=image_key),
            MapLabelsd(keys=label_key, label_set=label_set, source="identity", strict=strict_labels),
            Resized(keys=keys, spatial_size=(img_size, img_size), mode=("bilinear", "nearest")),
            *_augment_2d(keys, ("bilinear", "nearest"), rotate_range_deg, rotate_prob, flip_prob, flip_axes),
            RepeatChanneld(keys=image_key, repeats=3),
            EnsureTyped(keys=image_key, dtype=torch.float32, track_meta=False),
            EnsureTyped(keys=label_key, dtype=torch.int64, track_meta=False),
        ]
    )


def synapse_h5_preprocessing(
    img_size: int = 512,
    image_key: str = "image",
    label_key: Optional[str] = "label",
    label_set: str = "synapse",
    strict_labels: bool = True,
    channels: int = 1,
) -> Compose:
    """Preprocessing of TransUNet's volumes, invertible by ``Invertd``: a test volume
    (``test_vol_h5/*.npy.h5``) or a training case's ``.npz`` slices given as a list (validation).

    ``image`` (``D x H x W`` in an h5 file) becomes ``1 x S x S x D`` (already in [0, 1]); the
    optional label is validated and kept ``1 x H x W x D`` for metrics.

    Args:
        img_size: in-plane side ``S`` the model sees.
        image_key, label_key: item keys (``label_key=None``: no label).
        label_set: the product's label set (labels are in its ids already).
        strict_labels: reject label values outside the label set.
        channels: 1, or 3 to repeat the channel.

    Returns:
        ``Compose``; ``image`` becomes ``channels x S x S x D`` float32 in [0, 1].
    """
    ops: list = [LoadArrayd(keys=image_key, array_keys=["image"], ndim=3)]
    if label_key:
        ops += [
            LoadArrayd(keys=label_key, array_keys=["label"], ndim=3, allow_missing_keys=True),
            AlignToReferenced(keys=label_key, ref_key=image_key, allow_missing_keys=True),
            MapLabelsd(keys=label_key, label_set=label_set, source="identity", strict=strict_labels, allow_missing_keys=True),
        ]
    ops.append(Resized(keys=image_key, spatial_size=(img_size, img_size, -1), mode="bilinear"))
    if channels != 1:
        ops.append(RepeatChanneld(keys=image_key, repeats=channels))
    return Compose(ops)


def transforms_for_datalist(datalist: Mapping, split: str, img_size: int = 512, *, num_slices: Optional[int] = None, **kwargs) -> Compose:
    """Pick the pipeline that fits a prepared datalist's ``format`` and a split.

    ``format`` ``"volume"`` (NIfTI/DICOM CT): :func:`ct_train_transforms` for ``training``,
    :func:`ct_inference_preprocessing` (with the label) otherwise; ``"transunet"``:
    :func:`synapse_npz_train_transforms` / :func:`synapse_h5_preprocessing` (h5 volumes, and
    validation cases as lists of their slices, see
    :func:`~balr_sam.data.datalist.slices_as_volumes`); ``"image2d"``:
    :func:`image2d_train_transforms` / :func:`image2d_inference_preprocessing` with the
    datalist's ``mask_threshold``.

    Args:
        datalist: the datalist (its ``format``, ``label_set`` and ``mask_threshold`` are used).
        split: ``"training"`` gets the training pipeline, any other split the inference one.
        img_size: side ``S`` the model sees.
        num_slices: slices drawn per volume and call by the volume format's training pipeline
            (its ``num_slices``); the other formats' training items are single 2D slices or
            images already, so it does not apply to them. ``None``: the factory's default.
        kwargs: passed to the chosen factory.

    Returns:
        the ``Compose``.

    Raises:
        ValueError: an unknown ``format``.
    """
    fmt = datalist.get("format")
    label_set = datalist.get("label_set", "synapse")
    train = split == "training"
    if fmt == "volume":
        if train:
            if num_slices is not None:
                kwargs["num_slices"] = num_slices
            return ct_train_transforms(img_size=img_size, label_set=label_set, **kwargs)
        return ct_inference_preprocessing(img_size=img_size, label_key="label", label_set=label_set, **kwargs)
    if fmt == "transunet":
        if train:
            return synapse_npz_train_transforms(img_size=img_size, label_set=label_set, **kwargs)
        return synapse_h5_preprocessing(img_size=img_size, label_set=label_set, **kwargs)
    if fmt == "image2d":
        threshold = datalist.get("mask_threshold", 127)
        if train:
            return image2d_train_transforms(img_size=img_size, mask_threshold=threshold, **kwargs)
        return image2d_inference_preprocessing(img_size=img_size, mask_threshold=threshold, label_key="label", **kwargs)
    raise ValueError(f"datalist format {fmt!r} is not one of 'volume', 'transunet', 'image2d'")
