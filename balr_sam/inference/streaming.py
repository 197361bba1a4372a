"""Whole-volume segmentation streamed slab by slab, with memory bounded by the input volume.

MONAI's ``SliceInferer`` followed by ``Invertd`` holds the whole volume's class logits twice
(``K x S x S x D`` float32 at the model's size, then again at the input's size): about 80 bytes
per voxel for 9 classes, 22 GiB for a 512 x 512 x 1000 CT. :class:`StreamingVolumeSegmenter`
runs the same network, preprocessing and inverse transforms, but per slab of ``batch_size``
slices it

1. feeds the slices to the network (``B x C x S x S``),
2. undoes the in-plane ``Resized`` of the logits with MONAI's own inverse (bilinear, as
   ``Invertd(nearest_interp=False)`` does),
3. takes the argmax into a ``uint8`` label volume,

and finally undoes the rest of the preprocessing (the reorientation) on the labels with
``Invertd``. Working memory is the preprocessed input (4 bytes per voxel), the ``uint8`` labels
(1 byte per voxel, twice during the final inversion) and one slab of logits, whatever the number
of slices.

Loading is split from segmenting (:meth:`StreamingVolumeSegmenter.load` and
:meth:`StreamingVolumeSegmenter.segment`) so that a batch run can read the next case while the
current one is segmented; on CUDA the loaded volume is pinned so that slabs are copied to the
device asynchronously.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass
from typing import Any, Dict, Tuple

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd, Resize, Resized
from monai.utils import TraceKeys

__all__ = ["LoadedVolume", "StreamingVolumeSegmenter", "transforms_before_resize"]


@dataclass
class LoadedVolume:
    """A preprocessed volume ready for :meth:`StreamingVolumeSegmenter.segment`.

    Attributes:
        slices: ``D x C x S x S`` float32, one model input per axial slice (contiguous; pinned
            on CUDA).
        meta: the preprocessed MetaTensor's metadata (affines, source file).
        operations: the preprocessing's applied operations, the in-plane resize last.
    """

    slices: torch.Tensor
    meta: Dict[str, Any]
    operations: list


def transforms_before_resize(preprocessing: Compose, key: str = "image") -> Compose:
    """The transforms of ``preprocessing`` before its in-plane ``Resized`` of ``key`` (what :class:`~monai.transforms.Invertd` undoes on the labels).

    Raises:
        ValueError: the pipeline has no ``Resized`` for ``key`` (not a slice-inference preprocessing).
    """
    for index, transform in enumerate(preprocessing.transforms):
        if isinstance(transform, Resized) and key in transform.keys:
            return Compose(list(preprocessing.transforms[:index]))
    raise ValueError(f"the preprocessing has no Resized of {key!r}; cannot stream its inverse")


class StreamingVolumeSegmenter:
    """Segment CT volumes slab by slab into a ``uint8`` label map in the input file's geometry.

    Args:
        network: ``B x C x S x S`` -> ``B x K x S x S`` logits (eval mode, on ``device``).
        preprocessing: the bundle's ``ct_inference_preprocessing`` (load, ``Orientationd``, HU
            window, ``Resized`` in-plane to ``S``): image becomes ``C x S x S x D``.
        batch_size: slices per network call (``sw_batch_size`` of the bundle).
        device: where the network runs.
        amp: autocast (bf16/fp16 as the device prefers) on CUDA.
        key: the image key of ``preprocessing``.
        fixed_batch: pad the last slab to ``batch_size`` slices, so that a ``torch.compile``-d
            network sees one input shape and compiles once.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        preprocessing: Compose,
        batch_size: int,
        device: torch.device,
        amp: bool = False,
        key: str = "image",
        fixed_batch: bool = False,
    ) -> None:
        self.network = network
        self.preprocessing = preprocessing
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.amp = bool(amp) and self.device.type == "cuda"
        self.key = key
        self.fixed_batch = fixed_batch
        self._resize = Resize(spatial_size=-1)  # only its inverse_transform is used, with the recorded op
        self.inverter = Invertd(keys="pred", transform=transforms_before_resize(preprocessing, key), orig_keys=key, nearest_interp=True, to_tensor=True)

    def load(self, source: str) -> LoadedVolume:
        """Read and preprocess ``source`` (file or DICOM folder) into per-slice model inputs."""
        image = self.preprocessing({self.key: source})[self.key]
        operations = deepcopy(image.applied_operations)
        if not operations or operations[-1][TraceKeys.CLASS_NAME] != "Resize":
            raise ValueError("the preprocessing must end with the in-plane Resized (invertible by MONAI)")
        meta = dict(image.meta)
        # D x C x S x S in one copy, so a slab is a contiguous (pinnable) block
        slices = image.as_tensor().permute(3, 0, 1, 2).contiguous()
        del image
        if self.device.type == "cuda":
            slices = slices.pin_memory()
        return LoadedVolume(slices, meta, operations)

    @torch.no_grad()
    def segment(self, volume: LoadedVolume) -> Tuple[np.ndarray, np.ndarray]:
        """``(labels, affine)``: ``X x Y x Z`` uint8 labels in the source's voxel grid, and its affine (voxel -> RAS)."""
        resize_op = volume.operations[-1]
        depth = volume.slices.shape[0]
        height, width = (int(v) for v in resize_op[TraceKeys.ORIG_SIZE][:2])
        labels = torch.empty((height, width, depth), dtype=torch.uint8)
        for start in range(0, depth, self.batch_size):
            slab = volume.slices[start : start + self.batch_size].to(self.device, non_blocking=True)
            count = slab.shape[0]
            if self.fixed_batch and count < self.batch_size:
                slab = torch.cat([slab, slab[-1:].expand(self.batch_size - count, *slab.shape[1:])])
            with torch.autocast(self.device.type, enabled=self.amp):
                logits = self.network(slab)[:count]  # B x K x S x S
            # K x S x S x B, the layout the volume's Resized recorded; MONAI undoes it bilinearly
            logits = logits.float().permute(1, 2, 3, 0)
            op = {**resize_op, TraceKeys.ORIG_SIZE: (height, width, logits.shape[-1])}  # read, not changed
            logits = self._resize.inverse_transform(logits, op)
            labels[..., start : start + logits.shape[-1]] = torch.as_tensor(logits).argmax(0).to("cpu", torch.uint8)
        pred = MetaTensor(labels[None], meta=deepcopy(volume.meta))
        pred.applied_operations = volume.operations[:-1]
        inverted = self.inverter({"pred": pred, self.key: pred})["pred"]
        affine = np.asarray(volume.meta["original_affine"], dtype=np.float64)
        return np.asarray(inverted.detach().cpu().numpy()[0], dtype=np.uint8), affine

    def __call__(self, source: str) -> Tuple[np.ndarray, np.ndarray]:
        """Load and segment one volume: ``(labels X x Y x Z uint8, affine)``."""
        return self.segment(self.load(source))
