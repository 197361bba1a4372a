"""MONAI dictionary transforms for BALR-SAM's data: loading, label checks and mapping, slice sampling.

- **Loading**: :class:`LoadVolumed` (NIfTI, NRRD/MHA, DICOM series: ``1 x X x Y x Z``
  MetaTensors in the file's voxel order with a voxel -> RAS affine), :class:`LoadImage2Dd` and
  :class:`LoadMask2Dd` (2D RGB images and binary masks, rows first), :class:`LoadArrayd`
  (TransUNet's ``.npz`` slices and ``.npy.h5`` volumes).
- **Labels**: :class:`AlignToReferenced` checks that a label lies on its image's grid;
  :class:`MapLabelsd` converts source numberings (raw BTCV, TotalSegmentator) to the product's
  ids (see :mod:`balr_sam.labels`), reading the per-case ``"label_map"`` entry that the
  datalists written by :mod:`balr_sam.data.prepare` carry; :func:`check_label_values`.
- **Sampling**: :class:`RandSampleSlicesd` draws foreground-aware 2D slices from volumes.

The training and inference pipelines composed from them (orientation, HU window, resizing,
augmentation) are in :mod:`balr_sam.data.pipelines`.

Errors in the input raise :class:`balr_sam.errors.DataError` (file path first). Inside a MONAI
``Compose`` MONAI wraps it in a ``RuntimeError``; :func:`find_data_error` digs it out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Hashable, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import EnsureChannelFirst, MapTransform, Randomizable
from monai.transforms.traits import MultiSampleTrait
from monai.utils import convert_to_dst_type

from balr_sam.data.io import VolumeReader, align_to_reference, read_array, read_image_2d, read_mask_2d, read_slices
from balr_sam.errors import DataError, find_error
from balr_sam.labels import get_label_set

__all__ = [
    "AlignToReferenced",
    "LoadArrayd",
    "LoadImage2Dd",
    "LoadMask2Dd",
    "LoadVolumed",
    "MapLabelsd",
    "RandSampleSlicesd",
    "check_label_values",
    "find_data_error",
]


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

    The value of each key is the file path, or a list of one case's ``.npz`` slice files in
    slice order, stacked into a volume (:func:`~balr_sam.data.io.read_slices`: how a training
    case that TransUNet ships as slices is validated as a whole volume). The array read is the
    one named ``array_keys[i]`` in the file (by default the key itself: ``"image"``, ``"label"``).

    Args:
        keys: keys whose values are ``.npz``/``.h5`` paths or lists of ``.npz`` paths.
        array_keys: names of the arrays in the files, one per key (default: the keys).
        ndim: expected dimensionality (2 for ``train_npz`` slices, 3 for ``test_vol_h5``
            volumes and stacked slices).
        dtype: output dtype.
        allow_missing_keys: skip absent keys.

    Returns (per key):
        ``1 x H x W`` (slices) or ``1 x H x W x D`` (volumes, stored ``D x H x W``; stacked
        slices) float32 MetaTensor with an identity affine (the files carry no geometry);
        ``filename_or_obj`` is the file (the first slice for stacked slices).

    Raises:
        DataError: unreadable file, missing array, wrong dimensionality, NaN/Inf.
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
            value = d[key]
            if isinstance(value, (list, tuple)):
                if self.ndim not in (None, 3):
                    raise DataError(
                        f"{value[0] if value else key}: expected a {self.ndim}D array in {name!r}, got a list of {len(value)} slice files (a volume)"
                    )
                arr = read_slices(value, name).astype(self.dtype)
                path = str(value[0])
            else:
                arr = read_array(value, name, ndim=self.ndim).astype(self.dtype)
                path = str(value)
            d[key] = MetaTensor(
                torch.from_numpy(arr[None].copy()),
                meta={"filename_or_obj": path, "spatial_shape": np.asarray(arr.shape), "original_channel_dim": float("nan")},
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
                arr,
                _as_numpy(img.affine),
                ref_shape,
                _as_numpy(ref.affine),
                path=path,
                ref_path=ref_path,
                tolerance=self.tolerance,
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
        raise DataError(f"{path}: label values {shown} are outside the {source!r} label map of {label_set!r} (valid values 0..{limit})")
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
                raise DataError(f"{path}: unknown label map {source!r} for label set {self.label_set!r}; known: {sorted(lut_set.maps)}")
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
