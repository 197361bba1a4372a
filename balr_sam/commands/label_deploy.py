"""``balr-sam label-deploy --app DIR``: the bundle in MONAI Label 0.8.5's ``monaibundle`` sample app.

Copies the sample app to DIR (unless DIR holds it already) and deploys the bundle at
DIR/model/balr_sam/: configs/, docs/, schema/ and LICENSE (the configs re-written with the
settings: sam_checkpoint, dataset_dir, resume false, val_interval 1, each --set), models/model.pt
(--model), models/<SAM checkpoint name> (a link to --sam-checkpoint), monailabel/datalist.json
and monailabel/settings.json. Everything is checked before anything is written (the model is
loaded as MONAI Label will load it); running the same command again completes a deployment that
was interrupted. Run it in the MONAI Label environment: ``bash scripts/setup_monailabel.sh``
creates it and passes its deployment options on here. Details: :mod:`balr_sam.monailabel`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from balr_sam.bundle_location import bundle_dir
from balr_sam.monailabel import NAME, deploy, server_command

__all__ = ["register"]


def run(args: argparse.Namespace) -> int:
    source = Path(args.bundle) if args.bundle else bundle_dir()
    plan = deploy(args.app, source, sam_checkpoint=args.sam_checkpoint, model=args.model, settings=args.set, force=args.force)
    if plan.needs_app:
        print(f"copied MONAI Label's monaibundle sample app to {plan.app}")
    if not plan.target.exists():
        print(f"warning: {plan.target} does not exist yet: MONAI Label lists the model for inference only once it does (pass --model FILE)", file=sys.stderr)
    print(f"bundle deployed at {plan.bundle}")
    for key, value in sorted(plan.settings.items()):
        print(f"  {key} = {json.dumps(value)}")
    print("start the server with:")
    print(f"  {server_command(plan.app)}")
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("label-deploy", help="deploy the bundle into a MONAI Label app (run in the MONAI Label environment)", description=__doc__)
    parser.add_argument("--app", required=True, help="the MONAI Label app folder (the monaibundle sample app is copied there unless it holds it already)")
    parser.add_argument("--sam-checkpoint", default=None, help="Meta's SAM weights the model was trained on (linked as models/<name>; needed the first time)")
    parser.add_argument(
        "--model", default=None, help=f"the trained model.pt, copied to <app>/model/{NAME}/models/model.pt (MONAI Label lists the model only when it exists)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a top-level value of train.json or inference.json in the deployed configs (VALUE is JSON or a plain string; repeatable), "
        "e.g. --set variant=vit_l --set img_size=1024 for a model trained with those",
    )
    parser.add_argument("--bundle", default=None, help="the bundle to deploy (default: the repository's bundle/ in a source checkout, else the installed one)")
    parser.add_argument("--force", action="store_true", help="replace a different models/model.pt or SAM link (it may be a model fine-tuned in MONAI Label)")
    parser.set_defaults(func=run)
