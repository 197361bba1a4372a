"""Writers of tiny datasets in the real on-disk layouts, for the tests (``from _data_factories import ...``).

Each ``make_*_tree`` writes a small tree with the real datasets' exact file names, dtypes, array
keys and folder names, so that tests exercise the same preparation and readers as real data:

- :func:`make_btcv_tree`: raw Synapse/BTCV (``RawData/Training/{img,label}``, ``RawData/Testing/img``).
- :func:`make_transunet_tree`: TransUNet's ``train_npz``/``test_vol_h5`` (+ ``lists/lists_Synapse``).
- :func:`make_isic_tree`: ISIC 2017 Part 1 folders (with superpixel files and metadata CSV).
- :func:`make_polyp_tree`: PraNet's ``TrainDataset``/``TestDataset``.

plus single-file writers (:func:`write_nifti`, :func:`write_dicom_series`, :func:`write_png`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence, Tuple

import numpy as np

from balr_sam.data.splits import ISIC2017_FOLDERS, POLYP_TEST_SETS
from balr_sam.types import PathLike

__all__ = [
    "affine_for",
    "make_btcv_tree",
    "make_isic_tree",
    "make_polyp_tree",
    "make_transunet_tree",
    "write_dicom_series",
    "write_nifti",
    "write_png",
]


def affine_for(spacing: Sequence[float], codes: str = "RAS", origin: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """A diagonal-orientation affine with the given spacing and axis codes (``RAS``, ``LPS``...)."""
    signs = {"R": 1, "L": -1, "A": 1, "P": -1, "S": 1, "I": -1}
    axes = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}
    aff = np.zeros((4, 4))
    for i, c in enumerate(codes):
        aff[axes[c], i] = signs[c] * float(spacing[i])
    aff[:3, 3] = origin
    aff[3, 3] = 1.0
    return aff


def write_nifti(path: PathLike, array: np.ndarray, affine: Optional[np.ndarray] = None, dtype=None) -> Path:
    """Write ``array`` (any dims) as NIfTI with ``affine`` (default identity) as sform and qform."""
    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(array)
    if dtype is not None:
        arr = arr.astype(dtype)
    aff = np.eye(4) if affine is None else np.asarray(affine, dtype=float)
    img = nib.Nifti1Image(arr, aff)
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    nib.save(img, str(path))
    return path


def write_png(path: PathLike, array: np.ndarray, quality: int = 92) -> Path:
    """Write a uint8 ``H x W`` or ``H x W x 3`` array as PNG, or JPEG when the suffix says so."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.asarray(array, dtype=np.uint8))
    if path.suffix.lower() in (".jpg", ".jpeg"):
        img.save(str(path), format="JPEG", quality=quality)
    else:
        img.save(str(path), format="PNG")
    return path


