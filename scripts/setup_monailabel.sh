#!/usr/bin/env bash
# MONAI Label 0.8.5 for the BALR-SAM bundle: its own virtual environment and a ready `monaibundle` app.
#
#   bash scripts/setup_monailabel.sh
#       create (or reuse) .venv-label and install requirements-label.txt (MONAI Label 0.8.5 with
#       pydicom<3) and balr-sam (`pip install --no-deps -e .`) into it
#   bash scripts/setup_monailabel.sh --app DIR --sam-checkpoint FILE [--model FILE] [--set KEY=VALUE ...] [--force]
#       then, in that environment, `balr-sam label-deploy` with these options: copy MONAI Label's
#       `monaibundle` sample app to DIR (unless DIR already holds it) and deploy the bundle at
#       DIR/model/balr_sam/ (configs with the deployment's settings, models/model.pt from --model,
#       a link to --sam-checkpoint, the datastore's datalist); see `balr-sam label-deploy --help`.
#       --set KEY=VALUE names a top-level value of train.json or inference.json, e.g. --set variant=vit_l
#       --set img_size=1024 for a model trained with those values; --force replaces a different
#       models/model.pt or SAM link (it may be a model fine-tuned in MONAI Label).
#
# Options: --venv DIR (default .venv-label in the repository, or $BALR_SAM_LABEL_VENV), --no-install
# (use the environment as it is). Relative paths are the caller's.
set -euo pipefail
CALLER="$(pwd)"
cd "$(dirname "$0")/.."
VENV="${BALR_SAM_LABEL_VENV:-.venv-label}"
PYTHON="${PYTHON:-python3}"
INSTALL=1
DEPLOY=()  # the options of `balr-sam label-deploy`

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
need() { [ "$#" -ge 2 ] || { echo "setup_monailabel.sh: $1 needs a value" >&2; exit 2; }; }
while [ "$#" -gt 0 ]; do
  case "$1" in
    --app|--sam-checkpoint|--model|--set) need "$@"; DEPLOY+=("$1" "$2"); shift 2 ;;
    --force) DEPLOY+=("$1"); shift ;;
    --venv) need "$@"; VENV="$2"; shift 2 ;;
    --no-install) INSTALL=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "setup_monailabel.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [ "$INSTALL" = 1 ]; then
  BALR_SAM_VENV="$VENV" BALR_SAM_REQUIREMENTS=requirements-label.txt PYTHON="$PYTHON" bash scripts/setup.sh
  echo "MONAI Label $("$VENV/bin/python" -c 'import monailabel; print(monailabel.__version__)') and balr-sam installed in $VENV"
fi
[ "${#DEPLOY[@]}" -gt 0 ] || exit 0
[ -x "$VENV/bin/python" ] || { echo "setup_monailabel.sh: no environment at $VENV (run without --no-install first)" >&2; exit 1; }
VENV="$(cd "$VENV" && pwd)"
cd "$CALLER"
exec "$VENV/bin/python" -m balr_sam label-deploy "${DEPLOY[@]}"
