"""The bundle's inference components, loaded once and applied to one case at a time.

:class:`BundlePredictor` parses the bundle's ``configs/inference.json`` (plus override files such
as ``configs/isic2017.json``), builds the network, loads the trained weights through the one
loader (:func:`balr_sam.inference.weights.load_trained_weights`) and segments a case into a label
map in the input's geometry. :func:`default_bundle_dir` is where ``balr-sam infer`` and
``balr-sam demo`` look for the bundle when none is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Tuple

import numpy as np
import torch

from balr_sam.bundle_location import bundle_dir
from balr_sam.errors import BalrSamError, DataError
from balr_sam.inference.batch import InferenceItem
from balr_sam.inference.streaming import StreamingVolumeSegmenter
from balr_sam.inference.weights import load_trained_weights

__all__ = ["BundlePredictor", "config_file", "default_bundle_dir"]


def default_bundle_dir() -> Path:
    """The bundle ``--bundle`` defaults to: the source checkout's ``bundle/``, else the installed copy (:func:`balr_sam.bundle_location.bundle_dir`)."""
    return bundle_dir()


def config_file(name: str, bundle: Path) -> Path:
    """A ``--config`` value: a file path, else the name of a file in the bundle's ``configs/`` (``--config isic2017.json``).

    Raises:
        BalrSamError: neither exists.
    """
    path = Path(name)
    if path.is_file():
        return path
    bundled = bundle / "configs" / name
    if bundled.is_file():
        return bundled
    raise BalrSamError(f"{name}: no such config file (nor {bundled})")


class BundlePredictor:
    """The bundle's inference components, loaded once, applied to one case at a time.

    Volumes are segmented by :class:`~balr_sam.inference.streaming.StreamingVolumeSegmenter`
    (unless the config sets ``"streaming": false``), 2D images by the config's inferer and
    postprocessing. Loading is split from segmenting (:class:`~balr_sam.inference.batch.StagedPredictor`)
    so that batch inference can read the next case ahead.

    Args:
        bundle_dir: bundle folder (``configs/inference.json``, ``models/model.pt``).
        checkpoint: trained weights (default ``<bundle>/models/model.pt``).
        sam_checkpoint: the SAM checkpoint the model was trained on.
        config_files: override files merged after ``inference.json``.
        overrides: ``{id: value}`` set on the parsed config (``device``, ``sw_batch_size``, ...).
        check_base: refuse weights trained on other SAM base weights.

    Raises:
        BalrSamError: no ``configs/inference.json`` in ``bundle_dir``, or no trained weights.
        CheckpointError: weights of another network configuration or other SAM base weights.
    """

    def __init__(
        self,
        bundle_dir: Path,
        checkpoint: Optional[Path] = None,
        sam_checkpoint: Optional[Path] = None,
        config_files: Tuple[Path, ...] = (),
        overrides: Optional[dict] = None,
        check_base: bool = True,
    ) -> None:
        from monai.bundle import ConfigParser

        from balr_sam.labels import get_label_set

        config = bundle_dir / "configs" / "inference.json"
        if not config.is_file():
            raise BalrSamError(f"{config}: no inference config there (is --bundle the bundle folder?)")
        parser = ConfigParser()
        parser.read_config([str(config), *map(str, config_files)])
        parser["bundle_root"] = str(bundle_dir)
        if sam_checkpoint is not None:
            parser["sam_checkpoint"] = str(sam_checkpoint)
        for key, value in (overrides or {}).items():
            parser[key] = value
        self.checkpoint = Path(checkpoint) if checkpoint else Path(parser.get_parsed_content("checkpoint"))
        if not self.checkpoint.is_file():
            raise BalrSamError(f"{self.checkpoint}: no trained model there; train the bundle first (or pass --checkpoint)")
        self.device = parser.get_parsed_content("device")
        self.amp = bool(parser.get_parsed_content("amp"))
        self.network = parser.get_parsed_content("network")
        load_trained_weights(self.network, self.checkpoint, merge=False, check_base=check_base).fuse_for_inference()
        self.network.eval()
        self.preprocessing = parser.get_parsed_content("preprocessing")
        self.inferer = parser.get_parsed_content("inferer")
        self.postprocessing = parser.get_parsed_content("postprocessing")
        self.kind = str(parser.get("kind", "volume"))
        self.label_names = dict(get_label_set(parser.get_parsed_content("label_set")).labels)
        # volumes: slab-by-slab argmax (memory bounded by the input, see balr_sam.inference.streaming);
        # "streaming": false uses the config's own inferer and postprocessing instead
        self.streaming: Optional[StreamingVolumeSegmenter] = None
        # "compile": true trades a one-off compilation (tens of seconds) for faster slices
        compiled = bool(parser.get_parsed_content("compile")) if "compile" in parser else False
        self.model = torch.compile(self.network) if compiled else self.network
        if self.kind == "volume" and bool(parser.get("streaming", True)):
            batch = int(parser.get_parsed_content("sw_batch_size"))
            self.streaming = StreamingVolumeSegmenter(self.model, self.preprocessing, batch, self.device, self.amp, fixed_batch=compiled)

    def load(self, item: InferenceItem) -> Any:
        """Read and preprocess one case (run ahead in a thread by batch inference)."""
        if item.kind != self.kind:
            raise DataError(f"{item.image}: a {item.kind} input, but this bundle configuration segments {self.kind} inputs (see --config)")
        if self.streaming is not None:
            return self.streaming.load(item.image)
        return self.preprocessing({"image": item.image})

    def segment(self, item: InferenceItem, loaded: Any) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """``(labels, affine)`` of a case :meth:`load` returned: ``X x Y x Z`` (affine voxel -> RAS) or ``H x W`` (affine None)."""
        if self.streaming is not None:
            return self.streaming.segment(loaded)
        data = loaded
        image = data["image"]
        with torch.no_grad(), torch.autocast(self.device.type, enabled=self.amp and self.device.type == "cuda"):
            data["pred"] = self.inferer(image[None].to(self.device), self.model)[0].float().cpu()
        data = self.postprocessing(data)
        labels = np.asarray(data["pred"].detach().cpu().numpy()[0]).astype(np.uint8)
        if self.kind != "volume":
            return labels, None
        # Invertd passes a prediction it cannot invert through with only a warning: never write
        # a label map whose grid is not the input's
        expected = tuple(int(s) for s in np.asarray(image.meta["spatial_shape"]))
        if labels.shape != expected:
            raise DataError(
                f"{item.image}: prediction shape {labels.shape} does not match the input's {expected} (not inverted to the original geometry); not written"
            )
        return labels, np.asarray(image.meta["original_affine"], dtype=np.float64)

    def __call__(self, item: InferenceItem) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        return self.segment(item, self.load(item))