def write_dicom_series(
    folder: PathLike,
    hu: np.ndarray,
    spacing: Sequence[float] = (0.8, 0.8, 2.0),
    origin: Sequence[float] = (-100.0, -120.0, -300.0),
    *,
    series_uid: Optional[str] = None,
    jpeg2000: bool = False,
    skip_slices: Iterable[int] = (),
) -> Path:
    """Write a CT series of ``hu`` (``X x Y x Z``: columns, rows, slices) as one file per slice.

    Axial slices with ImageOrientationPatient ``[1, 0, 0, 0, 1, 0]`` (LPS: columns go to the
    patient's left, rows posterior), positions ``origin + k * spacing[2]`` along z, stored as
    unsigned ``HU + 1024`` with RescaleIntercept -1024, like scanners do. The expected RAS affine
    is ``affine_for(spacing, "LPS", (-origin[0], -origin[1], origin[2]))``. Works with
    pydicom 2.4 and 3; ``jpeg2000=True`` (pydicom 3 with pylibjpeg-openjpeg) compresses the
    pixel data losslessly. Files are named in reverse slice order so that readers must sort.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid(entropy_srcs=[str(folder), "series"])
    study_uid = generate_uid(entropy_srcs=[str(folder), "study"])
    nx, ny, nz = hu.shape
    skip = set(skip_slices)
    for k in range(nz):
        if k in skip:
            continue
        sop_uid = generate_uid(entropy_srcs=[str(folder), str(k)])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.Modality = "CT"
        ds.PatientID = "SYNTH"
        ds.InstanceNumber = k + 1
        ds.Rows, ds.Columns = ny, nx
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]
        ds.SliceThickness = float(spacing[2])
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [float(origin[0]), float(origin[1]), float(origin[2]) + k * float(spacing[2])]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        pixels = np.ascontiguousarray((np.asarray(hu[:, :, k]).T.astype(np.int32) + 1024).clip(0, 65535).astype(np.uint16))
        path = folder / f"slice_{nz - k:04d}.dcm"
        if jpeg2000:
            from pydicom.uid import JPEG2000Lossless

            ds.compress(JPEG2000Lossless, pixels, encoding_plugin="pylibjpeg")
        else:
            ds.PixelData = pixels.tobytes()
        try:
            ds.save_as(str(path), enforce_file_format=True)  # pydicom >= 3
        except TypeError:  # pragma: no cover - pydicom 2.4
            ds.is_little_endian, ds.is_implicit_VR = True, False
            ds.save_as(str(path), write_like_original=False)
    return folder


def _tiny_ct(shape: Tuple[int, int, int], rng: np.random.Generator, btcv: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    image = rng.integers(-200, 300, size=shape).astype(np.int16)
    label = np.zeros(shape, dtype=np.uint8)
    x, y, z = shape
    label[: x // 2, : y // 2, :] = 6 if btcv else 5  # liver
    label[x // 2 :, y // 2 :, : max(1, z // 2)] = 1  # spleen
    return image, label


def make_btcv_tree(
    root: PathLike,
    case_ids: Iterable[int],
    shape: Tuple[int, int, int] = (8, 8, 3),
    spacing: Sequence[float] = (0.75, 0.75, 3.0),
    unlabeled_ids: Iterable[int] = (),
    seed: int = 0,
) -> Path:
    """Raw BTCV layout: ``root/RawData/Training/img/img%04d.nii.gz`` (int16) +
    ``label/label%04d.nii.gz`` (uint8, BTCV ids: liver 6, spleen 1) and
    ``root/RawData/Testing/img/`` for ``unlabeled_ids``. Returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    aff = affine_for(spacing, "LPS", (100.0, 120.0, -200.0))
    train = root / "RawData" / "Training"
    for c in case_ids:
        image, label = _tiny_ct(shape, rng)
        write_nifti(train / "img" / f"img{c:04d}.nii.gz", image, aff)
        write_nifti(train / "label" / f"label{c:04d}.nii.gz", label, aff)
    for c in unlabeled_ids:
        image, _ = _tiny_ct(shape, rng)
        write_nifti(root / "RawData" / "Testing" / "img" / f"img{c:04d}.nii.gz", image, aff)
    return root


