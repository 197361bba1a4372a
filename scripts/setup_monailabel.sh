#!/usr/bin/env bash
# MONAI Label 0.8.5 for the BALR-SAM bundle: its own virtual environment and a ready `monaibundle` app.
#
#   bash scripts/setup_monailabel.sh
#       create (or reuse) .venv-label and install requirements-label.txt (MONAI Label 0.8.5 with
#       pydicom<3) and balr-sam (`pip install --no-deps -e .`) into it
#   bash scripts/setup_monailabel.sh --app DIR --sam-checkpoint FILE [--model FILE] [--set KEY=VALUE ...]
#       also copy MONAI Label's `monaibundle` sample app (from the installed package) to DIR, unless
#       DIR already holds it, and deploy the bundle at DIR/model/balr_sam/:
#         configs/, docs/, schema/, LICENSE   copied from bundle/ (configs re-written with the settings below)
#         models/model.pt                     the trained BALR-SAM (--model; MONAI Label lists the model only
#                                             when this file exists); a different one already there is kept
#                                             unless --force (it may be a model fine-tuned in MONAI Label)
#         models/<sam checkpoint name>        a symbolic link to --sam-checkpoint (Meta's SAM weights)
#         monailabel/datalist.json            the data format of MONAI Label's datastore (CT volumes,
#                                             labels in the bundle's ids), read by train.json's transforms
#         monailabel/settings.json            the settings below, merged over earlier runs
#       MONAI Label reads only configs/inference.json and configs/train.json and passes no overrides,
#       so the deployment's settings are written into the copies' top-level values:
#         sam_checkpoint  "$@bundle_root + '/models/<name>'"
#         dataset_dir     "$@bundle_root + '/monailabel'" (train.json only)
#         resume          false (each MONAI Label training starts from models/model.pt, not from a
#                         previous run's train_checkpoint_*.pt)
#         val_interval    1     (validate, and keep the best model.pt, every epoch)
#       plus every --set KEY=VALUE (VALUE is JSON, or a plain string), e.g. --set variant=vit_l
#       --set img_size=1024 for a model trained with those values. Every setting must name a top-level
#       value of train.json or inference.json. The trained model is then loaded once as MONAI Label
#       will load it, with the checks MONAI Label skips (network configuration, SAM base weights).
#
# Options: --venv DIR (default .venv-label in the repository, or $BALR_SAM_LABEL_VENV), --no-install
# (use the environment as it is), --force (replace a different models/model.pt or SAM link).
set -euo pipefail
CALLER="$(pwd)"  # relative --app/--model/--sam-checkpoint paths are the caller's
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
VENV="${BALR_SAM_LABEL_VENV:-.venv-label}"
PYTHON="${PYTHON:-python3}"
INSTALL=1
APP=""
SAM=""
MODEL=""
FORCE=0
SETS=()

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
need() { [ "$#" -ge 2 ] || { echo "setup_monailabel.sh: $1 needs a value" >&2; exit 2; }; }
while [ "$#" -gt 0 ]; do
  case "$1" in
    --app) need "$@"; APP="$2"; shift 2 ;;
    --sam-checkpoint) need "$@"; SAM="$2"; shift 2 ;;
    --model) need "$@"; MODEL="$2"; shift 2 ;;
    --set) need "$@"; SETS+=("$2"); shift 2 ;;
    --venv) need "$@"; VENV="$2"; shift 2 ;;
    --no-install) INSTALL=0; shift ;;
    --force) FORCE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "setup_monailabel.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$APP" ] && { [ -n "$SAM" ] || [ -n "$MODEL" ] || [ "${#SETS[@]}" -gt 0 ]; }; then
  echo "setup_monailabel.sh: --sam-checkpoint, --model and --set need --app DIR" >&2; exit 2
fi

if [ "$INSTALL" = 1 ]; then
  BALR_SAM_VENV="$VENV" BALR_SAM_REQUIREMENTS=requirements-label.txt PYTHON="$PYTHON" bash scripts/setup.sh
  echo "MONAI Label $("$VENV/bin/python" -c 'import monailabel; print(monailabel.__version__)') and balr-sam installed in $VENV"
fi
[ -n "$APP" ] || exit 0
[ -x "$VENV/bin/python" ] || { echo "setup_monailabel.sh: no environment at $VENV (run without --no-install first)" >&2; exit 1; }

# --- deployment (in the label environment's Python) -------------------------------------------
exec "$VENV/bin/python" - "$ROOT" "$CALLER" "$APP" "$SAM" "$MODEL" "$FORCE" ${SETS[@]+"${SETS[@]}"} <<'PY'
import filecmp
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

root, caller = Path(sys.argv[1]), Path(sys.argv[2])
app, sam, model, force = caller / Path(sys.argv[3]).expanduser(), sys.argv[4], sys.argv[5], sys.argv[6] == "1"
sets = sys.argv[7:]
NAME = "balr_sam"
CONFIGS = ("train.json", "inference.json")  # what MONAI Label reads
bundle_src = root / "bundle"
bundle = app / "model" / NAME
state_file = bundle / "monailabel" / "settings.json"


def fail(msg: str) -> None:
    sys.exit(f"setup_monailabel.sh: {msg}")


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


# 1. everything is checked before anything is written
if not (app / "main.py").is_file() and app.exists() and (not app.is_dir() or any(app.iterdir())):
    fail(f"{app}: exists and is not a MONAI Label app (no main.py); choose another --app")
