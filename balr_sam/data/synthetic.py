"""Deterministic synthetic data: the product's embedded default, nothing to download.

Three generators write trees in the **same on-disk layouts as the real datasets**, so the same
preparation (:mod:`balr_sam.data.prepare`) and readers load them:

- :func:`generate_ct_dataset`: abdominal CT phantoms in the raw Synapse/BTCV layout
  (``img/imgXXXX.nii.gz`` int16 HU + ``label/labelXXXX.nii.gz`` uint8 in **BTCV numbering**, so
  the BTCV -> Synapse map is exercised, including BTCV organs outside the 8 evaluated ones:
  esophagus 5 and inferior vena cava 9 become background).
- :func:`generate_isic_dataset`: dermoscopy-like RGB JPEGs with ``_segmentation.png`` masks in
  the ISIC 2017 folder layout (with ``_superpixels.png`` files to be ignored).
- :func:`generate_polyp_dataset`: colonoscopy-like RGB PNGs with masks in PraNet's
  ``TrainDataset``/``TestDataset`` layout.

Everything is drawn from ``numpy.random.default_rng`` seeded by ``(seed, kind, case)``: the same
arguments give byte-identical files (NIfTI is gzipped with mtime 0 by nibabel; PNG/JPEG encoding
is deterministic).

**CT phantom.** Anatomy is defined in field-of-view coordinates ``u, v, w`` in [-1, 1] (``u``
towards the patient's right, ``v`` anterior, ``w`` superior): body ellipse with subcutaneous fat,
an abdominal-wall muscle ring, visceral fat, spine (cortical and cancellous bone, posterior
elements) and paraspinal muscles, and the organs as perturbed ellipsoids at plausible positions
(liver right-anterior and large, spleen left-posterior, kidneys posterior on both sides, aorta
anterior-left of the spine next to the IVC, stomach left-anterior with an air pocket,
gallbladder under the liver, pancreas elongated across the midline). Hounsfield units: liver 60,
spleen 50, kidneys 150 (contrast-enhanced cortex, lower sinus), aorta 200, IVC 120,
gallbladder 10, stomach 25 (air -950), pancreas 40, fat -100/-85, muscle 45, bone 250/700, air
-1000; each case jitters positions, sizes, shapes and HU, adds a smooth texture, a slight
partial-volume blur and Gaussian noise (sigma 12 HU). Per case the in-plane field of view is
300-460 mm (so the spacing is FOV / size: 0.59-0.9 mm at 512 px, about 3-5 mm at the small
default 96 px), the slice spacing 2.5-5 mm, and the storage orientation cycles through RAS, LPS
and LAS (world positions are the same; only the voxel order and affine differ).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from balr_sam.atomic import atomic_write_text
from balr_sam.data.splits import ISIC2017_FOLDERS, POLYP_TEST_SETS, fraction_split
from balr_sam.errors import DataError
from balr_sam.labels import get_label_set
from balr_sam.types import PathLike

__all__ = [
    "CT_ORIENTATIONS",
    "generate_ct_dataset",
    "generate_isic_dataset",
    "generate_polyp_dataset",
    "make_ct_phantom",
    "make_isic_image",
    "make_polyp_image",
]


#: Storage orientations the CT phantoms cycle through (case 1 RAS, 2 LPS, 3 LAS, 4 RAS...).
CT_ORIENTATIONS: Tuple[str, ...] = ("RAS", "LPS", "LAS")
_KIND_SEEDS = {"ct": 1, "isic": 2, "polyp": 3}


def _rng(seed: int, kind: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), _KIND_SEEDS[kind], int(index)])


def _prepare_outdir(outdir: PathLike, overwrite: bool, kind: str) -> Path:
    """Create ``outdir`` (replacing a synthetic dataset there if ``overwrite``) and mark it as a
    synthetic dataset in the making, before any case is written: a generation killed half-way
    is still recognised as ours and replaced by the next ``overwrite``."""
    out = Path(outdir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DataError(f"{out}: folder exists and is not empty; pass overwrite=True (--overwrite) to replace it")
        marker = out / "synthetic.json"
        if not marker.is_file():
            raise DataError(f"{out}: not a synthetic dataset folder (no synthetic.json); refusing to delete it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_marker(out, {"kind": kind}, complete=False)
    return out


def _write_marker(out: Path, params: dict, complete: bool = True) -> None:
    """``synthetic.json``: the parameters, and whether every file has been written (``complete``)."""
    atomic_write_text(out / "synthetic.json", json.dumps({**params, "complete": complete}, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------------------------
# CT
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Organ:
    name: str  # BTCV name (see label_maps.json "source_labels")
    center: Tuple[float, float, float]  # u (right +), v (anterior +), w (superior +)
    semi: Tuple[float, float, float]
    hu: float
    texture: float
    angle: float = 0.0  # in-plane rotation, radians
    tube: bool = False  # cylinder along w (vessels), semi[2] unused
    w_range: Tuple[float, float] = (-1.1, 1.1)


# Paint order: later organs overwrite earlier ones.
_ORGANS: Tuple[_Organ, ...] = (
    _Organ("liver", (0.45, 0.08, 0.45), (0.38, 0.45, 0.62), 60, 8),
    _Organ("stomach", (-0.35, 0.28, 0.45), (0.24, 0.20, 0.35), 25, 10),
    _Organ("spleen", (-0.55, -0.18, 0.42), (0.14, 0.20, 0.30), 50, 7),
    _Organ("kidney_right", (0.32, -0.30, -0.32), (0.14, 0.16, 0.40), 150, 10),
    _Organ("kidney_left", (-0.32, -0.30, -0.22), (0.14, 0.16, 0.40), 150, 10),
    _Organ("gallbladder", (0.30, 0.30, -0.10), (0.09, 0.11, 0.22), 10, 4),
    _Organ("pancreas", (-0.10, -0.04, 0.02), (0.30, 0.065, 0.14), 40, 8, angle=-0.25),
    _Organ("inferior_vena_cava", (0.12, -0.22, 0.0), (0.06, 0.06, 1.0), 120, 6, tube=True),
    _Organ("aorta", (-0.05, -0.24, 0.0), (0.055, 0.055, 1.0), 200, 8, tube=True),
    _Organ("esophagus", (-0.04, -0.14, 0.0), (0.04, 0.04, 1.0), 30, 6, tube=True, w_range=(0.55, 1.1)),
)


def _blob(u, v, w, center, semi, angle, rng, tube=False, amp=0.06) -> np.ndarray:
    """Mask of a perturbed ellipsoid (or tube) on the grid (u, v, w)."""
    du, dv = u - center[0], v - center[1]
    c, s = math.cos(angle), math.sin(angle)
    x = (du * c + dv * s) / semi[0]
    y = (-du * s + dv * c) / semi[1]
    r2 = x * x + y * y
    if not tube:
        r2 = r2 + ((w - center[2]) / semi[2]) ** 2
    theta = np.arctan2(y, x)
    wobble = np.zeros_like(theta)
    for k in (2, 3, 4):
        wobble = wobble + rng.uniform(0, amp) * np.cos(k * theta + rng.uniform(0, 2 * np.pi) + rng.uniform(-1, 1) * w)
    return r2 < (1.0 + wobble) ** 2


def make_ct_phantom(
    shape: Sequence[int] = (96, 96, 24),
    rng: Optional[np.random.Generator] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """One abdominal CT phantom in RAS voxel order (see the module docstring).

    Args:
        shape: ``(X, Y, Z)`` voxels; axis 0 towards the patient's right, 1 anterior, 2 superior.
        rng: random generator (default: seed 0).

    Returns:
        ``(image, label)``: int16 HU and uint8 BTCV label ids, both ``X x Y x Z``.
    """
    from scipy.ndimage import gaussian_filter

    rng = rng if rng is not None else np.random.default_rng(0)
    nx, ny, nz = (int(s) for s in shape)
    u = ((np.arange(nx) + 0.5) / nx * 2 - 1)[:, None, None]
    v = ((np.arange(ny) + 0.5) / ny * 2 - 1)[None, :, None]
    w = ((np.arange(nz) + 0.5) / nz * 2 - 1)[None, None, :]
    full = (nx, ny, nz)
    btcv = get_label_set("synapse").source_ids("btcv")

    scale = rng.uniform(0.92, 1.04)
    ax, ay = 0.86 * scale * (1 + 0.03 * w), 0.62 * scale * (1 + 0.03 * w)
    body_r = np.sqrt((u / ax) ** 2 + (v / ay) ** 2)
    hu = np.full(full, -1000.0)
    label = np.zeros(full, dtype=np.uint8)
    texture_amp = np.zeros(full)
    hu[np.broadcast_to(body_r < 1.0, full)] = -100.0  # subcutaneous fat
    wall = np.broadcast_to((body_r < 0.93) & (body_r >= 0.86), full)
    hu[wall] = 45.0
    texture_amp[wall] = 5.0
    interior = np.broadcast_to(body_r < 0.86, full)
    hu[interior] = -85.0  # visceral fat

    for organ in _ORGANS:
        center = tuple(c + rng.normal(0, 0.025) for c in organ.center)
        semi = tuple(s * rng.uniform(0.88, 1.12) for s in organ.semi)
        mask = _blob(u, v, w, center, semi, organ.angle + rng.normal(0, 0.05), rng, tube=organ.tube)
        mask = np.broadcast_to(mask, full) & interior & np.broadcast_to((w >= organ.w_range[0]) & (w <= organ.w_range[1]), full)
        value = organ.hu + rng.normal(0, 5)
        hu[mask] = value
        texture_amp[mask] = organ.texture
        label[mask] = btcv[organ.name]
        if organ.name.startswith("kidney"):  # renal sinus: lower density, still kidney
            inner = _blob(u, v, w, (center[0] * 0.85, center[1], center[2]), tuple(s * 0.45 for s in semi), 0.0, rng)
            hu[np.broadcast_to(inner, full) & mask] = 25.0
        if organ.name == "stomach":  # air pocket, anterior (the patient lies supine)
            air = mask & np.broadcast_to(v > center[1] + 0.35 * semi[1], full)
            hu[air] = -950.0

    # spine, posterior elements and paraspinal muscles overwrite anything (no organ there)
    for side in (-1, 1):
        muscle = np.broadcast_to(((u - side * 0.2) / 0.13) ** 2 + ((v + 0.5) / 0.09) ** 2 < 1, full) & interior
        hu[muscle], label[muscle], texture_amp[muscle] = 50.0, 0, 5.0
    vr = np.sqrt((u / 0.11) ** 2 + ((v + 0.40) / 0.11) ** 2)
    vertebra = np.broadcast_to(vr < 1.0, full)
    hu[vertebra], label[vertebra] = 700.0, 0
    hu[np.broadcast_to(vr < 0.75, full)] = 250.0
    posterior = np.broadcast_to((u / 0.05) ** 2 + ((v + 0.56) / 0.07) ** 2 < 1, full)
    hu[posterior], label[posterior] = 500.0, 0

    image = gaussian_filter(hu, sigma=(0.7, 0.7, 0.3))
    smooth = gaussian_filter(rng.normal(0, 1, full), sigma=2.0)
    smooth /= smooth.std() + 1e-8
    image = image + smooth * texture_amp + rng.normal(0, 12.0, full)
    image = np.clip(np.rint(image), -1024, 3071).astype(np.int16)
    return image, label


def _case_geometry(rng: np.random.Generator, shape: Sequence[int], orientation: str) -> Tuple[np.ndarray, Tuple[float, float, float]]:
    fov = rng.uniform(300.0, 460.0)
    s_xy = round(fov / shape[0], 4)
    s_z = round(rng.uniform(2.5, 5.0), 2)
    spacing = (s_xy, s_xy, s_z)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-(shape[0] - 1) / 2 * s_xy, -(shape[1] - 1) / 2 * s_xy, round(rng.uniform(-400, -100), 1)]
    return affine, spacing


def _reorient(array: np.ndarray, affine: np.ndarray, codes: str) -> Tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    t = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt(tuple(codes)))
    out = np.ascontiguousarray(nib.orientations.apply_orientation(array, t))
    return out, affine @ nib.orientations.inv_ornt_aff(t, array.shape)


def generate_ct_dataset(
    outdir: PathLike,
    cases: int = 8,
    seed: int = 0,
    shape: Sequence[int] = (96, 96, 24),
    orientations: Sequence[str] = CT_ORIENTATIONS,
    overwrite: bool = False,
) -> List[Path]:
    """Write abdominal CT phantoms in the raw Synapse/BTCV layout.

    ``outdir/img/img0001.nii.gz`` (int16 HU) and ``outdir/label/label0001.nii.gz`` (uint8, BTCV
    numbering), cases numbered from 1, plus ``outdir/synthetic.json`` with the parameters.
    ``balr-sam prepare synapse outdir`` reads it like BTCV (with a seeded fraction split since
    the numbers are not TransUNet's 30 cases, unless all 30 exist).

    Args:
        outdir: target folder (created; must be empty unless ``overwrite``).
        cases: number of cases.
        seed: random seed; same arguments give byte-identical files.
        shape: ``(X, Y, Z)`` voxels per case.
        orientations: storage orientations cycled through by case.
        overwrite: replace an existing synthetic dataset in ``outdir``.

    Returns:
        the image paths.
    """
    import nibabel as nib

    if cases < 1:
        raise ValueError("cases must be >= 1")
    out = _prepare_outdir(outdir, overwrite, "ct")
    (out / "img").mkdir()
    (out / "label").mkdir()
    paths = []
    for case in range(1, cases + 1):
        rng = _rng(seed, "ct", case)
        image, label = make_ct_phantom(shape, rng)
        codes = orientations[(case - 1) % len(orientations)]
        affine, _ = _case_geometry(rng, shape, codes)
        image, new_affine = _reorient(image, affine, codes)
        label, _ = _reorient(label, affine, codes)
        for arr, path, dtype in ((image, out / "img" / f"img{case:04d}.nii.gz", np.int16), (label, out / "label" / f"label{case:04d}.nii.gz", np.uint8)):
            nimg = nib.Nifti1Image(arr.astype(dtype), new_affine)
            nimg.header.set_xyzt_units("mm", "sec")
            nimg.set_qform(new_affine, code=1)
            nimg.set_sform(new_affine, code=1)
            nib.save(nimg, str(path))
        paths.append(out / "img" / f"img{case:04d}.nii.gz")
    _write_marker(
        out,
        {
            "kind": "ct",
            "cases": cases,
            "seed": seed,
            "shape": [int(s) for s in shape],
            "orientations": list(orientations),
            "layout": "synapse raw (BTCV numbering)",
        },
    )
    return paths


# --------------------------------------------------------------------------------------------
# 2D images
# --------------------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, shape: Tuple[int, int], sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.normal(0, 1, shape), sigma=sigma)
    return field / (field.std() + 1e-8)


def _irregular_blob(h: int, w: int, cy: float, cx: float, ry: float, rx: float, rng, amp: float, kmax: int = 6):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    y, x = (yy - cy) / ry, (xx - cx) / rx
    theta = np.arctan2(y, x)
    radius = np.ones_like(theta)
    for k in range(2, kmax + 1):
        radius += rng.uniform(0, amp) / (k - 1) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    r = np.sqrt(x * x + y * y)
    return r / radius  # < 1 inside


def _size(rng, base: Sequence[int]) -> Tuple[int, int]:
    return int(round(base[0] * rng.uniform(0.9, 1.1))), int(round(base[1] * rng.uniform(0.9, 1.1)))


def make_isic_image(rng: np.random.Generator, size: Sequence[int] = (192, 256)) -> Tuple[np.ndarray, np.ndarray]:
    """A dermoscopy-like image: skin background, darker irregular lesion, a few hairs.

    Args:
        rng: random generator.
        size: approximate ``(H, W)`` (each image varies by ±10 %).

    Returns:
        ``(rgb, mask)``: ``H x W x 3`` uint8 and ``H x W`` uint8 in {0, 255}.
    """
    from PIL import Image, ImageDraw
    from scipy.ndimage import gaussian_filter

    h, w = _size(rng, size)
    skin = np.array([[236, 200, 180], [222, 172, 142], [200, 150, 118]], dtype=np.float64)[rng.integers(3)]
    skin = skin + rng.normal(0, 6, 3)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    light = 1.0 + 0.08 * ((xx - 0.5) * rng.normal() + (yy - 0.5) * rng.normal())
    img = skin[None, None, :] * light[..., None] + 6 * _smooth_noise(rng, (h, w), 6)[..., None]
    cy, cx = h * rng.uniform(0.4, 0.6), w * rng.uniform(0.4, 0.6)
    radius = min(h, w) * rng.uniform(0.15, 0.33)
    rr = _irregular_blob(h, w, cy, cx, radius * rng.uniform(0.8, 1.2), radius * rng.uniform(0.8, 1.2), rng, amp=0.35)
    mask = rr < 1.0
    dark = np.array([68, 40, 30], dtype=np.float64) + rng.normal(0, 8, 3)
    edge = np.array([150, 100, 78], dtype=np.float64) + rng.normal(0, 8, 3)
    t = np.clip(rr, 0, 1)[..., None]
    lesion = dark * (1 - t) + edge * t + 14 * _smooth_noise(rng, (h, w), 3)[..., None]
    alpha = gaussian_filter(mask.astype(np.float64), sigma=1.5)[..., None]
    img = img * (1 - alpha) + lesion * alpha
    if rng.uniform() < 0.5:  # dark dermoscope corners
        r_fov = np.sqrt(((np.mgrid[0:h, 0:w][0] - h / 2) / (h / 2)) ** 2 + ((np.mgrid[0:h, 0:w][1] - w / 2) / (w / 2)) ** 2)
        img = img * np.clip(1.35 - r_fov * 0.5, 0.05, 1.0)[..., None] ** 3
    img = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(0, 4))):  # hairs (not part of the lesion mask)
        pts = [(float(rng.uniform(0, w)), float(rng.uniform(0, h))) for _ in range(3)]
        curve = [
            (
                (1 - t_) ** 2 * pts[0][0] + 2 * (1 - t_) * t_ * pts[1][0] + t_**2 * pts[2][0],
                (1 - t_) ** 2 * pts[0][1] + 2 * (1 - t_) * t_ * pts[1][1] + t_**2 * pts[2][1],
            )
            for t_ in np.linspace(0, 1, 24)
        ]
        draw.line(curve, fill=(40, 28, 22), width=int(rng.integers(1, 3)))
    return np.asarray(pil), (mask * 255).astype(np.uint8)


def make_polyp_image(rng: np.random.Generator, size: Sequence[int] = (224, 256)) -> Tuple[np.ndarray, np.ndarray]:
    """A colonoscopy-like image: pink-red mucosa with folds and highlights, a bulging round polyp.

    Args:
        rng: random generator.
        size: approximate ``(H, W)`` (each image varies by ±10 %).

    Returns:
        ``(rgb, mask)``: ``H x W x 3`` uint8 and ``H x W`` uint8 in {0, 255}.
    """
    h, w = _size(rng, size)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    mucosa = np.array([205, 108, 96], dtype=np.float64) + rng.normal(0, 8, 3)
    folds = np.zeros((h, w))
    for _ in range(3):
        ang, freq, ph = rng.uniform(0, np.pi), rng.uniform(2, 6) * 2 * np.pi / max(h, w), rng.uniform(0, 2 * np.pi)
        folds += np.sin(freq * (xx * np.cos(ang) + yy * np.sin(ang)) + ph)
    centre_r = np.sqrt(((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2)
    light = np.clip(1.15 - 0.45 * centre_r, 0.25, 1.1)
    img = mucosa[None, None, :] * (light * (1 + 0.07 * folds / 3))[..., None] + 8 * _smooth_noise(rng, (h, w), 4)[..., None]
    cy, cx = h * rng.uniform(0.3, 0.7), w * rng.uniform(0.3, 0.7)
    radius = min(h, w) * rng.uniform(0.1, 0.25)
    rr = _irregular_blob(h, w, cy, cx, radius * rng.uniform(0.85, 1.15), radius * rng.uniform(0.85, 1.15), rng, amp=0.12, kmax=4)
    mask = rr < 1.0
    height = np.sqrt(np.clip(1 - rr**2, 0, 1))  # dome
    gy, gx = np.gradient(height)
    shade = np.clip(0.75 + 0.35 * height - 6.0 * (gx * 0.6 + gy * 0.8), 0.4, 1.3)
    polyp_col = np.array([222, 132, 118], dtype=np.float64) + rng.normal(0, 8, 3)
    polyp = polyp_col[None, None, :] * (shade * light)[..., None] + 10 * _smooth_noise(rng, (h, w), 1.5)[..., None]
    img = np.where(mask[..., None], polyp, img)
    for _ in range(int(rng.integers(4, 12))):  # specular highlights
        sy, sx = rng.uniform(0, h), rng.uniform(0, w)
        spot = np.exp(-(((yy - sy) / rng.uniform(1, 3)) ** 2 + ((xx - sx) / rng.uniform(1, 4)) ** 2))
        img = img + 200 * spot[..., None]
    if rng.uniform() < 0.5:  # black border outside the endoscope's field of view
        corner = (np.abs(yy - h / 2) / (h / 2)) ** 4 + (np.abs(xx - w / 2) / (w / 2)) ** 4 > 1.0
        img[corner] = 0
        mask = mask & ~corner
    img = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    return img, (mask * 255).astype(np.uint8)


def _save_pair(img: np.ndarray, mask: np.ndarray, image_path: Path, mask_path: Path) -> None:
    from PIL import Image

    image_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    pil = Image.fromarray(img)
    if image_path.suffix.lower() in (".jpg", ".jpeg"):
        pil.save(str(image_path), format="JPEG", quality=92)
    else:
        pil.save(str(image_path), format="PNG")
    Image.fromarray(mask).save(str(mask_path), format="PNG")


def generate_isic_dataset(
    outdir: PathLike,
    cases: int = 10,
    seed: int = 0,
    size: Sequence[int] = (192, 256),
    overwrite: bool = False,
) -> List[Path]:
    """Write dermoscopy-like images in the ISIC 2017 layout.

    ``ISIC-2017_{Training,Validation,Test_v2}_Data/ISIC_XXXXXXX.jpg`` (+ ``_superpixels.png``)
    and ``ISIC-2017_{...}_Part1_GroundTruth/ISIC_XXXXXXX_segmentation.png``; the ``cases``
    images are split 60/20/20 (the same ids whatever the seed), numbered ``ISIC_0000000`` upwards.

    Args:
        outdir: target folder (must be empty unless ``overwrite``).
        cases: total number of images (>= 3 to fill all three splits).
        seed: random seed.
        size: approximate ``(H, W)``.
        overwrite: replace an existing synthetic dataset in ``outdir``.

    Returns:
        the image paths.
    """
    from PIL import Image

    if cases < 1:
        raise ValueError("cases must be >= 1")
    out = _prepare_outdir(outdir, overwrite, "isic")
    groups = fraction_split(list(range(cases)), 0.2, 0.2, seed=0)  # file names do not depend on the seed
    for split in ISIC2017_FOLDERS:
        for folder in ISIC2017_FOLDERS[split]:
            (out / folder).mkdir()
    paths = []
    for split, ids in groups.items():
        data_dir, gt_dir = (out / f for f in ISIC2017_FOLDERS[split])
        for i in ids:
            rng = _rng(seed, "isic", i)
            img, mask = make_isic_image(rng, size)
            name = f"ISIC_{i:07d}"
            _save_pair(img, mask, data_dir / f"{name}.jpg", gt_dir / f"{name}_segmentation.png")
            h, w = mask.shape
            sp = (np.arange(h)[:, None] // 16) * ((w + 15) // 16) + np.arange(w)[None, :] // 16
            sp_rgb = np.stack([sp & 255, (sp >> 8) & 255, np.zeros_like(sp)], axis=-1).astype(np.uint8)
            Image.fromarray(sp_rgb).save(str(data_dir / f"{name}_superpixels.png"))
            paths.append(data_dir / f"{name}.jpg")
    _write_marker(out, {"kind": "isic", "cases": cases, "seed": seed, "size": [int(s) for s in size], "layout": "ISIC 2017 Part 1"})
    return paths


def generate_polyp_dataset(
    outdir: PathLike,
    cases: int = 10,
    seed: int = 0,
    test_cases: Optional[int] = None,
    size: Sequence[int] = (224, 256),
    overwrite: bool = False,
) -> List[Path]:
    """Write colonoscopy-like images in PraNet's layout.

    ``TrainDataset/{images,masks}/<k>.png`` (``cases`` images) and
    ``TestDataset/<set>/{images,masks}/<k>.png`` for PraNet's five test sets (``test_cases``
    each, default ``max(1, cases // 5)``).

    Args:
        outdir: target folder (must be empty unless ``overwrite``).
        cases: training images.
        seed: random seed.
        test_cases: images per test set.
        size: approximate ``(H, W)``.
        overwrite: replace an existing synthetic dataset in ``outdir``.

    Returns:
        the image paths.
    """
    if cases < 1:
        raise ValueError("cases must be >= 1")
    test_cases = max(1, cases // 5) if test_cases is None else int(test_cases)
    out = _prepare_outdir(outdir, overwrite, "polyp")
    paths = []
    index = 0
    jobs: List[Tuple[Path, int]] = [(out / "TrainDataset", k) for k in range(1, cases + 1)]
    for name in POLYP_TEST_SETS:
        jobs += [(out / "TestDataset" / name, k) for k in range(1, test_cases + 1)]
    for folder, k in jobs:
        rng = _rng(seed, "polyp", index)
        index += 1
        img, mask = make_polyp_image(rng, size)
        _save_pair(img, mask, folder / "images" / f"{k}.png", folder / "masks" / f"{k}.png")
        paths.append(folder / "images" / f"{k}.png")
    _write_marker(
        out,
        {"kind": "polyp", "cases": cases, "test_cases": test_cases, "seed": seed, "size": [int(s) for s in size], "layout": "PraNet TrainDataset/TestDataset"},
    )
    return paths
