"""MONAI dictionary transforms and transform pipelines for BALR-SAM's data.

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
- **Labels**: integer class ids of the product's label set (see :mod:`balr_sam.labels`); source
  numberings (raw BTCV, TotalSegmentator) are converted on load by :class:`MapLabelsd`, which
  reads the per-case ``"label_map"`` entry that the datalists written by
  :mod:`balr_sam.data.prepare` carry.
- **Channels**: the network repeats a single channel to three itself; training pipelines return
  3-channel images (``RepeatChanneld``) as SAM expects, inference pipelines return one channel
  (``channels=3`` to repeat) to keep whole volumes small.

Errors in the input raise :class:`balr_sam.errors.DataError` (file path first). Inside a MONAI
``Compose`` MONAI wraps it in a ``RuntimeError``; :func:`find_data_error` digs it out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Hashable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    EnsureChannelFirst,
    EnsureTyped,
    MapTransform,
    Orientationd,
    Randomizable,
    RandFlipd,
    RandRotated,
    RepeatChanneld,
    Resized,
    ScaleIntensityRanged,
)
from monai.transforms.traits import MultiSampleTrait
from monai.utils import convert_to_dst_type

from balr_sam.data.io import VolumeReader, align_to_reference, read_array, read_image_2d, read_mask_2d
from balr_sam.errors import DataError, find_error
from balr_sam.labels import get_label_set

__all__ = [
    "AXCODES",
    "HU_WINDOW",
    "AlignToReferenced",
    "LoadArrayd",
    "LoadImage2Dd",
    "LoadMask2Dd",
    "LoadVolumed",
    "MapLabelsd",
    "RandSampleSlicesd",
    "check_label_values",
    "ct_inference_preprocessing",
    "ct_train_transforms",
    "find_data_error",
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


def find_data_error(exc: BaseException) -> Optional[DataError]:
    """Return the :class:`DataError` in ``exc``'s cause/context chain (MONAI's ``Compose`` wraps
    transform errors in ``RuntimeError``), or ``None``."""
    return find_error(exc, DataError)


def _meta_path(img, fallback: str = "<array>") -> str:
    if isinstance(img, MetaTensor):
        name = img.meta.get("filename_or_obj")
        if name:
            return str(name)
    return fallback


def _as_numpy(img) -> np.ndarray:
    if isinstance(img, torch.Tensor):
        return img.detach().cpu().numpy()
    return np.asarray(img)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


class LoadVolumed(MapTransform):
    """Load CT volumes (NIfTI, NRRD/MHA, DICOM series folder) as channel-first MetaTensors.

    Does what MONAI's ``LoadImage(reader=VolumeReader(), ensure_channel_first=True)`` does
    (:class:`balr_sam.data.io.VolumeReader`, ``MetaTensor``, ``EnsureChannelFirst``) without its
    error wrapping, so that :class:`~balr_sam.errors.DataError` reaches the caller. The metadata keep
    ``affine``/``original_affine`` (voxel -> RAS), ``spatial_shape`` and ``filename_or_obj`` for
    ``Invertd`` and ``SaveImaged``.

    Args:
        keys: keys whose values are paths (file or DICOM folder).
        dtype: output dtype (one for all keys or one per key); ``None`` keeps the file's.
        check_finite: raise on NaN/Inf voxels.
        dicom_backend: ``"sitk"`` or ``"pydicom"``.
        allow_missing_keys: skip absent keys.

    Returns (per key):
        ``1 x X x Y x Z`` MetaTensor in the file's voxel order.
    """

    def __init__(
        self,
        keys: KeysCollection,
        dtype: Union[Sequence, np.dtype, type, str, None] = np.float32,
        check_finite: bool = True,
        dicom_backend: str = "sitk",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        dtypes = dtype if isinstance(dtype, (list, tuple)) else [dtype] * len(self.keys)
        if len(dtypes) != len(self.keys):
            raise ValueError("dtype must be one value or one per key")
        self.reader = VolumeReader(check_finite=check_finite, dicom_backend=dicom_backend)
        self.dtypes = dtypes
        self._channel_first = EnsureChannelFirst()

    def __call__(self, data: Mapping[Hashable, object]) -> Dict[Hashable, object]:
        d = dict(data)
        for key, dtype in self.key_iterator(d, self.dtypes):
            if not isinstance(d[key], (str, Path)):
                raise DataError(f"{d[key]!r}: expected a path for key {key!r}")
            # what monai.transforms.LoadImage does with a reader, minus its error wrapping
            array, meta = self.reader.get_data(self.reader.read(str(d[key])))
            if dtype is not None:
                array = array.astype(dtype, copy=False)
            meta["filename_or_obj"] = str(d[key])
            img = MetaTensor.ensure_torch_and_prune_meta(array, meta)
            d[key] = self._channel_first(img, meta_dict=meta)
        return d


class LoadImage2Dd(MapTransform):
    """Load 2D RGB images (dermoscopy, endoscopy) as ``3 x H x W`` float32 MetaTensors in [0, 255].

    Rows first (``H x W`` as displayed). Grey images are repeated to three channels.

    Args:
        keys: keys whose values are image paths.
        allow_missing_keys: skip absent keys.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            arr = read_image_2d(d[key]).astype(np.float32)
            d[key] = MetaTensor(
                torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))),
                meta={
                    "filename_or_obj": str(d[key]),
                    "spatial_shape": np.asarray(arr.shape[:2]),
                    "original_channel_dim": -1,
                },
            )
        return d