def make_transunet_tree(
    root: PathLike,
    train_slices: Dict[int, int],
    test_cases: Iterable[int],
    size: int = 16,
    depth: int = 4,
    train_list: Optional[Sequence[str]] = None,
    seed: int = 0,
) -> Path:
    """TransUNet layout: ``root/train_npz/case%04d_slice%03d.npz`` (``image`` float32 H x W in
    [0, 1], ``label`` float32 ids 0..8) for ``{case: n_slices}``, ``root/test_vol_h5/case%04d.npy.h5``
    (datasets ``image`` float32 D x H x W, ``label`` float32), and ``root/lists/lists_Synapse/train.txt``
    when ``train_list`` is given. Returns ``root``."""
    import h5py

    root = Path(root)
    rng = np.random.default_rng(seed)
    (root / "train_npz").mkdir(parents=True, exist_ok=True)
    for case, n in train_slices.items():
        for s in range(n):
            image = rng.random((size, size)).astype(np.float32)
            label = np.zeros((size, size), dtype=np.float32)
            label[: size // 2, : size // 2] = 5
            label[size // 2 :, size // 2 :] = 8
            np.savez(root / "train_npz" / f"case{case:04d}_slice{s:03d}.npz", image=image, label=label)
    (root / "test_vol_h5").mkdir(parents=True, exist_ok=True)
    for case in test_cases:
        with h5py.File(root / "test_vol_h5" / f"case{case:04d}.npy.h5", "w") as h5:
            h5.create_dataset("image", data=rng.random((depth, size, size)).astype(np.float32))
            label = np.zeros((depth, size, size), dtype=np.float32)
            label[:, 2:6, 2:6] = 1
            h5.create_dataset("label", data=label)
    if train_list is not None:
        lists = root / "lists" / "lists_Synapse"
        lists.mkdir(parents=True, exist_ok=True)
        (lists / "train.txt").write_text("".join(f"{n}\n" for n in train_list))
    return root


def _image_and_mask(rng: np.random.Generator, h: int, w: int) -> Tuple[np.ndarray, np.ndarray]:
    image = rng.integers(0, 255, size=(h, w, 3)).astype(np.uint8)
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 255
    return image, mask


def make_isic_tree(root: PathLike, counts: Dict[str, int], size: Tuple[int, int] = (12, 16), seed: int = 0) -> Path:
    """ISIC 2017 layout: for each split in ``counts`` (``training``/``validation``/``test``),
    ``ISIC_%07d.jpg`` + ``ISIC_%07d_superpixels.png`` in the data folder and
    ``ISIC_%07d_segmentation.png`` in the ground-truth folder; a metadata CSV in the training
    data folder. Returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    idx = 0
    for split, n in counts.items():
        data_dir, gt_dir = (root / f for f in ISIC2017_FOLDERS[split])
        data_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(n):
            image, mask = _image_and_mask(rng, *size)
            write_png(data_dir / f"ISIC_{idx:07d}.jpg", image)
            write_png(data_dir / f"ISIC_{idx:07d}_superpixels.png", image)
            write_png(gt_dir / f"ISIC_{idx:07d}_segmentation.png", mask)
            idx += 1
    train_dir = root / ISIC2017_FOLDERS["training"][0]
    if train_dir.is_dir():
        (train_dir / "ISIC-2017_Training_Data_metadata.csv").write_text("image_id,age_approximate,sex\n")
    return root


def make_polyp_tree(
    root: PathLike,
    n_train: int,
    test_counts: Optional[Dict[str, int]] = None,
    size: Tuple[int, int] = (12, 16),
    singular_folders: bool = False,
    seed: int = 0,
) -> Path:
    """PraNet layout: ``TrainDataset/{images,masks}/<k>.png`` and
    ``TestDataset/<set>/{images,masks}/<k>.png`` (default: 2 per PraNet test set);
    ``singular_folders`` uses ``image``/``mask`` for the training set. Returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    test_counts = {s: 2 for s in POLYP_TEST_SETS} if test_counts is None else test_counts
    img_name, msk_name = ("image", "mask") if singular_folders else ("images", "masks")
    for k in range(1, n_train + 1):
        image, mask = _image_and_mask(rng, *size)
        write_png(root / "TrainDataset" / img_name / f"{k}.png", image)
        write_png(root / "TrainDataset" / msk_name / f"{k}.png", mask)
    for name, n in test_counts.items():
        for k in range(1, n + 1):
            image, mask = _image_and_mask(rng, *size)
            write_png(root / "TestDataset" / name / "images" / f"{k}.png", image)
            write_png(root / "TestDataset" / name / "masks" / f"{k}.png", mask)
    return root
