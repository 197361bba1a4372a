"""``balr-sam prepare DATASET SRC --output DATALIST.json``: write a MONAI decathlon-style datalist.

Datasets (one sub-command each, see :mod:`balr_sam.data.prepare` for the layouts):

- ``synapse``: raw BTCV (``img/`` + ``label/``) or TransUNet's ``train_npz/`` + ``test_vol_h5/``;
  TransUNet's 18/12 split, or a seeded fraction split for other case numbers.
- ``isic2017``: the official ISIC 2017 Part 1 folders.
- ``polyp``: PraNet's ``TrainDataset/`` + ``TestDataset/<five sets>/``.
- ``images2d``: any "images folder + masks folder" 2D dataset (Kvasir-SEG, PH2...), or one folder
  with each mask beside its image (``--images . --masks . --mask-suffix _lesion``).
- ``nifti``: any folder of volumes and/or DICOM series, labels optional.

Examples::

    balr-sam prepare synapse /data/Synapse/RawData --output data/synapse.json
    balr-sam prepare synapse /data/project_TransUNet/data/Synapse --output data/synapse_npz.json
    balr-sam prepare isic2017 /data/ISIC2017 --output data/isic.json
    balr-sam prepare polyp /data/PraNet --output data/polyp.json
    balr-sam prepare images2d ../shared/data/dermoscopy-ph2 --mask-suffix _lesion --output ph2.json
    balr-sam prepare nifti ../shared/data/ct-abdomen-dicom --image-name series \\
        --label-name label_totalseg.nii.gz --label-map totalseg --test-fraction 1 --output ct.json

An existing output is never replaced unless ``--overwrite`` is given. ``--verify`` reads every
file completely (NaN/Inf, label values, decoding) after writing the datalist.

A bad case (unreadable, corrupt or empty file, missing partner, image/label mismatch, and with
``--verify`` NaN/Inf voxels or label values outside the label map) does not stop the others: it
is reported on one line, left out of the splits and listed under ``failed`` in the datalist, and
the exit status is 1. ``--fail-fast`` stops at the first bad case instead (before writing the
datalist, or, for ``--verify``'s checks, after).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from balr_sam.data.datalist import exclude_failed, verify_datalist
from balr_sam.data.prepare import prepare_images2d, prepare_isic2017, prepare_nifti, prepare_polyp, prepare_synapse
from balr_sam.errors import DataError

__all__ = ["register", "run"]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", type=Path, help="dataset root folder")
    p.add_argument("-o", "--output", type=Path, required=True, help="datalist JSON to write (paths relative to its folder)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--verify", action="store_true", help="read every file completely after preparing")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first bad case (default: leave it out, list it under 'failed', exit status 1)")


def _fractions(p: argparse.ArgumentParser, val: float, test: float) -> None:
    p.add_argument("--val-fraction", type=float, default=val, help=f"fraction of cases for validation (default {val})")
    p.add_argument("--test-fraction", type=float, default=test, help=f"fraction of cases for test (default {test})")
    p.add_argument("--seed", type=int, default=0, help="seed of the fraction split (default 0)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``prepare`` and its dataset sub-commands."""
    parser = subparsers.add_parser(
        "prepare",
        help="write a MONAI datalist for a dataset folder",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples::", 1)[1] if "Examples::" in __doc__ else None,
    )
    sub = parser.add_subparsers(dest="dataset", metavar="DATASET")
    sub.required = True

    p = sub.add_parser("synapse", help="Synapse/BTCV CT: raw img/ + label/, or TransUNet train_npz/ + test_vol_h5/")
    _common(p)
    p.add_argument("--layout", choices=("auto", "raw", "npz"), default="auto")
    p.add_argument(
        "--split",
        choices=("auto", "transunet", "fraction"),
        default="auto",
        help="raw layout: TransUNet's 18/12 split, a seeded fraction split, or auto (TransUNet when all 30 cases exist)",
    )
    p.add_argument("--val-fraction", type=float, default=None, help="validation fraction (default 0 with the TransUNet split, 0.2 with the fraction split)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="test fraction of the fraction split (default 0.2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--list-dir", type=Path, default=None, help="folder with TransUNet's train.txt / test_vol.txt")
    p.set_defaults(func=run)

    p = sub.add_parser("isic2017", help="ISIC 2017 Part 1 official folders")
    _common(p)
    p.add_argument("--mask-threshold", type=float, default=127)
    p.set_defaults(func=run)

    p = sub.add_parser("polyp", help="PraNet layout: TrainDataset/ + TestDataset/<set>/")
    _common(p)
    p.add_argument("--val-fraction", type=float, default=0.0, help="fraction of training images for validation (default 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mask-threshold", type=float, default=127)
    p.set_defaults(func=run)

    p = sub.add_parser("images2d", help="generic 2D: <src>/images + <src>/masks paired by name (or one folder: --images . --masks .)")
    _common(p)
    p.add_argument("--images", default="images", help="image sub-folder (default images)")
    p.add_argument("--masks", default="masks", help="mask sub-folder (default masks; the image folder itself when masks lie beside the images)")
    p.add_argument("--mask-suffix", default="", help="mask name = image stem + suffix, e.g. _lesion (PH2); required when images and masks share a folder")
    p.add_argument("--label-set", default="binary", help="label set (binary, isic2017, polyp)")
    p.add_argument("--mask-threshold", type=float, default=127, help="foreground = value > threshold (default 127)")
    p.add_argument("--modality", default="photograph")
    p.add_argument("--name", default=None)
    _fractions(p, 0.2, 0.2)
    p.set_defaults(func=run)

    p = sub.add_parser("nifti", help="generic CT volumes: NIfTI/NRRD/MHA files and/or DICOM series folders")
    _common(p)
    p.add_argument("--images", type=Path, default=None, help="folder of volumes (default SRC)")
    p.add_argument("--labels", type=Path, default=None, help="folder of labels, matched by name")
    p.add_argument("--label-suffix", default="", help="label name = image stem + suffix (e.g. _seg)")
    p.add_argument("--image-name", action="append", default=[], help="case-folder mode: image file or DICOM folder name inside each case folder (repeatable)")
    p.add_argument("--label-name", default=None, help="case-folder mode: label file name inside each case folder")
    p.add_argument("--label-set", default="synapse")
    p.add_argument("--label-map", default="identity", help="numbering of the label files: identity, btcv, totalseg")
    p.add_argument("--modality", default="CT")
    p.add_argument("--name", default=None)
    _fractions(p, 0.2, 0.2)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Prepare, write, optionally verify, and print a summary (exit status 2 on invalid options)."""
    try:
        return _run(args)
    except ValueError as err:  # invalid option values (fractions, layout names...)
        print(f"balr-sam prepare {args.dataset}: error: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    common = dict(output=args.output, overwrite=args.overwrite, skip_bad=not args.fail_fast)
    if args.dataset == "synapse":
        datalist = prepare_synapse(
            args.src,
            layout=args.layout,
            split=args.split,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            seed=args.seed,
            list_dir=args.list_dir,
            **common,
        )
    elif args.dataset == "isic2017":
        datalist = prepare_isic2017(args.src, mask_threshold=args.mask_threshold, **common)
    elif args.dataset == "polyp":
        datalist = prepare_polyp(args.src, val_fraction=args.val_fraction, seed=args.seed, mask_threshold=args.mask_threshold, **common)
    elif args.dataset == "images2d":
        datalist = prepare_images2d(
            args.src,
            images=args.images,
            masks=args.masks,
            mask_suffix=args.mask_suffix,
            label_set=args.label_set,
            mask_threshold=args.mask_threshold,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            seed=args.seed,
            modality=args.modality,
            name=args.name,
            **common,
        )
    elif args.dataset == "nifti":
        datalist = prepare_nifti(
            args.src,
            images=args.images,
            labels=args.labels,
            label_suffix=args.label_suffix,
            image_names=args.image_name,
            label_name=args.label_name,
            label_set=args.label_set,
            label_map=args.label_map,
            modality=args.modality,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            seed=args.seed,
            name=args.name,
            **common,
        )
    else:  # pragma: no cover - argparse restricts the choices
        raise DataError(f"{args.src}: unknown dataset {args.dataset!r}")
    print(f"wrote {args.output}: {datalist['name']}")
    print(
        f"  training {datalist['numTraining']}, validation {datalist['numValidation']}, test {datalist['numTest']}"
        f" (split: {datalist['split']}; labels: {datalist['label_map']} -> {datalist['label_set']})"
    )
    for key in ("unlabeled", "ignored"):
        if datalist.get(key):
            print(f"  {key}: {len(datalist[key])}")
    for note in datalist.get("notes", []):
        print(f"  note: {note}")
    failed = list(datalist.get("failed", []))
    if args.verify:
        problems: list = [] if not args.fail_fast else None  # type: ignore[assignment]
        n = verify_datalist(args.output, failures=problems)
        if problems:
            exclude_failed(args.output, problems)
            failed += problems  # the same cases, case ids and errors, in the same order, as exclude_failed lists
            print(f"  verified {n} cases: {len(problems)} failed, left out and listed under 'failed' in {args.output}")
        else:
            print(f"  verified {n} cases: all files readable and consistent")
    for entry in failed:  # one line each, on stderr, like the other commands' per-case errors
        print(f"balr-sam prepare {args.dataset}: case {entry.get('case_id')} left out: {entry['error']}", file=sys.stderr)
    return 1 if failed else 0
