"""Bad input, the way unattended clinical pipelines meet it: one bad file must not stop the rest.

For every case the requirement is the same: a clear one-line :class:`~balr_sam.errors.DataError`
that starts with the offending file and says the problem; no traceback on the command line; the
other cases of the same run still processed; a non-zero exit status when any case failed.

Policies chosen (and documented in :mod:`balr_sam.data.io`):

- NaN/Inf voxels in a CT image are **refused**, with the file and the counts: windowing would
  silently turn NaN into an arbitrary intensity, and a scan holding NaN is corrupt.
- Large finite values (uint16 65535, int32 +-2e9, float64 1e30) are **kept** and clipped by the HU
  window (nothing wraps around); float values beyond the float32 range (which would become Inf in
  the float32 pipelines) are refused.
- NIfTI headers: zero pixdim with a valid sform -> the sform is the geometry (accepted); zero
  pixdim without sform -> refused (nibabel would silently assume 1 mm); negative pixdim -> its
  absolute value (what nibabel, hence MONAI's NibabelReader, does); singular or non-finite affine
  -> refused.
- 2D: RGBA -> alpha dropped (not composited); 16-bit grey -> ``value / 257`` (65535 -> 255), not
  clipped to white; masks thresholded on stored values ({0, 255} and {0, 65535} both work).
- 4D with a trailing singleton axis -> squeezed to 3D; 4D with a longer 4th axis -> refused.
- A DICOM folder holding two series -> refused, naming the folder and the series count.
- ``prepare`` leaves bad cases out of the splits, lists them under ``failed`` and exits 1.
"""

from __future__ import annotations

import ctypes
import gzip
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from PIL import Image

from _data_factories import affine_for, write_dicom_series, write_nifti, write_png
from balr_sam.cli import main
from balr_sam.data.io import read_image_2d, read_mask_2d, read_volume, read_volume_header
from balr_sam.data.pipelines import ct_inference_preprocessing, image2d_inference_preprocessing
from balr_sam.data.transforms import LoadVolumed, MapLabelsd
from balr_sam.errors import DataError
from balr_sam.evaluation import read_label_file
from balr_sam.labels import get_label_set

REPO = Path(__file__).resolve().parents[1]
SHAPE = (16, 16, 4)
AFFINE = affine_for((1.5, 1.5, 3.0), "LPS", (10.0, -20.0, 30.0))


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _ct(seed: int = 0, shape: Tuple[int, ...] = SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).integers(-200, 300, size=shape).astype(np.int16)


