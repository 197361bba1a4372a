"""Streamed volume inference (``balr_sam.inference.streaming``): the same labels as MONAI's
``SliceInferer`` + ``Invertd``, memory that does not grow with the number of slices beyond the
input itself, read-ahead in batch runs, and two processes sharing one output folder."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Dict, List

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.inferers import SliceInferer
from monai.transforms import AsDiscreted, Compose, Invertd

from _segmenting import assert_segments
from _tiny_bundle import copy_tiny_cases, tiny_infer_args
from balr_sam.cli import main
from balr_sam.data.pipelines import ct_inference_preprocessing
from balr_sam.inference import InferenceItem, StreamingVolumeSegmenter, run_batch_inference


class _HUNet(torch.nn.Module):
    """A 9-class per-pixel classifier whose argmax changes over the image (``B x 1 x S x S`` -> ``B x 9 x S x S``)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 9, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x * 400.0 - 200.0)


def _volume(path: Path, shape: tuple, affine: np.ndarray, seed: int = 0) -> Path:
    data = np.random.default_rng(seed).integers(-300, 400, shape).astype(np.int16)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def _monai_reference(net: torch.nn.Module, source: Path, img_size: int, batch: int) -> np.ndarray:
    """What ``inference.json`` does: whole-volume logits with SliceInferer, Invertd (bilinear), argmax."""
    pre = ct_inference_preprocessing(img_size=img_size)
    data = pre({"image": str(source)})
    with torch.no_grad():
        data["pred"] = SliceInferer(roi_size=(img_size, img_size), spatial_dim=2, sw_batch_size=batch)(data["image"][None], net)[0]
    post = Compose([Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True), AsDiscreted(keys="pred", argmax=True)])
    return post(data)["pred"].numpy()[0].astype(np.uint8)


@pytest.mark.parametrize(
    "affine, img_size, batch",
    [
        (np.diag([0.8, 0.7, 2.5, 1.0]), 32, 3),  # RAS, downsampled, batch not dividing the depth
        (np.diag([-0.8, -0.7, 2.5, 1.0]), 64, 4),  # LPS, upsampled
        (np.array([[0.0, -0.9, 0.0, 10.0], [-0.75, 0.0, 0.0, -5.0], [0.0, 0.0, 3.0, 2.0], [0.0, 0.0, 0.0, 1.0]]), 48, 7),  # axes swapped
    ],
)
def test_streamed_labels_equal_slice_inferer_and_invertd(tmp_path: Path, affine: np.ndarray, img_size: int, batch: int) -> None:
    source = _volume(tmp_path / "ct.nii.gz", (50, 44, 7), affine)
    net = _HUNet().eval()
    labels, out_affine = StreamingVolumeSegmenter(net, ct_inference_preprocessing(img_size=img_size), batch, torch.device("cpu"))(str(source))
    reference = _monai_reference(net, source, img_size, batch)
    assert labels.shape == reference.shape == (50, 44, 7)
    assert len(np.unique(reference)) > 3  # the comparison is not between two constant maps
    np.testing.assert_array_equal(labels, reference)
    np.testing.assert_allclose(out_affine, nib.load(source).affine, atol=1e-6)


# The peak is taken over the segmentation only: VmHWM is reset after the imports (whose own peak,
# e.g. byte-compiling in a fresh environment, can exceed the segmentation's).
_PEAK_SCRIPT = """
import re, sys, torch
sys.path.insert(0, {tests!r})
from test_volume_inference import _HUNet, _monai_reference
from balr_sam.data.pipelines import ct_inference_preprocessing
from balr_sam.inference import StreamingVolumeSegmenter
torch.set_num_threads(1)
net = _HUNet().eval()
segment = StreamingVolumeSegmenter(net, ct_inference_preprocessing(img_size=128), 8, torch.device("cpu"))
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # reset the peak resident set size (VmHWM)
if sys.argv[1] == "streamed":
    segment(sys.argv[2])
else:
    _monai_reference(net, sys.argv[2], 128, 8)
status = open("/proc/self/status").read()
print(int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) * 1024)
"""


