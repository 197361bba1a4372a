"""``balr-sam synth ct|isic|polyp OUTDIR``: write deterministic synthetic data in a real layout.

- ``ct``: abdominal CT phantoms as raw Synapse/BTCV (``img/imgXXXX.nii.gz`` + ``label/``).
- ``isic``: dermoscopy-like images in the ISIC 2017 folders.
- ``polyp``: colonoscopy-like images in PraNet's ``TrainDataset``/``TestDataset``.

Examples::

    balr-sam synth ct data/synth_ct --cases 12 --seed 0 --datalist data/synth_ct/datalist.json
    balr-sam synth isic data/synth_isic --cases 20
    balr-sam synth polyp data/synth_polyp --cases 20 --test-cases 4

The same arguments give byte-identical files. ``--datalist`` also runs the matching
``balr-sam prepare`` on the result. A non-empty OUTDIR is only replaced with ``--overwrite``,
and only when it holds a previous synthetic dataset.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from balr_sam.data.prepare import prepare_isic2017, prepare_polyp, prepare_synapse
from balr_sam.data.synthetic import generate_ct_dataset, generate_isic_dataset, generate_polyp_dataset

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``synth`` sub-command."""
    p = subparsers.add_parser(
        "synth",
        help="write deterministic synthetic data (CT phantoms, ISIC-like, polyp-like)",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples::", 1)[1],
    )
    p.add_argument("kind", choices=("ct", "isic", "polyp"))
    p.add_argument("outdir", type=Path)
    p.add_argument("--cases", type=int, default=None, help="number of cases (default ct 8, isic 10, polyp 10 training)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shape", type=int, nargs=3, default=(96, 96, 24), metavar=("X", "Y", "Z"), help="ct: voxels per case")
    p.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"), help="isic/polyp: approximate image size")
    p.add_argument("--test-cases", type=int, default=None, help="polyp: images per test set")
    p.add_argument("--datalist", type=Path, default=None, help="also prepare a datalist at this path")
    p.add_argument("--overwrite", action="store_true", help="replace a previous synthetic dataset in OUTDIR")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Generate, optionally prepare, print a summary."""
    if args.kind == "ct":
        paths = generate_ct_dataset(args.outdir, cases=args.cases or 8, seed=args.seed, shape=tuple(args.shape), overwrite=args.overwrite)
    elif args.kind == "isic":
        paths = generate_isic_dataset(args.outdir, cases=args.cases or 10, seed=args.seed, size=tuple(args.size or (192, 256)), overwrite=args.overwrite)
    else:
        paths = generate_polyp_dataset(
            args.outdir, cases=args.cases or 10, seed=args.seed, test_cases=args.test_cases, size=tuple(args.size or (224, 256)), overwrite=args.overwrite
        )
    print(f"wrote {len(paths)} synthetic {args.kind} cases to {args.outdir}")
    if args.datalist is not None:
        prepare = {"ct": prepare_synapse, "isic": prepare_isic2017, "polyp": prepare_polyp}[args.kind]
        datalist = prepare(args.outdir, output=args.datalist, overwrite=args.overwrite)
        print(f"wrote {args.datalist}: training {datalist['numTraining']}, validation {datalist['numValidation']}, test {datalist['numTest']}")
    return 0
