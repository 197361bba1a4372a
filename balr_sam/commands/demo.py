"""``balr-sam demo``: the whole product on a fresh machine, with nothing downloaded.

1. generates abdominal CT phantoms in the raw Synapse layout (``balr-sam synth ct``);
2. prepares their datalist (``balr-sam prepare synapse``);
3. writes a SAM base checkpoint in Meta's official format (random weights of the small
   ``vit_t`` variant: no real SAM weights can be downloaded here; with a real checkpoint the
   same commands train on top of it);
4. trains BALR-SAM through the bundle (``monai.bundle run training`` with ``train.json`` +
   ``demo.json``);
5. segments the held-out test volumes with batch inference (``balr-sam infer``);
6. evaluates them (per-case CSV, summary JSON/Markdown, overlay pictures).

Everything goes under ``--output``; the paths are printed at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from balr_sam.bundle_location import bundle_dir

__all__ = ["register", "run_demo"]

DEMO_VARIANT = "vit_t"


def _say(msg: str) -> None:
    print(f"[balr-sam demo] {msg}", flush=True)


def run_demo(
    output: Path,
    cases: int = 24,
    epochs: int = 50,
    val_interval: int = 10,
    seed: int = 0,
    overwrite: bool = False,
    extra_overrides: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """Run the demo; returns the evaluation summary plus the paths written."""
    from monai.bundle import run as bundle_run

    from balr_sam.data.datalist import load_datalist
    from balr_sam.data.prepare import prepare_synapse
    from balr_sam.data.synthetic import generate_ct_dataset
    from balr_sam.evaluation import write_evaluation_report
    from balr_sam.inference import BundlePredictor, find_inputs, run_batch_inference
    from balr_sam.networks.variants import build_sam

    output = Path(output)
    if output.exists() and any(output.iterdir()):
        if not overwrite:
            raise SystemExit(f"balr-sam demo: {output} exists and is not empty; pass --overwrite or another --output")
        shutil.rmtree(output)
    start = time.time()
    bundle = bundle_dir()
    data_dir, run_dir = output / "data" / "synapse", output / "bundle_run"

    _say(f"1/6 generating {cases} synthetic CT phantoms in {data_dir}")
    generate_ct_dataset(data_dir, cases=cases, seed=seed)
    datalist = data_dir / "datalist.json"
    _say(f"2/6 preparing the datalist {datalist}")
    prepare_synapse(data_dir, datalist, test_fraction=0.2, val_fraction=0.15, seed=seed)

    sam_ckpt = output / f"sam_{DEMO_VARIANT}_random_base.pth"
    _say(f"3/6 writing a random {DEMO_VARIANT} SAM base checkpoint (official format) to {sam_ckpt}")
    torch.manual_seed(seed)
    torch.save(build_sam(DEMO_VARIANT).state_dict(), sam_ckpt)

    _say(f"4/6 training BALR-SAM through the bundle ({epochs} epochs) into {run_dir}")
    configs = [str(bundle / "configs" / "train.json"), str(bundle / "configs" / "demo.json")]
    overrides = {
        "dataset_dir": str(datalist),
        "bundle_root": str(run_dir),
        "sam_checkpoint": str(sam_ckpt),
        "max_epochs": epochs,
        "val_interval": val_interval,
        "seed": seed,
    }
    overrides.update(extra_overrides or {})
    bundle_run(
        "training", config_file=configs, logging_file=str(bundle / "configs" / "logging.conf"), meta_file=str(bundle / "configs" / "metadata.json"), **overrides
    )
    model = run_dir / "models" / "model.pt"

    test_items = load_datalist(datalist, "test")
    inputs = output / "test_images"
    inputs.mkdir(parents=True, exist_ok=True)
    for item in test_items:
        shutil.copy2(item["image"], inputs / Path(item["image"]).name)
    predictions = output / "predictions"
    _say(f"5/6 batch inference on {len(test_items)} held-out NIfTI volumes in {inputs} -> {predictions}")
    network_overrides = {k: v for k, v in (extra_overrides or {}).items() if k in ("variant", "img_size", "num_classes")}
    predictor = BundlePredictor(bundle, model, sam_ckpt, (bundle / "configs" / "demo.json",), overrides=network_overrides)
    report = run_batch_inference(find_inputs(inputs), predictions, predictor, predictor.label_names, model_name=str(model), progress=False)
    if not report.ok:
        raise SystemExit(f"balr-sam demo: inference failed for {report.failed}")

    evaluation = output / "evaluation"
    _say(f"6/6 evaluating the predictions against the phantoms' labels -> {evaluation}")
    summary = write_evaluation_report(
        datalist, "test", predictions, evaluation, pred_name="{case}.nii.gz", method_name=f"BALR-SAM {DEMO_VARIANT} (synthetic demo)"
    )
    minutes = (time.time() - start) / 60
    print((evaluation / "summary.md").read_text())
    paths = {
        "data": str(data_dir),
        "datalist": str(datalist),
        "sam_base_checkpoint": str(sam_ckpt),
        "trained_model": str(model),
        "tensorboard": str(run_dir / "runs"),
        "predictions": str(predictions),
        "evaluation": str(evaluation),
        "overlays": str(evaluation / "overlays"),
    }
    mean_dice = summary["mean"]["dice"]
    _say(f"done in {minutes:.1f} min; mean Dice over the {len(test_items)} test phantoms: {mean_dice:.3f}")
    for name, path in paths.items():
        _say(f"  {name:20s} {path}")
    result = {"mean_dice": mean_dice, "minutes": minutes, "paths": paths, "summary": summary}
    (output / "demo_result.json").write_text(json.dumps({k: v for k, v in result.items() if k != "summary"}, indent=2) + "\n")
    return result


def run(args: argparse.Namespace) -> int:
    run_demo(Path(args.output), cases=args.cases, epochs=args.epochs, val_interval=args.val_interval, seed=args.seed, overwrite=args.overwrite)
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("demo", help="generate phantoms, train, infer and evaluate end to end (minutes, CPU)", description=__doc__)
    parser.add_argument("--output", default="balr-sam-demo", help="folder for everything the demo writes (default ./balr-sam-demo)")
    parser.add_argument("--cases", type=int, default=24, help="synthetic CT cases (default 24)")
    parser.add_argument("--epochs", type=int, default=50, help="training epochs (default 50)")
    parser.add_argument("--val-interval", type=int, default=10, help="validate every N epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing demo folder")
    parser.set_defaults(func=run)
