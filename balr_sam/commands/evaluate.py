"""``balr-sam evaluate``: score a folder of predicted label maps against ground truth.

Writes ``per_case.csv``, ``summary.json``, ``summary.md`` and ``overlays/*.png`` into
``--output`` (see :mod:`balr_sam.evaluation`). Exit status 0 when every case was evaluated,
1 when any case failed (the others are still reported) or on bad input.
"""

from __future__ import annotations

import argparse

from balr_sam.labels import available_label_sets
from balr_sam.metrics import PROTOCOLS

__all__ = ["register", "run"]


def register(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add the ``evaluate`` subcommand."""
    parser = subparsers.add_parser(
        "evaluate",
        help="Dice/HD95 of a folder of predictions against ground truth",
        description=(
            "Evaluate a folder of predicted label maps (NIfTI, or PNG for 2D tasks) against ground truth: "
            "per-case and per-class Dice, IoU and HD95 (mm and voxel), a summary JSON, a Markdown table in "
            "the papers' column order and overlay pictures of the worst and best cases."
        ),
    )
    parser.add_argument("--pred", required=True, metavar="DIR", help="folder of predicted label maps")
    parser.add_argument("--label", required=True, metavar="DIR", help="folder of ground-truth label maps")
    parser.add_argument("--image", metavar="DIR", default=None, help="optional folder of images for the overlays")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the reports")
    parser.add_argument(
        "--labels", default="synapse", choices=available_label_sets(), help="label set (default: synapse)"
    )
    parser.add_argument(
        "--label-map",
        default="identity",
        metavar="MAP",
        help="numbering of the ground truth: identity, btcv or totalseg (default: identity)",
    )
    parser.add_argument(
        "--pred-label-map",
        default="identity",
        metavar="MAP",
        help="numbering of the predictions (default: identity)",
    )
    parser.add_argument(
        "--protocol",
        default="transunet",
        choices=PROTOCOLS,
        help="empty-case rules: transunet (SAMed/TransUNet, headline HD95 in voxels) or clinical "
        "(undefined values are NaN and counted, headline HD95 in mm); default: transunet",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--name", default=None, help="Method name in the Markdown table (default: --pred folder name)")
    parser.add_argument(
        "--overlays", type=int, default=2, metavar="N", help="draw the N worst and N best cases (default: 2; 0: none)"
    )
    parser.add_argument(
        "--distance",
        default="auto",
        choices=("auto", "cdist", "kdtree", "edt"),
        help="surface-distance algorithm (all exact; default: auto)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing result in --output")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the evaluation; returns 0 when every case was evaluated, else 1."""
    from balr_sam.evaluation import evaluate_folder

    result = evaluate_folder(
        pred_dir=args.pred,
        label_dir=args.label,
        output_dir=args.output,
        image_dir=args.image,
        label_set=args.labels,
        label_map=args.label_map,
        pred_label_map=args.pred_label_map,
        protocol=args.protocol,
        device=args.device,
        method_name=args.name,
        num_overlays=args.overlays,
        overwrite=args.overwrite,
        distance_method=args.distance,
        progress=not args.no_progress,
    )
    s = result.summary
    primary = s["primary_hd95"]

    def num(v: object, scale: float = 1.0) -> str:
        return "n/a" if v is None else f"{float(v) * scale:.2f}"  # type: ignore[arg-type]

    print(
        f"{s['num_cases']} case(s), protocol {s['protocol']}: mean DSC {num(s['mean']['dice'], 100)} %, "
        f"mean HD95 {num(s['mean'][f'hd95_{primary}'])} ({primary}); reports in {result.output_dir}"
    )
    if result.failed:
        print(f"{len(result.failed)} case(s) failed; see summary.json")
        return 1
    return 0