state = json.loads(state_file.read_text()) if state_file.is_file() else {"settings": {}}
settings = state["settings"]
settings.setdefault("dataset_dir", "$@bundle_root + '/monailabel'")
settings.setdefault("resume", False)
settings.setdefault("val_interval", 1)
sam_file = None
if sam:
    sam_file = caller / Path(sam).expanduser()
    if not sam_file.is_file():
        fail(f"{sam_file}: no such SAM checkpoint")
    link = bundle / "models" / sam_file.name
    if (link.is_symlink() or link.exists()) and link.resolve() != sam_file.resolve() and not force:
        fail(f"{link}: exists and is not {sam_file}; pass --force to replace it")
    settings["sam_checkpoint"] = f"$@bundle_root + '/models/{sam_file.name}'"
    state["sam_checkpoint_file"] = str(sam_file)
elif state.get("sam_checkpoint_file"):
    sam_file = bundle / "models" / Path(state["sam_checkpoint_file"]).name
else:
    fail("the first deployment needs --sam-checkpoint FILE (Meta's SAM weights the model was trained on)")
for item in sets:
    key, sep, value = item.partition("=")
    if not sep or not key:
        fail(f"--set {item!r}: expected KEY=VALUE")
    settings[key] = parse_value(value)
configs = {name: json.loads((bundle_src / "configs" / name).read_text()) for name in CONFIGS}
unknown = sorted(k for k in settings if not any(k in c for c in configs.values()))
if unknown:
    fail(f"settings {unknown} are not top-level values of {' or '.join(CONFIGS)}")
ONLY_IN = {"dataset_dir": "train.json"}  # inference.json's dataset_dir is its own input folder
for name, config in configs.items():
    config.update({k: v for k, v in settings.items() if k in config and ONLY_IN.get(k, name) == name})

target = bundle / "models" / "model.pt"
model_file = None
if model:
    model_file = caller / Path(model).expanduser()
    if not model_file.is_file():
        fail(f"{model_file}: no such model file")
    if target.exists() and not filecmp.cmp(model_file, target, shallow=False) and not force:
        fail(f"{target}: exists and differs from {model_file} (it may be a model fine-tuned in MONAI Label); "
             "pass --force to replace it")
elif target.exists():
    model_file = target

# the model, loaded as MONAI Label will load it (network_def of the deployed inference.json), with the
# checks MONAI Label's non-strict loading skips: network configuration and SAM base weights
if model_file is not None:
    from monai.bundle import ConfigParser

    from balr_sam.inference import load_trained_weights
    from balr_sam.errors import CheckpointError

    parser = ConfigParser(dict(configs["inference.json"], bundle_root=str(bundle), sam_checkpoint=str(sam_file)))
    try:
        network = parser.get_parsed_content("network_def", instantiate=True)
    except Exception as err:  # noqa: BLE001 - the config parser wraps the cause
        cause = err.__cause__ or err
        fail(f"cannot build the bundle's network (variant {configs['inference.json']['variant']!r}, img_size "
             f"{configs['inference.json']['img_size']!r}) on {sam_file}: {cause}")
    try:
        load_trained_weights(network, model_file, merge=False)
    except CheckpointError as err:
        fail(f"the deployed bundle cannot use {model_file}: {err}")

# 2. the sample app, copied the way `monailabel apps --download` does it (from the installed package)
if not (app / "main.py").is_file():
    app.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=app.parent) as tmp:
        subprocess.run([sys.executable, "-m", "monailabel.main", "apps", "--download", "--name", "monaibundle",
                        "--output", tmp], check=True, stdout=subprocess.DEVNULL)
        if app.exists():
            app.rmdir()
        shutil.move(os.path.join(tmp, "monaibundle"), str(app))
    print(f"copied MONAI Label's monaibundle sample app to {app}")

# 3. the bundle's files; models/ belongs to the deployment (fine-tuned models live there)
for sub in ("configs", "docs", "schema"):
    if (bundle_src / sub).is_dir():
        shutil.rmtree(bundle / sub, ignore_errors=True)
        shutil.copytree(bundle_src / sub, bundle / sub)
if (bundle_src / "LICENSE").is_file():
    shutil.copy2(bundle_src / "LICENSE", bundle / "LICENSE")
(bundle / "models").mkdir(parents=True, exist_ok=True)
(bundle / "monailabel").mkdir(exist_ok=True)
for name, config in configs.items():
    (bundle / "configs" / name).write_text(json.dumps(config, indent=4) + "\n")
if sam:
    link = bundle / "models" / sam_file.name
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(sam_file.resolve())
if model_file is not None and model_file != target and not (target.exists() and filecmp.cmp(model_file, target, shallow=False)):
    shutil.copy2(model_file, target)
if not target.exists():
    print(f"warning: {target} does not exist yet: MONAI Label lists the model for inference only once it does "
          "(pass --model FILE)", file=sys.stderr)

# 4. the datastore's format: CT volumes, labels already in the bundle's ids (what MONAI Label saves)
from balr_sam.labels import get_label_set  # noqa: E402

datalist = {
    "name": "MONAI Label datastore",
    "description": "Format of the images and labels MONAI Label passes to train.json (train#dataset#data, "
                   "validate#dataset#data): CT volumes, labels in the bundle's ids; the lists stay empty",
    "format": "volume",
    "tensorImageSize": "3D",
    "modality": "CT",
    "label_set": "synapse",
    "labels": {str(k): v for k, v in sorted(get_label_set("synapse").labels.items())},
    "label_map": "identity",
    "training": [],
    "validation": [],
    "test": [],
}
(bundle / "monailabel" / "datalist.json").write_text(json.dumps(datalist, indent=2) + "\n")
state_file.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")

print(f"bundle deployed at {bundle}")
for key, value in sorted(settings.items()):
    print(f"  {key} = {json.dumps(value)}")
print("start the server with:")
print(f"  {sys.executable} -m monailabel.main start_server --app {app} --studies /path/to/images "
      f"--conf models {NAME} --conf zoo_source local --conf sam2 false")
PY