class LoadMask2Dd(MapTransform):
    """Load 2D binary masks as ``1 x H x W`` float32 MetaTensors of 0/1 (``value > threshold``).

    Args:
        keys: keys whose values are mask paths.
        threshold: binarisation threshold; 127 for JPEG masks (Kvasir), 0 for clean masks.
        allow_missing_keys: skip absent keys.
    """

    def __init__(self, keys: KeysCollection, threshold: float = 127, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.threshold = threshold

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            arr = read_mask_2d(d[key], threshold=self.threshold).astype(np.float32)
            d[key] = MetaTensor(
                torch.from_numpy(arr[None]),
                meta={"filename_or_obj": str(d[key]), "spatial_shape": np.asarray(arr.shape), "original_channel_dim": float("nan")},
            )
        return d


class LoadArrayd(MapTransform):
    """Load TransUNet's preprocessed Synapse arrays (``.npz`` slices, ``.npy.h5`` volumes).

    The value of each key is the file path; the array read is the one named ``array_keys[i]``
    in the file (by default the key itself: ``"image"``, ``"label"``).

    Args:
        keys: keys whose values are ``.npz``/``.h5`` paths.
        array_keys: names of the arrays in the files, one per key (default: the keys).
        ndim: expected dimensionality (2 for ``train_npz`` slices, 3 for ``test_vol_h5``).
        dtype: output dtype.
        allow_missing_keys: skip absent keys.

    Returns (per key):
        ``1 x H x W`` (slices) or ``1 x H x W x D`` (volumes, stored ``D x H x W``) float32
        MetaTensor with an identity affine (the files carry no geometry).
    """

    def __init__(
        self,
        keys: KeysCollection,
        array_keys: Optional[Sequence[str]] = None,
        ndim: Optional[int] = None,
        dtype=np.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.array_keys = list(array_keys) if array_keys is not None else [str(k) for k in self.keys]
        if len(self.array_keys) != len(self.keys):
            raise ValueError("array_keys must have one name per key")
        self.ndim = ndim
        self.dtype = dtype

    def __call__(self, data):
        d = dict(data)
        for key, name in self.key_iterator(d, self.array_keys):
            arr = read_array(d[key], name, ndim=self.ndim).astype(self.dtype)
            d[key] = MetaTensor(
                torch.from_numpy(arr[None].copy()),
                meta={"filename_or_obj": str(d[key]), "spatial_shape": np.asarray(arr.shape), "original_channel_dim": float("nan")},
            )
        return d


class AlignToReferenced(MapTransform):
    """Check that labels lie on their image's voxel grid and put them in the image's voxel order.

    For volumes, the grids must coincide in world space (same spacing, origin and axes; a label
    stored with flipped or permuted axes, e.g. LAS for an LPS image, is reordered without
    interpolation). For 2D images (no affine) the spatial shapes must be equal.

    Args:
        keys: label keys.
        ref_key: the image key.
        tolerance: allowed affine difference as a fraction of the voxel size.
        allow_missing_keys: skip absent keys.

    Raises:
        DataError: shape or geometry mismatch, naming the label file.
    """

    def __init__(self, keys: KeysCollection, ref_key: str = "image", tolerance: float = 1e-2, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key
        self.tolerance = tolerance

    def __call__(self, data):
        d = dict(data)
        ref = d[self.ref_key]
        ref_shape = tuple(ref.shape[1:])
        for key in self.key_iterator(d):
            img = d[key]
            shape = tuple(img.shape[1:])
            path, ref_path = _meta_path(img, str(key)), _meta_path(ref, self.ref_key)
            if len(shape) != len(ref_shape):
                raise DataError(f"{path}: label is {len(shape)}D but image {ref_path} is {len(ref_shape)}D")
            if len(shape) != 3 or not isinstance(img, MetaTensor) or not isinstance(ref, MetaTensor):
                if shape != ref_shape:
                    raise DataError(f"{path}: label shape {shape} does not match image shape {ref_shape} of {ref_path}")
                continue
            arr = _as_numpy(img)
            aligned = align_to_reference(
                arr, _as_numpy(img.affine), ref_shape, _as_numpy(ref.affine),
                path=path, ref_path=ref_path, tolerance=self.tolerance,
            )
            if aligned is arr:  # already in the image's voxel order
                continue
            meta = dict(img.meta)
            meta["affine"] = ref.affine.clone()
            meta["original_affine"] = np.asarray(_as_numpy(ref.affine), dtype=np.float64)
            meta["spatial_shape"] = np.asarray(ref_shape)
            d[key] = MetaTensor(torch.from_numpy(np.ascontiguousarray(aligned)), meta=meta)
        return d


# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------


def check_label_values(label: np.ndarray, label_set: str, source: str, path: str = "<label>") -> np.ndarray:
    """Validate a label array against a source numbering and return it as int64.

    Args:
        label: array of any shape.
        label_set: the product's label set (``"synapse"``...).
        source: the numbering of ``label`` (a key of the set's ``maps``).
        path: file name for messages.

    Raises:
        DataError: non-integer, negative, NaN or larger-than-defined values (message lists them).
    """
    arr = np.asarray(label)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise DataError(f"{path}: label contains NaN/Inf values")
        rounded = np.rint(arr)
        if np.any(rounded != arr):
            bad = np.unique(arr[rounded != arr])[:5]
            raise DataError(f"{path}: label values must be integers, found {bad.tolist()}")
        arr = rounded
    if arr.size == 0:
        return arr.astype(np.int64)
    limit = get_label_set(label_set).max_source_value(source)
    # range check before the int64 cast: a float such as 1e30 would wrap to a meaningless integer
    outside = (arr < 0) | (arr > limit)
    if outside.any():
        values = np.unique(arr[outside])
        shown = [int(v) if abs(float(v)) < 2**31 else float(f"{float(v):.6g}") for v in values[:10]]
        shown += ["..."] if values.size > 10 else []
        raise DataError(
            f"{path}: label values {shown} are outside the {source!r} label map of {label_set!r} "
            f"(valid values 0..{limit})"
        )
    return arr.astype(np.int64, copy=False)


class MapLabelsd(MapTransform):
    """Convert label maps from a source numbering to the product's ids (``remap_labels``).

    The source is ``source`` when given, else the item's ``source_key`` entry (datalists write
    ``"label_map": "btcv"``/``"totalseg"`` per case), else ``default_source``. Source values that
    the map does not list become background (e.g. BTCV's esophagus); with ``strict=True`` values
    the source numbering does not define at all (e.g. 200 in a BTCV label), negative or
    non-integer values raise.

    Args:
        keys: label keys (any shape, e.g. ``1 x X x Y x Z``).
        label_set: the product's label set name.
        source: fixed source numbering, or ``None`` to read it per item.
        source_key: item key holding the source name.
        default_source: used when neither is given.
        strict: validate values (see above).
        allow_missing_keys: skip absent keys.

    Returns (per key):
        same shape and meta, float32 values in the set's ids.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_set: str = "synapse",
        source: Optional[str] = None,
        source_key: str = "label_map",
        default_source: str = "identity",
        strict: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        get_label_set(label_set)  # fail early on a bad name
        self.label_set = label_set
        self.source = source
        self.source_key = source_key
        self.default_source = default_source
        self.strict = strict

    def __call__(self, data):
        d = dict(data)
        source = self.source or d.get(self.source_key) or self.default_source
        lut_set = get_label_set(self.label_set)
        for key in self.key_iterator(d):
            img = d[key]
            path = _meta_path(img, str(key))
            if source not in lut_set.maps:
                raise DataError(f"{path}: unknown label map {source!r} for label set {self.label_set!r}; "
                                f"known: {sorted(lut_set.maps)}")
            arr = _as_numpy(img)
            if self.strict:
                ints = check_label_values(arr, self.label_set, source, path)
            else:
                # every value above the map's largest source value is background: clip there (before
                # the int cast, so huge floats cannot wrap) and keep the lookup table small
                top = lut_set.clip_value(source)
                if np.issubdtype(arr.dtype, np.floating):
                    arr = np.rint(np.nan_to_num(arr, nan=0.0, posinf=top, neginf=0.0))
                ints = np.clip(arr, 0, top).astype(np.int64)
            lut = lut_set.lookup_table(source, int(ints.max()) if ints.size else 0)
            mapped = torch.from_numpy(lut[ints].astype(np.float32))
            d[key] = convert_to_dst_type(mapped, dst=img, dtype=torch.float32)[0] if isinstance(img, torch.Tensor) else mapped
        return d


# --------------------------------------------------------------------------------------------
# Slice sampling
# --------------------------------------------------------------------------------------------


class RandSampleSlicesd(Randomizable, MapTransform, MultiSampleTrait):
    """Sample 2D slices along the last spatial axis of volumes, foreground-aware.

    Each of the ``num_samples`` slices is, with probability ``foreground_fraction``, drawn from
    the slices whose label has foreground (uniformly among them, or, with
    ``class_balanced=True``, by first drawing a class present in the volume, then a slice
    containing it, so that small organs are seen as often as the liver), and otherwise uniformly
    from all slices. Volumes without foreground are sampled uniformly.

    Args:
        keys: keys to slice (``C x H x W x D`` each, same ``D``).
        label_key: label used for foreground (``1 x H x W x D`` integer ids).
        num_samples: slices per volume (the transform returns a list of that many dicts).
        foreground_fraction: probability that a sample comes from a foreground slice.
        class_balanced: draw the class first (see above).
        allow_missing_keys: skip absent keys.

    Returns:
        list of ``num_samples`` dicts; each sliced key becomes a ``C x H x W`` MetaTensor
        (``slice_index`` in its meta, affine the in-plane 3 x 3), other entries are copied.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str = "label",
        num_samples: int = 4,
        foreground_fraction: float = 0.5,
        class_balanced: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if num_samples < 1:
            raise ValueError("num_samples must be >= 1")
        if not 0.0 <= foreground_fraction <= 1.0:
            raise ValueError("foreground_fraction must be in [0, 1]")
        self.label_key = label_key
        self.num_samples = int(num_samples)
        self.foreground_fraction = float(foreground_fraction)
        self.class_balanced = class_balanced
        self._indices: List[int] = []

    def randomize(self, label: np.ndarray) -> None:
        depth = label.shape[-1]
        flat = label.reshape(-1, depth)
        fg_slices = np.flatnonzero((flat > 0).any(axis=0))
        per_class: Dict[int, np.ndarray] = {}
        if self.class_balanced and fg_slices.size:
            for c in np.unique(flat[:, fg_slices]):
                if c > 0:
                    per_class[int(c)] = np.flatnonzero((flat == c).any(axis=0))
        classes = sorted(per_class)
        self._indices = []
        for _ in range(self.num_samples):
            if fg_slices.size and self.R.rand() < self.foreground_fraction:
                if classes:
                    pool = per_class[classes[self.R.randint(len(classes))]]
                else:
                    pool = fg_slices
                self._indices.append(int(pool[self.R.randint(pool.size)]))
            else:
                self._indices.append(int(self.R.randint(depth)))

    def __call__(self, data) -> List[Dict[Hashable, object]]:
        d = dict(data)
        label = _as_numpy(d[self.label_key])
        self.randomize(label)
        out = []
        for k in self._indices:
            sample = dict(d)
            for key in self.key_iterator(d):
                img = d[key]
                tensor = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)
                sl = tensor[..., k].clone()
                meta = {}
                affine2d = torch.eye(3, dtype=torch.float64)
                if isinstance(img, MetaTensor):
                    meta = {m: v for m, v in img.meta.items() if m in ("filename_or_obj", "spacing", "original_channel_dim")}
                    aff = img.affine.to(torch.float64)
                    affine2d[:2, :2] = torch.diag(torch.linalg.norm(aff[:3, :2], dim=0))
                meta["slice_index"] = k
                sample[key] = MetaTensor(sl, affine=affine2d, meta=meta)
            out.append(sample)
        return out


# --------------------------------------------------------------------------------------------
# Pipelines
# --------------------------------------------------------------------------------------------


def _orientation(keys) -> Orientationd:
    return Orientationd(keys=keys, axcodes=AXCODES, labels=None)


def _augment_2d(keys: Sequence[str], modes: Sequence[str], rotate_range_deg: float, rotate_prob: float,
                flip_prob: float, flip_axes: Sequence[int]) -> list:
    ops: list = []
    if rotate_prob > 0 and rotate_range_deg > 0:
        ops.append(RandRotated(keys=keys, range_x=float(np.deg2rad(rotate_range_deg)), prob=rotate_prob,
                               mode=list(modes), padding_mode="zeros", keep_size=True))
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
            RandSampleSlicesd(keys=keys, label_key=label_key, num_samples=num_slices,
                              foreground_fraction=foreground_fraction, class_balanced=class_balanced),
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
        ops += [AlignToReferenced(keys=label_key, ref_key=image_key, allow_missing_keys=True),
                MapLabelsd(keys=label_key, label_set=label_set, strict=strict_labels, allow_missing_keys=True)]
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
    """Preprocessing of TransUNet's test volumes (``test_vol_h5/*.npy.h5``), invertible by ``Invertd``.

    ``image`` (``D x H x W`` in the file) becomes ``1 x S x S x D`` (already in [0, 1]); the
    optional label is validated and kept ``1 x H x W x D`` for metrics.
    """
    ops: list = [LoadArrayd(keys=image_key, array_keys=["image"], ndim=3)]
    if label_key:
        ops += [
            LoadArrayd(keys=label_key, array_keys=["label"], ndim=3, allow_missing_keys=True),
            AlignToReferenced(keys=label_key, ref_key=image_key, allow_missing_keys=True),
            MapLabelsd(keys=label_key, label_set=label_set, source="identity", strict=strict_labels,
                       allow_missing_keys=True),
        ]
    ops.append(Resized(keys=image_key, spatial_size=(img_size, img_size, -1), mode="bilinear"))
    if channels != 1:
        ops.append(RepeatChanneld(keys=image_key, repeats=channels))
    return Compose(ops)


def transforms_for_datalist(datalist: Mapping, split: str, img_size: int = 512, **kwargs) -> Compose:
    """Pick the pipeline that fits a prepared datalist's ``format`` and a split.

    ``format`` ``"volume"`` (NIfTI/DICOM CT): :func:`ct_train_transforms` for ``training``,
    :func:`ct_inference_preprocessing` (with the label) otherwise; ``"transunet"``:
    :func:`synapse_npz_train_transforms` / :func:`synapse_h5_preprocessing`; ``"image2d"``:
    :func:`image2d_train_transforms` / :func:`image2d_inference_preprocessing` with the
    datalist's ``mask_threshold``. ``kwargs`` go to the chosen factory.
    """
    fmt = datalist.get("format")
    label_set = datalist.get("label_set", "synapse")
    train = split == "training"
    if fmt == "volume":
        if train:
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