def _peak_rss(mode: str, source: Path) -> int:
    script = _PEAK_SCRIPT.format(tests=str(Path(__file__).parent))
    done = subprocess.run([sys.executable, "-c", script, mode, str(source)], capture_output=True, text=True, check=True, timeout=300)
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to reset the peak RSS")
def test_memory_per_slice_is_bounded_by_the_input(tmp_path: Path) -> None:
    """Peak RSS growth per added voxel: the streamed path holds the input (a few bytes per voxel),
    never the class logits (9 x 4 bytes, twice); MONAI's whole-volume path is measured alongside
    to show the test can tell them apart. A 512 x 512 x 1000 volume is 262 M voxels: about 3 GiB
    streamed against 22 GiB."""
    small = _volume(tmp_path / "small.nii.gz", (256, 256, 16), np.diag([0.7, 0.7, 2.0, 1.0]))
    large = _volume(tmp_path / "large.nii.gz", (256, 256, 160), np.diag([0.7, 0.7, 2.0, 1.0]))
    added_voxels = 256 * 256 * (160 - 16)
    per_voxel = {mode: (_peak_rss(mode, large) - _peak_rss(mode, small)) / added_voxels for mode in ("streamed", "monai")}
    print(f"peak RSS growth, bytes per input voxel: {per_voxel}")
    # streamed: the loaded volume and MONAI's copy-per-transform (about 12 bytes per voxel at the
    # peak); whole-volume logits: about 86
    assert per_voxel["streamed"] < 24.0
    assert per_voxel["monai"] > 3.0 * per_voxel["streamed"]


class _CountingPredictor:
    """A staged predictor that records loads and segments; segmenting ``a`` waits for the next case's read to start."""

    def __init__(self) -> None:
        self.events: List[str] = []
        self.next_read = threading.Event()

    def load(self, item: InferenceItem) -> str:
        self.events.append(f"load {item.case}")
        if item.case == "bad":
            self.next_read.set()
            raise ValueError(f"{item.image}: unreadable")
        return item.case

    def segment(self, item: InferenceItem, loaded: str) -> tuple:
        if loaded == "a" and not self.next_read.wait(timeout=10):
            raise RuntimeError("the next case was not read while this one was segmented")
        self.events.append(f"segment {loaded}")
        return np.zeros((4, 4, 2), np.uint8), np.eye(4)


def test_read_ahead_overlaps_the_next_case_and_keeps_per_case_errors(tmp_path: Path) -> None:
    items = [InferenceItem(name, str(tmp_path / f"{name}.nii.gz"), "volume") for name in ("a", "bad", "c", "d")]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "d.nii.gz").write_bytes(b"done before")  # finished earlier: never read again
    predictor = _CountingPredictor()
    report = run_batch_inference(items, tmp_path / "out", predictor, {0: "background"}, progress=False, log=lambda _: None, prefetch=True)
    assert report.written == ["a", "c"] and report.skipped == ["d"], report
    assert [case for case, _ in report.failed] == ["bad"] and "unreadable" in report.failed[0][1]
    assert "load d" not in predictor.events
    assert (tmp_path / "out" / "d.nii.gz").read_bytes() == b"done before"


def test_bundle_streaming_matches_the_configs_own_inferer(tiny_dataset: Dict[str, str], tiny_trained: Path, tmp_path: Path) -> None:
    """``balr-sam infer`` with the trained tiny BALR-SAM: streamed (default) and ``"streaming": false``
    (SliceInferer + Invertd from inference.json) write the same label maps."""
    outputs = {}
    for streaming in (True, False):
        out = tmp_path / f"out_{streaming}"
        options = tiny_infer_args(tiny_dataset, tiny_trained, tmp_path, f"streaming_{streaming}.json", sw_batch_size=3, streaming=streaming)
        args = ["infer", str(Path(tiny_dataset["dataset_dir"]) / "img"), str(out), *options, "--prefetch", "on" if streaming else "off"]
        assert main(args) == 0
        outputs[streaming] = {p.name: np.asarray(nib.load(p).dataobj) for p in sorted(out.glob("*.nii.gz"))}
    assert outputs[True].keys() == outputs[False].keys() and len(outputs[True]) == 5
    for name, labels in outputs[True].items():
        assert_segments(labels, 3, name)
        np.testing.assert_array_equal(labels, outputs[False][name], err_msg=name)


