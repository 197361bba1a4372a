"""``balr-sam infer INPUT OUTPUT``: segment a folder of CT volumes, DICOM series or 2D images.

The network, preprocessing, inferer and postprocessing come from the bundle's
``configs/inference.json`` (plus ``--config`` override files, e.g. ``configs/isic2017.json``);
the trained weights from ``models/model.pt`` (or ``--checkpoint``). See
:mod:`balr_sam.inference` for the guarantees (exact geometry, skip-what-exists, atomic writes,
per-case errors, ``torchrun`` splitting).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, List, Optional, Tuple

import numpy as np
import torch

from balr_sam.bundle_location import bundle_dir
from balr_sam.errors import BalrSamError, DataError
from balr_sam.inference import InferenceItem, find_inputs, rank_and_world_size, run_batch_inference, split_for_rank
from balr_sam.volume_inference import StreamingVolumeSegmenter

__all__ = ["register", "BundlePredictor", "config_file", "default_bundle_dir"]


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

    Args:
        bundle_dir: bundle folder (``configs/inference.json``, ``models/model.pt``).
        checkpoint: trained weights (default ``<bundle>/models/model.pt``).
        sam_checkpoint: the SAM checkpoint the model was trained on.
        config_files: override files merged after ``inference.json``.
        overrides: ``{id: value}`` set on the parsed config (``device``, ``sw_batch_size``, ...).
        check_base: refuse weights trained on other SAM base weights.
    """

    def __init__(self, bundle_dir: Path, checkpoint: Optional[Path] = None, sam_checkpoint: Optional[Path] = None, config_files: Tuple[Path, ...] = (), overrides: Optional[dict] = None, check_base: bool = True) -> None:
        from monai.bundle import ConfigParser

        from balr_sam.engine.handlers import load_trained_weights
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
        # volumes: slab-by-slab argmax (memory bounded by the input, see balr_sam.volume_inference);
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
            raise DataError(f"{item.image}: prediction shape {labels.shape} does not match the input's {expected} (not inverted to the original geometry); not written")
        return labels, np.asarray(image.meta["original_affine"], dtype=np.float64)

    def __call__(self, item: InferenceItem) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        return self.segment(item, self.load(item))


def _prefetch(choice: str, device: torch.device) -> bool:
    # measured with `balr-sam benchmark` (batch inference rows): on a 2-core CPU reading ahead made
    # batches 1.0-1.45x slower, so "auto" reads ahead only while the network runs on a GPU
    return choice == "on" or (choice == "auto" and device.type == "cuda")


def run(args: argparse.Namespace) -> int:
    bundle = Path(args.bundle) if args.bundle else default_bundle_dir()
    overrides: dict = {}
    if args.device:
        overrides["device"] = f"$torch.device({args.device!r})"
    if args.compile:
        overrides["compile"] = True
    items: List[InferenceItem] = find_inputs(args.input)
    rank, world = rank_and_world_size()
    mine = split_for_rank(items, rank, world)
    predictor = BundlePredictor(bundle, args.checkpoint, args.sam_checkpoint, tuple(config_file(c, bundle) for c in args.config), overrides)
    report = run_batch_inference(mine, args.output, predictor, predictor.label_names, model_name=str(predictor.checkpoint), overwrite=args.overwrite, progress=not args.no_progress and rank == 0, prefetch=_prefetch(args.prefetch, predictor.device))
    where = f" (rank {rank} of {world})" if world > 1 else ""
    print(f"balr-sam infer{where}: {len(report.written)} written, {len(report.skipped)} skipped, {len(report.failed)} failed -> {args.output}")
    for case, reason in report.failed:
        print(f"  failed: {case}: {reason}", file=sys.stderr)
    return 0 if report.ok else 1


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("infer", help="segment a folder of CT volumes, DICOM series or 2D images", description=__doc__)
    parser.add_argument("input", help="a volume, a DICOM series folder, a 2D image, or a folder of those")
    parser.add_argument("output", help="output folder (one <case>.nii.gz / <case>.png and <case>.json per case)")
    parser.add_argument("--bundle", default=None, help="bundle folder (default: the repository's bundle/ in a source checkout, else the one installed with balr-sam)")
    parser.add_argument("--checkpoint", default=None, help="trained weights (default: <bundle>/models/model.pt)")
    parser.add_argument("--sam-checkpoint", default=None, help="the SAM checkpoint the model was trained on")
    parser.add_argument("--config", action="append", default=[], help="override config file merged after inference.json, a path or the name of a file in the bundle's configs/ (e.g. isic2017.json; repeatable)")
    parser.add_argument("--device", default=None, help="e.g. cpu, cuda, cuda:1 (default: the config's)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network (one-off compilation, then faster slices; pays off over many volumes)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs instead of skipping them")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--prefetch", choices=("auto", "on", "off"), default="auto",
                        help="read the next case while this one is segmented (auto: on CUDA only; on CPU the reading thread competes with the network for the cores)")
    parser.set_defaults(func=run)
