"""``balr-sam evaluate``: score predictions against ground truth (argument parsing only).

Two ways to name the ground truth:

- ``--label DIR``: a folder of label maps, paired with ``--pred`` by file name
  (:func:`balr_sam.evaluation.evaluate_folder`): per-case and per-class Dice, IoU and HD95;
- ``--datalist FILE [--split test]``: a prepared datalist's split
  (:func:`balr_sam.evaluation.write_evaluation_report`): a 2D datalist (ISIC 2017, polyps) by its
  task's protocol (pooled confusion matrix, or PraNet's per-image means per test set), any other
  one per case and class, as the bundle's evaluation does.

Writes the reports (``summary.json``, ``summary.md``, ``per_case.csv`` or ``per_image.csv``, and
``overlays/*.png``) into ``--output``. Exit status 0 when every case was evaluated, 1 when any case
failed (the others are still reported) or on bad input.
"""

from __future__ import annotations

import argparse

from balr_sam.labels import available_label_sets
from balr_sam.metrics import DISTANCE_METHODS, PROTOCOLS, PROTOCOLS_2D

__all__ = ["register", "run"]


def register(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add the ``evaluate`` subcommand."""
    parser = subparsers.add_parser(
        "evaluate",
        help="Dice/HD95 of predictions against ground truth (a label folder or a datalist split)",
        description=(
            "Evaluate predicted label maps (NIfTI, NRRD/MHA, or PNG for 2D tasks) against ground truth: a folder "
            "of labels (--label: per-case and per-class Dice, IoU and HD95 in mm and voxels) or a prepared "
            "datalist's split (--datalist: 2D tasks by their papers' protocol, ISIC 2017 pooled or PraNet per "
            "image). Writes a summary JSON, a Markdown table in the papers' column order, a per-case CSV and "
            "overlay pictures of the worst and best cases."
        ),
    )
    parser.add_argument("--pred", required=True, metavar="DIR", help="folder of predictions")
    truth = parser.add_mutually_exclusive_group(required=True)
    truth.add_argument("--label", metavar="DIR", default=None, help="folder of ground-truth label maps, paired by name")
    truth.add_argument("--datalist", metavar="FILE", default=None, help="prepared datalist JSON whose --split is the ground truth")
    parser.add_argument("--split", default=None, help="datalist split to score (with --datalist; default: test)")
    parser.add_argument("--image", metavar="DIR", default=None, help="optional folder of images for the overlays (with --label)")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the reports")
    parser.add_argument(
        "--labels",
        default=None,
        choices=available_label_sets(),
        help="label set (default: synapse with --label; the datalist's with --datalist, where it picks a 2D task's protocol)",
    )
    parser.add_argument(
        "--label-map",
        default=None,
        metavar="MAP",
        help="numbering of the ground truth, with --label: identity, btcv or totalseg (default: identity)",
    )
    parser.add_argument("--pred-label-map", default=None, metavar="MAP", help="numbering of the predictions, with --label (default: identity)")
    parser.add_argument(
        "--protocol",
        default=None,
        choices=PROTOCOLS + tuple(sorted(PROTOCOLS_2D)),
        help="empty-case rules of label maps: transunet (SAMed/TransUNet, headline HD95 in voxels; the default) or "
        "clinical (undefined values are NaN and counted, headline HD95 in mm); for a 2D datalist: isic2017 or "
        "pranet (default: from the label set)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--name", default=None, help="Method name in the Markdown table (default: --pred folder name)")
    parser.add_argument("--overlays", type=int, default=2, metavar="N", help="draw the N worst and N best cases (default: 2; 0: none)")
    parser.add_argument("--distance", default="auto", choices=DISTANCE_METHODS, help="surface-distance algorithm (all exact; default: auto)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing result in --output")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run, parser=parser)
    return parser


def _num(v: object, scale: float = 1.0) -> str:
    return "n/a" if v is None else f"{float(v) * scale:.2f}"  # type: ignore[arg-type]


def _run_folder(args: argparse.Namespace) -> int:
    from balr_sam.evaluation import evaluate_folder

    if args.protocol in PROTOCOLS_2D:
        args.parser.error(f"--protocol {args.protocol} is a 2D datalist protocol; with --label use transunet or clinical")
    result = evaluate_folder(
        pred_dir=args.pred,
        label_dir=args.label,
        output_dir=args.output,
        image_dir=args.image,
        label_set=args.labels or "synapse",
        label_map=args.label_map or "identity",
        pred_label_map=args.pred_label_map or "identity",
        protocol=args.protocol or "transunet",
        device=args.device,
        method_name=args.name,
        num_overlays=args.overlays,
        overwrite=args.overwrite,
        distance_method=args.distance,
        progress=not args.no_progress,
    )
    s = result.summary
    primary = s["primary_hd95"]
    print(
        f"{s['num_cases']} case(s), protocol {s['protocol']}: mean DSC {_num(s['mean']['dice'], 100)} %, "
        f"mean HD95 {_num(s['mean'][f'hd95_{primary}'])} ({primary}); reports in {result.output_dir}"
    )
    if result.failed:
        print(f"{len(result.failed)} case(s) failed; see summary.json")
        return 1
    return 0


def _run_datalist(args: argparse.Namespace) -> int:
    from pathlib import Path

    from balr_sam.evaluation import write_evaluation_report

    for flag, value in (("--image", args.image), ("--label-map", args.label_map), ("--pred-label-map", args.pred_label_map)):
        if value is not None:
            args.parser.error(f"{flag} goes with --label; a datalist names its images and its label numbering itself")
    s = write_evaluation_report(
        args.datalist,
        args.split or "test",
        args.pred,
        args.output,
        pred_name=None,
        protocol=args.protocol,
        method_name=args.name or Path(args.pred).resolve().name,
        overwrite=args.overwrite,
        label_set=args.labels,
        num_overlays=args.overlays,
        device=args.device,
        distance_method=args.distance,
        progress=not args.no_progress,
    )
    if "num_images" in s:  # a 2D protocol
        print(f"{s['num_images']} image(s), protocol {s['protocol']}: Dice {_num(s['dice'], 100)} %, IoU {_num(s['iou'], 100)} %; reports in {args.output}")
    else:
        primary = s["primary_hd95"]
        print(
            f"{s['num_cases']} case(s), protocol {s['protocol']}: mean DSC {_num(s['mean']['dice'], 100)} %, "
            f"mean HD95 {_num(s['mean'][f'hd95_{primary}'])} ({primary}); reports in {args.output}"
        )
    if s["num_failed"]:
        print(f"{s['num_failed']} case(s) failed; see summary.json")
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the evaluation; returns 0 when every case was evaluated, else 1."""
    if args.label is not None:
        if args.split is not None:
            args.parser.error("--split goes with --datalist")
        return _run_folder(args)
    return _run_datalist(args)