def test_two_processes_on_one_output_folder_write_each_case_once(tiny_dataset: Dict[str, str], tiny_trained: Path, tmp_path: Path) -> None:
    inputs = copy_tiny_cases(tiny_dataset, tmp_path / "in", 24)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "balr_sam", "infer", str(inputs), str(out), *tiny_infer_args(tiny_dataset, tiny_trained, tmp_path, sw_batch_size=8)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    counts = []
    for stdout, _ in results:
        match = re.search(r"(\d+) written, (\d+) skipped, (\d+) failed", stdout)
        assert match, stdout
        counts.append(tuple(int(v) for v in match.groups()))
    print(f"written, skipped, failed per process: {counts}")
    assert sum(c[0] for c in counts) == 24, counts  # every case written exactly once across both
    assert all(c[0] + c[1] == 24 and c[2] == 0 for c in counts), counts
    assert len(list(out.glob("*.nii.gz"))) == 24 and len(list(out.glob("*.json"))) == 24
    assert not [p.name for p in out.iterdir() if not p.name.endswith((".nii.gz", ".json"))]  # no locks or temp files left


class _ShapeRecorder(_HUNet):
    def __init__(self) -> None:
        super().__init__()
        self.batches: List[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        return super().forward(x)


def test_fixed_batch_pads_the_last_slab_and_keeps_the_labels(tmp_path: Path) -> None:
    """For a compiled network every call has ``batch_size`` slices (one compilation), same labels."""
    source = _volume(tmp_path / "ct.nii.gz", (40, 36, 10), np.diag([0.8, 0.7, 2.5, 1.0]))
    net = _ShapeRecorder().eval()
    free, _ = StreamingVolumeSegmenter(net, ct_inference_preprocessing(img_size=32), 4, torch.device("cpu"))(str(source))
    assert net.batches == [4, 4, 2]
    net.batches.clear()
    fixed, _ = StreamingVolumeSegmenter(net, ct_inference_preprocessing(img_size=32), 4, torch.device("cpu"), fixed_batch=True)(str(source))
    assert net.batches == [4, 4, 4]
    np.testing.assert_array_equal(fixed, free)


@pytest.mark.skipif(shutil.which("c++") is None, reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_bundle_writes_the_same_labels(tiny_dataset: Dict[str, str], tiny_trained: Path, tmp_path: Path) -> None:
    """``balr-sam infer --compile`` (torch.compile) against eager on two cases of the trained tiny model."""
    inputs = copy_tiny_cases(tiny_dataset, tmp_path / "in", 2)
    options = tiny_infer_args(tiny_dataset, tiny_trained, tmp_path, sw_batch_size=8)
    outputs = {}
    for flags in ([], ["--compile"]):
        out = tmp_path / ("compiled" if flags else "eager")
        args = ["infer", str(inputs), str(out), *options, *flags]
        assert main(args) == 0
        outputs[bool(flags)] = {p.name: np.asarray(nib.load(p).dataobj) for p in sorted(out.glob("*.nii.gz"))}
    assert outputs[True].keys() == outputs[False].keys() and len(outputs[True]) == 2
    for name, labels in outputs[True].items():
        assert_segments(labels, 3, name)
        # compiled kernels may reorder float sums: labels may differ only where two classes tie to ~1e-6
        assert float((labels == outputs[False][name]).mean()) >= 0.999, name