def _labels(shape: Tuple[int, ...] = SHAPE) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    lab[: shape[0] // 2, : shape[1] // 2] = 5  # liver
    lab[shape[0] // 2 :, shape[1] // 2 :] = 1  # spleen
    return lab


def _one_line_error(fn, path, *words: str) -> str:
    """``fn()`` must raise a one-line DataError starting with ``path`` and matching each of ``words``."""
    with pytest.raises(DataError) as info:
        fn()
    msg = str(info.value)
    assert msg.startswith(str(path)), msg
    assert "\n" not in msg, msg
    for w in words:
        assert re.search(w, msg, re.IGNORECASE), (w, msg)
    return msg


def _patch_nifti_header(path: Path, **fields) -> Path:
    """Rewrite header fields in place, bypassing nibabel's writer (which would repair them).

    ``pixdim`` sets ``pixdim[1:4]``; other names are NIfTI-1 header fields (``sform_code``, ``srow_y``...).
    """
    gz = path.name.endswith(".gz")
    raw = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
    hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(raw), check=False)
    for key, value in fields.items():
        if key == "pixdim":
            pixdim = hdr["pixdim"].copy()
            pixdim[1:4] = value
            hdr["pixdim"] = pixdim
        else:
            hdr[key] = value
    data = hdr.binaryblock + raw[len(hdr.binaryblock) :]
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _cli(capsys: pytest.CaptureFixture, argv: Sequence[str]) -> Tuple[int, str, str]:
    """Run ``balr-sam argv`` in-process; never a traceback on stderr."""
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    assert "Traceback" not in out.err, out.err
    return rc, out.out, out.err


def _failure_lines(err: str, marker: str) -> List[str]:
    return [line for line in err.splitlines() if marker in line]


def _mixed_dicom_folder(src_series: Path, dst: Path) -> Path:
    """Copy a DICOM series and give half of its files another SeriesInstanceUID (two series in one folder)."""
    shutil.copytree(src_series, dst)
    files = sorted(p for p in dst.iterdir() if p.is_file())
    new_uid = pydicom.uid.generate_uid(entropy_srcs=["bad-input", "second series"])
    for f in files[: len(files) // 2]:
        ds = pydicom.dcmread(str(f))
        ds.SeriesInstanceUID = new_uid
        ds.save_as(str(f))
    return dst


def _synthetic_mixed_dicom_folder(dst: Path) -> Path:
    """Two 2-slice series written into the same folder (no shared data needed)."""
    write_dicom_series(dst, np.zeros((8, 8, 2), np.int16), series_uid="1.2.826.0.1.3680043.99.1")
    other = dst.parent / (dst.name + "_other")
    write_dicom_series(other, np.zeros((8, 8, 2), np.int16), series_uid="1.2.826.0.1.3680043.99.2", origin=(0, 0, 50))
    for f in other.iterdir():
        f.rename(dst / f"b_{f.name}")
    other.rmdir()
    return dst


# --- running without the right to bypass file permissions (tests may run as root) ---


def _drop_dac_capabilities() -> None:  # pragma: no cover - runs in the child before exec
    """Remove CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set: after exec a root
    process then has them neither, and file permissions apply to it as to any user."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # Linux only
    except (OSError, AttributeError):
        return  # elsewhere the probe in ``permissions_enforced`` finds out and skips
    pr_capbset_drop = 24
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        prctl(pr_capbset_drop, cap, 0, 0, 0)


def _run_restricted(args: Sequence[str], timeout: int = 300) -> subprocess.CompletedProcess:
    python_path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=python_path)
    preexec = _drop_dac_capabilities if getattr(os, "geteuid", lambda: -1)() == 0 else None
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env, cwd=str(REPO), preexec_fn=preexec)


_CLI_DRIVER = """
import contextlib, io, json, sys, traceback
from balr_sam.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exit_:
            rc = exit_.code
        except BaseException:
            traceback.print_exc()
            rc = None
    results.append([rc, out.getvalue(), err.getvalue()])
with open(sys.argv[2], "w", encoding="utf-8") as fh:
    json.dump(results, fh)
"""


def _cli_restricted(argvs: Sequence[Sequence[object]]) -> List[Tuple[int, str, str]]:
    """Run several ``balr-sam`` command lines in one restricted child process (one start-up, not several)."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "results.json"
        Path(tmp).chmod(0o777)
        res = _run_restricted(["-c", _CLI_DRIVER, json.dumps([[str(a) for a in argv] for argv in argvs]), result])
        assert res.returncode == 0 and result.is_file(), res.stderr
        return [tuple(r) for r in json.loads(result.read_text(encoding="utf-8"))]


@pytest.fixture
def permissions_enforced(tmp_path: Path):
    """Skip unless a child process can be made to respect ``chmod 000`` (root keeps reading
    through CAP_DAC_OVERRIDE unless it can be dropped); restores permissions afterwards."""
    probe = tmp_path / "probe.txt"
    probe.write_text("secret")
    probe.chmod(0)
    try:
        check = _run_restricted(["-c", f"open({str(probe)!r}).read()"], timeout=60)
        if check.returncode == 0:
            pytest.skip(
                "this process reads files without read permission (root whose CAP_DAC_OVERRIDE cannot be dropped): chmod 000 cannot make a file unreadable here"
            )
        changed: List[Path] = []
        yield changed
    finally:
        probe.chmod(0o644)
    for p in changed:
        p.chmod(0o755 if p.is_dir() else 0o644)


# --------------------------------------------------------------------------------------------
# readers: corrupt, truncated, empty files
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind,words",
    [
        ("gzip cut in half", ["unreadable or truncated"]),
        ("random bytes", ["cannot be read as NIfTI"]),
        ("gzip of random bytes", ["cannot be read as NIfTI"]),
        ("empty file", ["empty file", "0 bytes"]),
        ("header only", ["unreadable or truncated"]),
    ],
)
def test_corrupt_and_truncated_nifti(tmp_path: Path, kind: str, words: List[str]) -> None:
    path = tmp_path / "case 01.nii.gz"
    rng = np.random.default_rng(1)
    if kind == "gzip cut in half":
        _truncate(write_nifti(path, _ct()))
    elif kind == "random bytes":
        path.write_bytes(rng.integers(0, 256, 4000).astype(np.uint8).tobytes())
    elif kind == "gzip of random bytes":
        path.write_bytes(gzip.compress(rng.integers(0, 256, 4000).astype(np.uint8).tobytes()))
    elif kind == "empty file":
        path.write_bytes(b"")
    else:  # a valid header, then nothing: the voxels are missing
        full = gzip.decompress(write_nifti(path, _ct()).read_bytes())
        path.write_bytes(gzip.compress(full[:352]))
    _one_line_error(lambda: read_volume(path), path, *words)
    _one_line_error(lambda: read_label_file(path, get_label_set("synapse")), path)


def test_empty_and_corrupt_2d_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    _one_line_error(lambda: read_image_2d(empty), empty, "empty file")
    _one_line_error(lambda: read_mask_2d(empty), empty, "empty file")
    _one_line_error(lambda: read_label_file(empty, get_label_set("binary")), empty, "empty file")
    half = _truncate(write_png(tmp_path / "half.png", np.full((32, 32, 3), 7, np.uint8)))
    _one_line_error(lambda: read_image_2d(half), half, "cannot be read as an image")


# --------------------------------------------------------------------------------------------
# broken NIfTI headers
# --------------------------------------------------------------------------------------------

_DIAG = np.diag([1.5, 2.0, 3.0, 1.0])


@pytest.mark.parametrize(
    "fields,expected",
    [
        # the sform defines the geometry on its own: a zero pixdim next to it is harmless
        ({"pixdim": [0, 0, 0]}, _DIAG),
        # no sform: the qform (or the pixdim scaling) needs pixdim, and 0 leaves the spacing unknown
        ({"pixdim": [0, 0, 0], "sform_code": 0}, "voxel spacing is unknown"),
        ({"pixdim": [1.5, 0, 3], "sform_code": 0, "qform_code": 0}, "voxel spacing is unknown"),
        ({"pixdim": [np.nan, 2, 3], "sform_code": 0}, "voxel spacing is unknown"),
        # negative pixdim: nibabel (and MONAI's NibabelReader) take the absolute value; the qform's
        # handedness is in qfac = pixdim[0], so the geometry is the intended one
        ({"pixdim": [-1.5, -2, -3], "sform_code": 0}, _DIAG),
        # codes 0: NIfTI "method 1", nibabel's pixdim scaling with a flipped x, with |pixdim|
        ({"pixdim": [-1.5, -2, -3], "sform_code": 0, "qform_code": 0}, np.diag([-1.5, 2.0, 3.0, 1.0])),
        # a zero column in the sform (and a zero pixdim, so the qform is degenerate too)
        ({"srow_y": [0, 0, 0, 0], "pixdim": [1.5, 0, 3]}, "singular"),
        ({"srow_x": [np.inf, 0, 0, 0]}, "not finite"),
    ],
)
def test_broken_nifti_header(tmp_path: Path, capfd: pytest.CaptureFixture, fields: dict, expected) -> None:
    path = _patch_nifti_header(write_nifti(tmp_path / "img.nii.gz", _ct(), _DIAG), **fields)
    label = _patch_nifti_header(write_nifti(tmp_path / "label.nii.gz", _labels(), _DIAG), **fields)
    capfd.readouterr()
    if isinstance(expected, str):
        _one_line_error(lambda: read_volume(path), path, expected)
        _one_line_error(lambda: read_volume_header(path), path, expected)
        _one_line_error(lambda: read_label_file(label, get_label_set("synapse"), "btcv"), label, expected)
    else:
        vol = read_volume(path)
        affine = vol.affine.copy()
        if fields.get("qform_code", 1) == 0:  # nibabel centres method-1 volumes: compare the linear part
            affine[:3, 3] = expected[:3, 3]
        np.testing.assert_allclose(affine, expected, atol=1e-6)
        assert vol.spacing == pytest.approx((1.5, 2.0, 3.0))
        lab = read_label_file(label, get_label_set("synapse"), "btcv")
        assert lab.spacing == pytest.approx((1.5, 2.0, 3.0))
        np.testing.assert_allclose(lab.affine, vol.affine)
    # nibabel's own repair warnings ("setting 0 dims to 1") must not clutter the output
    assert "pixdim" not in capfd.readouterr().err


# --------------------------------------------------------------------------------------------
# voxel values
# --------------------------------------------------------------------------------------------


def test_nan_inf_voxels_are_refused_with_file_and_count(tmp_path: Path) -> None:
    """Policy: a CT volume with NaN/Inf voxels is refused (not windowed into some intensity):
    the error names the file, the NaN and Inf counts and the first bad index."""
    arr = _ct().astype(np.float32)
    arr[1, 2, 0] = arr[3, 3, 1] = np.nan
    arr[0, 0, 3] = -np.inf
    path = write_nifti(tmp_path / "nan.nii.gz", arr)
    _one_line_error(lambda: read_volume(path), path, "2 NaN and 1 Inf")
    _one_line_error(lambda: LoadVolumed("image")({"image": str(path)}), path, "2 NaN and 1 Inf")
    _one_line_error(lambda: read_label_file(path, get_label_set("synapse")), path, "NaN or Inf")


def test_extreme_values_are_clipped_not_wrapped(tmp_path: Path) -> None:
    """Policy: large finite intensities are kept and clipped by the HU window to [0, 1]; nothing
    wraps around to a small or negative value. Float values beyond float32 are refused."""
    for name, dtype, hi, lo in [("u16", np.uint16, 65535, 0), ("i32", np.int32, 2_000_000_000, -2_000_000_000), ("f64", np.float64, 1e30, -1e30)]:
        arr = np.zeros(SHAPE, dtype=dtype)
        arr[2, 3, 1], arr[5, 6, 2] = hi, lo
        path = write_nifti(tmp_path / f"{name}.nii.gz", arr, AFFINE)
        img = ct_inference_preprocessing(img_size=16)({"image": str(path)})["image"]
        values = img.detach().cpu().numpy()
        assert np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1
        assert values.max() == pytest.approx(1.0), name  # the huge value: the top of the window, not wrapped
        assert values.min() == pytest.approx(min(1.0, max(0.0, (lo + 125) / 400))), name
    huge = np.zeros(SHAPE, np.float64)
    huge[0, 0, 0] = 1e300
    path = write_nifti(tmp_path / "beyond_float32.nii.gz", huge)
    _one_line_error(lambda: read_volume(path), path, "exceed the float32 range", "1e\\+300")


def test_label_values_outside_the_map_name_file_and_values(tmp_path: Path) -> None:
    for name, arr, shown in [
        ("u16", np.array([0, 1, 65535, 6], np.uint16), r"\[65535\]"),
        ("f64", np.array([0, 1, 1e30, 6], np.float64), r"\[1e\+30\]"),  # not a wrapped negative integer
        ("i32", np.array([0, 14, 6, 200], np.int32), r"\[14, 200\]"),
    ]:
        path = write_nifti(tmp_path / f"{name}.nii.gz", arr.reshape(1, 2, 2))
        d = LoadVolumed("label")({"label": str(path), "label_map": "btcv"})
        _one_line_error(lambda d=d: MapLabelsd("label", strict=True)(d), path, shown, "outside the 'btcv' label map")
    # not strict: unknown and huge values become background, without a gigantic lookup table
    d = {"label": torch.tensor([[0.0, 6.0], [1e12, 3.4e38]])}
    assert MapLabelsd("label", source="btcv", strict=False)(d)["label"].tolist() == [[0.0, 5.0], [0.0, 0.0]]
    # evaluation: identity map names the values; float 1e30 is reported as such
    path = write_nifti(tmp_path / "eval.nii.gz", np.array([0, 1, 9, 77], np.uint8).reshape(1, 2, 2))
    _one_line_error(lambda: read_label_file(path, get_label_set("synapse")), path, "label values 9, 77")
    path = write_nifti(tmp_path / "eval_f.nii.gz", np.array([0, 1, 1e30, 2], np.float64).reshape(1, 2, 2))
    _one_line_error(lambda: read_label_file(path, get_label_set("synapse")), path, "1e\\+30")


# --------------------------------------------------------------------------------------------
# dimensionality
# --------------------------------------------------------------------------------------------


def test_dimensionality(tmp_path: Path) -> None:
    two_d = write_nifti(tmp_path / "slice.nii.gz", _ct()[..., 0])
    _one_line_error(lambda: read_volume(two_d), two_d, "expected a 3D volume", "2D")
    single = write_nifti(tmp_path / "single.nii.gz", _ct()[..., None], AFFINE)  # X x Y x Z x 1: squeezed
    vol = read_volume(single)
    assert vol.array.shape == SHAPE and np.array_equal(vol.array, _ct())
    np.testing.assert_allclose(vol.affine, AFFINE)
    multi = write_nifti(tmp_path / "multi.nii.gz", np.stack([_ct()] * 3, axis=-1), AFFINE)
    _one_line_error(lambda: read_volume(multi), multi, "expected a 3D volume", "4D", r"\(16, 16, 4, 3\)")
    _one_line_error(lambda: read_label_file(multi, get_label_set("synapse")), multi, "2D or 3D")


# --------------------------------------------------------------------------------------------
# 2D images and masks
# --------------------------------------------------------------------------------------------


def test_rgba_png_drops_alpha(tmp_path: Path) -> None:
    """Policy: RGBA -> RGB by dropping alpha (not compositing): a fully transparent pixel keeps its colour."""
    rgb = np.random.default_rng(2).integers(0, 256, (6, 9, 3)).astype(np.uint8)
    alpha = np.zeros((6, 9), np.uint8)
    alpha[:, :4] = 255
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "rgba.png")
    assert np.array_equal(read_image_2d(tmp_path / "rgba.png"), rgb)
    mask = np.zeros((6, 9), np.uint8)
    mask[2:4, 3:7] = 255
    Image.fromarray(np.dstack([mask, mask, mask, np.full_like(mask, 255)])).save(tmp_path / "mask.png")
    assert np.array_equal(read_mask_2d(tmp_path / "mask.png"), mask // 255)
    assert np.array_equal(read_label_file(tmp_path / "mask.png", get_label_set("binary")).data, mask // 255)


def test_16bit_grey_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    """Policy: 16-bit grey -> value / 257 (65535 -> 255), so a mid-grey stays mid-grey after the
    pipelines' [0, 255] -> [0, 1] scaling instead of becoming white."""
    grey = np.array([[0, 257, 32896], [40000, 65278, 65535]], np.uint16)
    Image.fromarray(grey).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")  # really stored with 16 bits
    out = read_image_2d(tmp_path / "g16.png")
    assert out.shape == (2, 3, 3)
    np.testing.assert_allclose(out[..., 0], grey / 257.0, rtol=1e-6)
    assert out.max() == 255.0 and out[0, 2, 0] == 128.0
    scaled = image2d_inference_preprocessing(img_size=4)({"image": str(tmp_path / "g16.png")})["image"]
    assert 0.3 < float(scaled.mean()) < 0.7  # not all white (1.0), as clipping at 255 would give
    wide = Image.fromarray(np.array([[0, 300]], np.int32))
    wide.save(tmp_path / "wide.tif")
    _one_line_error(lambda: read_image_2d(tmp_path / "wide.tif"), tmp_path / "wide.tif", "8-bit range", "300")


@pytest.mark.parametrize("fg", [255, 65535])
def test_16bit_masks(tmp_path: Path, fg: int) -> None:
    mask = np.zeros((5, 7), np.uint16)
    mask[1:4, 2:5] = fg
    Image.fromarray(mask).save(tmp_path / "m16.png")
    assert np.array_equal(read_mask_2d(tmp_path / "m16.png"), (mask > 0).astype(np.uint8))
    label = read_label_file(tmp_path / "m16.png", get_label_set("binary"))
    assert np.array_equal(label.data, (mask > 0).astype(np.uint8))


# --------------------------------------------------------------------------------------------
# DICOM: two series in one folder
# --------------------------------------------------------------------------------------------


def test_dicom_folder_with_two_series(tmp_path: Path, shared_data: Path) -> None:
    """Policy: refused (naming the folder and the series count), never silently the larger one."""
    folder = _mixed_dicom_folder(shared_data / "ct-abdomen-dicom" / "series", tmp_path / "mixed series")
    for fn in (lambda: read_volume(folder), lambda: read_volume_header(folder)):
        _one_line_error(fn, folder, "holds 2 DICOM series", r"\(10 files\)")


# --------------------------------------------------------------------------------------------
# prepare
# --------------------------------------------------------------------------------------------


def _bad_volume_folder(root: Path) -> Dict[str, str]:
    """``root/images`` + ``root/labels`` with good and bad cases; returns ``{case: expected words}`` of the bad."""
    img, lab = root / "images", root / "labels"
    for case in ("good a", "góod 病例"):
        write_nifti(img / f"{case}.nii.gz", _ct(), AFFINE)
        write_nifti(lab / f"{case}.nii.gz", _labels(), AFFINE)
    bad: Dict[str, str] = {}  # problems found from the headers (voxels are read by --verify)
    write_nifti(img / "shape.nii.gz", _ct(), AFFINE)
    write_nifti(lab / "shape.nii.gz", _labels((16, 12, 4)), AFFINE)
    bad["shape"] = r"label shape \(16, 12, 4\) does not match image shape \(16, 16, 4\)"
    write_nifti(img / "geometry.nii.gz", _ct(), AFFINE)
    write_nifti(lab / "geometry.nii.gz", _labels(), affine_for((1.5, 1.5, 2.5), "LPS", (10.0, -20.0, 30.0)))
    bad["geometry"] = "geometry does not match"
    _patch_nifti_header(write_nifti(img / "zero pixdim.nii.gz", _ct(), AFFINE), pixdim=[0, 0, 0], sform_code=0)
    write_nifti(lab / "zero pixdim.nii.gz", _labels(), AFFINE)
    bad["zero pixdim"] = "voxel spacing is unknown"
    write_nifti(img / "flat.nii.gz", _ct()[..., 0], AFFINE)
    write_nifti(lab / "flat.nii.gz", _labels()[..., 0], AFFINE)
    bad["flat"] = "expected a 3D volume"
    (img / "empty.nii.gz").write_bytes(b"")
    write_nifti(lab / "empty.nii.gz", _labels(), AFFINE)
    bad["empty"] = r"empty file \(0 bytes\)"
    write_nifti(img / "no label.nii.gz", _ct(), AFFINE)
    bad["no label"] = "no matching label"
    _synthetic_mixed_dicom_folder(img / "two series")
    write_nifti(lab / "two series.nii.gz", np.zeros((8, 8, 2), np.uint8))
    bad["two series"] = "holds 2 DICOM series"
    return bad


def test_prepare_keeps_going_past_bad_cases(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = _bad_volume_folder(tmp_path / "data")
    out = tmp_path / "data" / "datalist.json"
    rc, stdout, err = _cli(
        capsys,
        [
            "prepare",
            "nifti",
            tmp_path / "data",
            "--images",
            tmp_path / "data" / "images",
            "--labels",
            tmp_path / "data" / "labels",
            "--test-fraction",
            "1",
            "-o",
            out,
        ],
    )
    assert rc == 1
    lines = _failure_lines(err, "left out:")
    assert len(lines) == len(bad) == len(err.strip().splitlines()), err
    for case, words in bad.items():
        line = next(line for line in lines if f"case {case} left out:" in line)
        assert re.search(words, line), (words, line)
    dl = json.loads(out.read_text(encoding="utf-8"))
    assert sorted(c["case_id"] for c in dl["test"]) == ["good a", "góod 病例"]
    assert sorted(f["case_id"] for f in dl["failed"]) == sorted(bad)
    assert "left out" in " ".join(dl["notes"]) and "wrote" in stdout
    # --fail-fast: the first bad case stops everything, one line, nothing written
    rc, _, err = _cli(
        capsys,
        [
            "prepare",
            "nifti",
            tmp_path / "data",
            "--images",
            tmp_path / "data" / "images",
            "--labels",
            tmp_path / "data" / "labels",
            "-o",
            tmp_path / "ff.json",
            "--fail-fast",
        ],
    )
    assert rc == 1 and len(err.strip().splitlines()) == 1 and not (tmp_path / "ff.json").exists()


def test_prepare_verify_leaves_out_nan_and_bad_label_values(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    img, lab = tmp_path / "img", tmp_path / "lab"
    write_nifti(img / "good.nii.gz", _ct(), AFFINE)
    write_nifti(lab / "good.nii.gz", _labels(), AFFINE)  # btcv ids 1 and 5: fine
    nan = _ct().astype(np.float32)
    nan[0, 0, 0] = np.nan
    write_nifti(img / "nan.nii.gz", nan, AFFINE)
    write_nifti(lab / "nan.nii.gz", _labels(), AFFINE)
    write_nifti(img / "values.nii.gz", _ct(), AFFINE)
    values = _labels()
    values[0, 0, 0] = 200
    write_nifti(lab / "values.nii.gz", values, AFFINE)
    _truncate(write_nifti(img / "truncated.nii.gz", _ct(), AFFINE))  # header fine, voxels cut off
    write_nifti(lab / "truncated.nii.gz", _labels(), AFFINE)
    out = tmp_path / "dl.json"
    rc, stdout, err = _cli(
        capsys, ["prepare", "nifti", tmp_path, "--images", img, "--labels", lab, "--label-map", "btcv", "--test-fraction", "1", "-o", out, "--verify"]
    )
    assert rc == 1 and "3 failed" in stdout
    lines = _failure_lines(err, "left out:")
    assert len(lines) == 3 == len(err.strip().splitlines()), err
    assert any(str(img / "nan.nii.gz") in line and "1 NaN" in line for line in lines)
    assert any(str(lab / "values.nii.gz") in line and "[200]" in line and "'btcv'" in line for line in lines)
    assert any(str(img / "truncated.nii.gz") in line and "truncated" in line for line in lines)
    dl = json.loads(out.read_text())
    assert [c["case_id"] for c in dl["test"]] == ["good"] and dl["numTest"] == 1
    assert sorted(f["case_id"] for f in dl["failed"]) == ["nan", "truncated", "values"]


def test_prepare_2d_keeps_going(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    images, masks = tmp_path / "images", tmp_path / "masks"
    rgb = np.random.default_rng(0).integers(0, 256, (8, 10, 3)).astype(np.uint8)
    mask = np.zeros((8, 10), np.uint8)
    mask[2:5, 3:7] = 255
    write_png(images / "good.png", rgb)
    write_png(masks / "good.png", mask)
    Image.fromarray(np.dstack([rgb, np.full((8, 10), 255, np.uint8)])).save(images / "rgba ü.png")
    Image.fromarray(mask.astype(np.uint16) * 257).save(masks / "rgba ü.png")  # 16-bit mask
    (images / "empty.png").write_bytes(b"")
    write_png(masks / "empty.png", mask)
    write_png(images / "size.png", rgb)
    write_png(masks / "size.png", mask[:6])
    write_png(images / "lonely.png", rgb)
    rc, _, err = _cli(capsys, ["prepare", "images2d", tmp_path, "--test-fraction", "1", "-o", tmp_path / "dl.json", "--verify"])
    assert rc == 1
    lines = _failure_lines(err, "left out:")
    assert len(lines) == 3, err
    assert any("case empty left out" in line and "empty file" in line for line in lines)
    assert any("case size left out" in line and "does not match image size" in line for line in lines)
    assert any("case lonely left out" in line and "no matching mask" in line for line in lines)
    dl = json.loads((tmp_path / "dl.json").read_text())
    assert sorted(c["case_id"] for c in dl["test"]) == ["good", "rgba ü"]


def test_prepare_empty_folder_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "vols").mkdir()
    rc, _, err = _cli(capsys, ["prepare", "nifti", tmp_path / "vols", "-o", tmp_path / "dl.json"])
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "empty folder" in err and str(tmp_path / "vols") in err


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------


def test_evaluate_keeps_going_past_bad_cases(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    for case in ("good", "case 01 ü", "病例"):
        write_nifti(pred / f"{case}.nii.gz", _labels(), AFFINE)
        write_nifti(gt / f"{case}.nii.gz", _labels(), AFFINE)
    bad: Dict[str, Tuple[Path, str]] = {}

    def add(case: str, pred_arr, gt_arr, words: str, pred_aff=AFFINE, blame: Path = pred) -> None:
        if pred_arr is not None:
            write_nifti(pred / f"{case}.nii.gz", pred_arr, pred_aff)
        if gt_arr is not None:
            write_nifti(gt / f"{case}.nii.gz", gt_arr, AFFINE)
        bad[case] = (blame / f"{case}.nii.gz", words)

    add("shape", _labels((16, 12, 4)), _labels(), "does not match the label")
    add("geometry", _labels(), _labels(), "geometry does not match", pred_aff=affine_for((1.5, 1.5, 2.0), "LPS"))
    add("values", np.full(SHAPE, 12, np.uint8), _labels(), "label values 12")
    add("nan", None, np.where(_labels() > 0, np.nan, 0).astype(np.float32), "NaN", blame=gt)
    write_nifti(pred / "nan.nii.gz", _labels(), AFFINE)
    add("four d", np.stack([_labels()] * 2, -1), _labels(), "2D or 3D label map")
    add("truncated", _labels(), _labels(), "truncated")
    _truncate(pred / "truncated.nii.gz")
    add("empty", None, _labels(), "empty file")
    (pred / "empty.nii.gz").write_bytes(b"")
    add("pixdim", _labels(), None, "voxel spacing is unknown", blame=gt)
    _patch_nifti_header(write_nifti(gt / "pixdim.nii.gz", _labels(), AFFINE), pixdim=[0, 0, 0], sform_code=0)
    add("singular", _labels(), _labels(), "singular")
    _patch_nifti_header(pred / "singular.nii.gz", srow_z=[0, 0, 0, 0], pixdim=[1.5, 1.5, 0])
    write_nifti(pred / "orphan.nii.gz", _labels(), AFFINE)
    bad["orphan"] = (pred / "orphan.nii.gz", "no matching label")

    rc, stdout, err = _cli(
        capsys,
        [
            "evaluate",
            "--pred",
            pred,
            "--label",
            gt,
            "--output",
            tmp_path / "report",
            "--no-progress",
            "--overlays",
            "1",
            "--device",
            "cpu",
            "--protocol",
            "clinical",
        ],
    )
    assert rc == 1 and f"{len(bad)} case(s) failed" in stdout
    lines = _failure_lines(err, "failed:")
    assert len(lines) == len(bad), err
    for case, (path, words) in bad.items():
        line = next(line for line in lines if f"case {case} failed:" in line)
        assert f"failed: {path}" in line and re.search(words, line), (case, line)
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["num_cases"] == 3 and summary["mean"]["dice"] == pytest.approx(1.0)
    assert sorted(f["case"] for f in summary["failed"]) == sorted(bad)
    rows = (tmp_path / "report" / "per_case.csv").read_text(encoding="utf-8").splitlines()[1:]
    csv_cases = {row.split(",")[0] for row in rows}
    assert csv_cases == {"good", "case 01 ü", "病例"}


def test_evaluate_empty_folders_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "pred").mkdir()
    write_nifti(tmp_path / "gt" / "a.nii.gz", _labels(), AFFINE)
    rc, _, err = _cli(capsys, ["evaluate", "--pred", tmp_path / "pred", "--label", tmp_path / "gt", "--output", tmp_path / "r", "--no-progress"])
    assert rc == 1 and len(err.strip().splitlines()) == 1 and f"{tmp_path / 'pred'}: no prediction files" in err


# --------------------------------------------------------------------------------------------
# infer
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def infer_args(infer_args: List[str]) -> List[str]:
    """The suite's ``infer_args`` (tests/conftest.py), on the CPU."""
    return [*infer_args, "--device", "cpu"]


def test_infer_keeps_going_past_bad_cases(tmp_path: Path, capsys: pytest.CaptureFixture, infer_args: List[str]) -> None:
    inputs = tmp_path / "in"
    good: Dict[str, Tuple[Tuple[int, ...], np.ndarray]] = {}  # case -> expected output shape, affine
    for case in ("good", "case 01 ü", "病例"):
        write_nifti(inputs / f"{case}.nii.gz", _ct(), AFFINE)
        good[case] = (SHAPE, AFFINE)
    write_nifti(inputs / "singleton 4d.nii.gz", _ct()[..., None], AFFINE)
    good["singleton 4d"] = (SHAPE, AFFINE)
    _patch_nifti_header(write_nifti(inputs / "negative pixdim.nii.gz", _ct(), _DIAG), pixdim=[-1.5, -2, -3], sform_code=0)
    good["negative pixdim"] = (SHAPE, _DIAG)
    write_nifti(inputs / "uint16.nii.gz", np.full(SHAPE, 65535, np.uint16), AFFINE)
    good["uint16"] = (SHAPE, AFFINE)

    bad: Dict[str, str] = {}
    _truncate(write_nifti(inputs / "truncated.nii.gz", _ct()))
    bad["truncated"] = "unreadable or truncated"
    (inputs / "random.nii.gz").write_bytes(np.random.default_rng(0).integers(0, 256, 999).astype(np.uint8).tobytes())
    bad["random"] = "cannot be read as NIfTI"
    (inputs / "empty.nii.gz").write_bytes(b"")
    bad["empty"] = r"empty file \(0 bytes\)"
    nan = _ct().astype(np.float32)
    nan[4, 4, 2] = np.nan
    write_nifti(inputs / "nan.nii.gz", nan, AFFINE)
    bad["nan"] = "1 NaN and 0 Inf"
    _patch_nifti_header(write_nifti(inputs / "zero pixdim.nii.gz", _ct()), pixdim=[0, 0, 0], sform_code=0, qform_code=0)
    bad["zero pixdim"] = "voxel spacing is unknown"
    _patch_nifti_header(write_nifti(inputs / "singular.nii.gz", _ct(), _DIAG), srow_x=[0, 0, 0, 0], pixdim=[0, 2, 3])
    bad["singular"] = "singular"
    write_nifti(inputs / "flat.nii.gz", _ct()[..., 0], AFFINE)
    bad["flat"] = "expected a 3D volume, got a 2D image"
    write_nifti(inputs / "timeseries.nii.gz", np.stack([_ct()] * 2, -1), AFFINE)
    bad["timeseries"] = r"4D array of shape \(16, 16, 4, 2\)"
    _synthetic_mixed_dicom_folder(inputs / "two series")
    bad["two series"] = "holds 2 DICOM series"

    out = tmp_path / "out"
    rc, stdout, err = _cli(capsys, ["infer", inputs, out, *infer_args])
    assert rc == 1
    assert f"{len(good)} written, 0 skipped, {len(bad)} failed" in stdout
    for case, words in bad.items():
        line = next(line for line in err.splitlines() if f"case {case} failed:" in line)
        assert str(inputs / case) in line and re.search(words, line), (case, line)
    for case, (shape, affine) in good.items():
        written = nib.load(out / f"{case}.nii.gz")
        assert written.shape == shape, case
        np.testing.assert_allclose(written.affine, affine, atol=1e-4)
        assert (out / f"{case}.json").is_file()
    assert sorted(p.name for p in out.glob("*.nii.gz")) == sorted(f"{c}.nii.gz" for c in good)
    assert not list(out.glob("*.lock")) and not list(out.glob(".*part*"))


def test_infer_empty_or_missing_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    for src, words in ((tmp_path / "empty", "empty folder"), (tmp_path / "missing", "no such file or folder")):
        rc, _, err = _cli(capsys, ["infer", src, tmp_path / "out", "--no-progress"])
        assert rc == 1 and len(err.strip().splitlines()) == 1 and f"{src}: {words}" in err


def test_unicode_names_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture, infer_args: List[str]) -> None:
    """prepare -> infer -> evaluate on file names with spaces and non-ASCII characters."""
    names = ["case 01 ü", "病例"]
    for name in names:
        write_nifti(tmp_path / "data" / "img" / f"{name}.nii.gz", _ct(), AFFINE)
        write_nifti(tmp_path / "data" / "lab" / f"{name}.nii.gz", _labels(), AFFINE)
    dl_path = tmp_path / "data" / "datalist.json"
    rc, _, _ = _cli(
        capsys,
        [
            "prepare",
            "nifti",
            tmp_path / "data",
            "--images",
            tmp_path / "data" / "img",
            "--labels",
            tmp_path / "data" / "lab",
            "--label-map",
            "btcv",
            "--test-fraction",
            "1",
            "-o",
            dl_path,
            "--verify",
        ],
    )
    assert rc == 0
    dl = json.loads(dl_path.read_text(encoding="utf-8"))
    assert sorted(c["case_id"] for c in dl["test"]) == sorted(names)
    rc, _, _ = _cli(capsys, ["infer", tmp_path / "data" / "img", tmp_path / "pred", *infer_args])
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "pred").glob("*.nii.gz")) == sorted(f"{n}.nii.gz" for n in names)
    rc, _, _ = _cli(
        capsys,
        [
            "evaluate",
            "--pred",
            tmp_path / "pred",
            "--label",
            tmp_path / "data" / "lab",
            "--label-map",
            "btcv",
            "--image",
            tmp_path / "data" / "img",
            "--output",
            tmp_path / "report",
            "--no-progress",
            "--device",
            "cpu",
        ],
    )
    assert rc == 0
    summary = json.loads((tmp_path / "report" / "summary.json").read_text(encoding="utf-8"))
    assert sorted(c["case"] for c in summary["cases"]) == sorted(names) and not summary["failed"]
    assert {p.name.split("_", 2)[2] for p in (tmp_path / "report" / "overlays").glob("*.png")} <= {f"{n}.png" for n in names}


# --------------------------------------------------------------------------------------------
# unreadable files and folders (chmod 000)
# --------------------------------------------------------------------------------------------


def test_unreadable_files_and_folders(tmp_path: Path, permissions_enforced: List[Path], infer_args: List[str]) -> None:
    """chmod 000 files and folders in prepare, evaluate and infer, next to readable cases."""
    data = tmp_path / "data"
    for case in ("good", "locked"):
        write_nifti(data / "img" / f"{case}.nii.gz", _ct(), AFFINE)
        write_nifti(data / "lab" / f"{case}.nii.gz", _labels(), AFFINE)
    write_dicom_series(data / "img" / "locked series", np.zeros((8, 8, 2), np.int16))
    write_nifti(data / "lab" / "locked series.nii.gz", np.zeros((8, 8, 2), np.uint8), affine_for((0.8, 0.8, 2.0), "LPS", (100, 120, -300)))
    # an unreadable file of no known type must not turn the folder into a (failing) DICOM series
    (data / "img" / "notes").write_text("private")
    gt, pred, pred_hidden = tmp_path / "gt", tmp_path / "pred", tmp_path / "pred_hidden"
    for folder in (gt, pred, pred_hidden):
        folder.mkdir()
        shutil.copy(data / "lab" / "good.nii.gz", folder / "good.nii.gz")
        shutil.copy(data / "lab" / "locked.nii.gz", folder / "locked.nii.gz")
    locked = [data / "img" / "locked.nii.gz", data / "img" / "locked series", data / "img" / "notes", pred / "locked.nii.gz", pred_hidden]
    for path in locked:
        path.chmod(0)
        permissions_enforced.append(path)

    evaluate = ["evaluate", "--label", gt, "--no-progress", "--device", "cpu", "--overlays", "0"]
    runs = _cli_restricted(
        [
            ["prepare", "nifti", data, "--images", data / "img", "--labels", data / "lab", "--test-fraction", "1", "-o", tmp_path / "dl.json"],
            [*evaluate, "--pred", pred, "--output", tmp_path / "report"],
            [*evaluate, "--pred", pred_hidden, "--output", tmp_path / "report2"],  # a folder that cannot be listed
            ["infer", data / "img", tmp_path / "out", *infer_args],
        ]
    )
    for rc, _, err in runs:
        assert rc == 1 and "Traceback" not in err, err

    lines = _failure_lines(runs[0][2], "left out:")
    assert len(lines) == 2, runs[0][2]
    assert any(f"case locked left out: {data / 'img' / 'locked.nii.gz'}: permission denied" in line for line in lines)
    assert any(f"case locked series left out: {data / 'img' / 'locked series'}: permission denied" in line for line in lines)
    assert [c["case_id"] for c in json.loads((tmp_path / "dl.json").read_text())["test"]] == ["good"]

    (line,) = _failure_lines(runs[1][2], "failed:")
    assert f"case locked failed: {pred / 'locked.nii.gz'}: permission denied" in line
    assert json.loads((tmp_path / "report" / "summary.json").read_text())["num_cases"] == 1

    assert len(runs[2][2].strip().splitlines()) == 1 and f"{pred_hidden}: the folder cannot be listed" in runs[2][2]

    _, out, err = runs[3]
    assert "1 written, 0 skipped, 2 failed" in out
    assert f"case locked failed: {data / 'img' / 'locked.nii.gz'}: permission denied" in err
    assert f"case locked series failed: {data / 'img' / 'locked series'}: permission denied" in err
    assert (tmp_path / "out" / "good.nii.gz").is_file()
