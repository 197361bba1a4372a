"""``balr-sam infer INPUT OUTPUT``: segment a folder of CT volumes, DICOM series or 2D images.

The network, preprocessing, inferer and postprocessing come from the bundle's
``configs/inference.json`` (plus ``--config`` override files, e.g. ``configs/isic2017.json``);
the trained weights from ``models/model.pt`` (or ``--checkpoint``). See
:mod:`balr_sam.inference.batch` for the guarantees (exact geometry, skip-what-exists, atomic
and durable writes, per-case locks and errors, ``torchrun`` splitting).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, List

import torch

from balr_sam.inference import (
    BundlePredictor,
    InferenceItem,
    config_file,
    default_bundle_dir,
    find_inputs,
    rank_and_world_size,
    run_batch_inference,
    split_for_rank,
)
from balr_sam.inference.batch import DEFAULT_WAIT_FOR_LOCKS_S

__all__ = ["register"]

_EXIT_STATUS = """exit status: 0 every case has its output (written now, or skipped: done before); 1 a case
failed (or nothing could start: bad input folder, bundle or weights); 2 usage error; 3 a case is
still locked by another process after --wait-for-locks (listed as "locked"; re-run later; a lock of
another host is never taken over: remove it by hand if that process is gone)"""


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
    report = run_batch_inference(
        mine,
        args.output,
        predictor,
        predictor.label_names,
        model_name=str(predictor.checkpoint),
        overwrite=args.overwrite,
        progress=not args.no_progress and rank == 0,
        prefetch=_prefetch(args.prefetch, predictor.device),
        wait_for_locks=args.wait_for_locks,
    )
    where = f" (rank {rank} of {world})" if world > 1 else ""
    print(f"balr-sam infer{where}: {report.summary()} -> {args.output}")
    for case, reason in report.failed:
        print(f"  failed: {case}: {reason}", file=sys.stderr)
    for case, holder in report.locked:
        print(f"  locked: {case}: {holder}", file=sys.stderr)
    return report.exit_status


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text}")
    return value


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("infer", help="segment a folder of CT volumes, DICOM series or 2D images", description=__doc__, epilog=_EXIT_STATUS)
    parser.add_argument("input", help="a volume, a DICOM series folder, a 2D image, or a folder of those")
    parser.add_argument("output", help="output folder (one <case>.nii.gz / <case>.png and <case>.json per case)")
    parser.add_argument(
        "--bundle", default=None, help="bundle folder (default: the repository's bundle/ in a source checkout, else the one installed with balr-sam)"
    )
    parser.add_argument("--checkpoint", default=None, help="trained weights (default: <bundle>/models/model.pt)")
    parser.add_argument("--sam-checkpoint", default=None, help="the SAM checkpoint the model was trained on")
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        help="override config file merged after inference.json, a path or the name of a file in the bundle's configs/ (e.g. isic2017.json; repeatable)",
    )
    parser.add_argument("--device", default=None, help="e.g. cpu, cuda, cuda:1 (default: the config's)")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the network (one-off compilation, then faster slices; pays off over many volumes)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs instead of skipping them")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--prefetch",
        choices=("auto", "on", "off"),
        default="auto",
        help="read the next case while this one is segmented (auto: on CUDA only; on CPU the reading thread competes with the network for the cores)",
    )
    parser.add_argument(
        "--wait-for-locks",
        type=_seconds,
        default=DEFAULT_WAIT_FOR_LOCKS_S,
        metavar="SECONDS",
        help=f"how long to wait for cases another process is writing (default {DEFAULT_WAIT_FOR_LOCKS_S:g}); "
        "those still locked then are reported and the exit status is 3",
    )
    parser.set_defaults(func=run)
