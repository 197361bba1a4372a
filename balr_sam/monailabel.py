"""The bundle deployed into MONAI Label 0.8.5's ``monaibundle`` sample app (``balr-sam label-deploy``).

:func:`deploy` copies the sample app to ``app`` (from the installed ``monailabel`` package, as
``monailabel apps --download`` does) unless ``app`` already holds it, and writes the bundle at
``app/model/balr_sam/``:

- ``configs/``, ``docs/``, ``schema/``, ``LICENSE``: copied from the bundle (configs re-written
  with the settings below);
- ``models/model.pt``: the trained BALR-SAM (MONAI Label lists the model only when this file
  exists); a different one already there is kept unless ``force`` (it may be a model fine-tuned
  in MONAI Label);
- ``models/<sam checkpoint name>``: a symbolic link to the SAM checkpoint (Meta's weights);
- ``monailabel/datalist.json``: the data format of MONAI Label's datastore (CT volumes, labels in
  the bundle's ids), read by ``train.json``'s transforms;
- ``monailabel/settings.json``: the settings, merged over earlier deployments.

MONAI Label reads only ``configs/inference.json`` and ``configs/train.json`` and passes no
overrides, so the settings are written into the copies' top-level values: ``sam_checkpoint``
(``$@bundle_root + '/models/<name>'``), ``dataset_dir`` (``$@bundle_root + '/monailabel'``,
train.json only), ``resume`` false (each MONAI Label training starts from ``models/model.pt``),
``val_interval`` 1 (keep the best ``model.pt`` every epoch), plus each ``KEY=VALUE`` given. Every
setting must name a top-level value of train.json or inference.json.

Everything is checked before anything is written, including the trained model, loaded as MONAI
Label will load it with the checks MONAI Label's non-strict loading skips (network configuration,
SAM base weights). Each file is written atomically and ``settings.json`` last, so a deployment
killed half-way completes when the same command is run again.
"""

from __future__ import annotations

import filecmp
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

from balr_sam.atomic import atomic_write, atomic_write_text, partial_files
from balr_sam.errors import BalrSamError, CheckpointError, DataError
from balr_sam.types import PathLike

__all__ = ["NAME", "Deployment", "datastore_datalist", "deploy", "monailabel_installed", "parse_setting", "plan_deployment", "server_command"]

#: the model's name in the app (``app/model/<NAME>``, ``--conf models <NAME>``)
NAME = "balr_sam"
CONFIGS = ("train.json", "inference.json")  # what MONAI Label reads
DEFAULT_SETTINGS: Dict[str, Any] = {"dataset_dir": "$@bundle_root + '/monailabel'", "resume": False, "val_interval": 1}
ONLY_IN = {"dataset_dir": "train.json"}  # inference.json's dataset_dir is its own input folder


@dataclass
class Deployment:
    """What :func:`plan_deployment` checked and :func:`deploy` writes.

    Attributes:
        app: the MONAI Label app folder.
        source: the bundle copied from.
        state: the content of ``monailabel/settings.json`` (``settings``, ``sam_checkpoint_file``).
        configs: ``train.json`` and ``inference.json`` with the settings applied.
        sam_file: the SAM checkpoint the deployed configs name.
        new_sam: ``sam_file`` is a new checkpoint to link (not the one deployed before).
        model_file: the trained model to deploy (``None``: none given and none deployed).
        needs_app: the sample app still has to be copied.
    """

    app: Path
    source: Path
    state: Dict[str, Any]
    configs: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    sam_file: Optional[Path] = None
    new_sam: bool = False
    model_file: Optional[Path] = None
    needs_app: bool = False

    @property
    def bundle(self) -> Path:
        """The deployed bundle, ``app/model/balr_sam``."""
        return self.app / "model" / NAME

    @property
    def settings(self) -> Dict[str, Any]:
        return self.state["settings"]

    @property
    def target(self) -> Path:
        """The deployed model, ``<bundle>/models/model.pt``."""
        return self.bundle / "models" / "model.pt"


def parse_setting(item: str) -> Tuple[str, Any]:
    """``KEY=VALUE`` -> ``(KEY, value)``: VALUE is JSON, or a plain string.

    Raises:
        BalrSamError: no ``=`` or an empty key.
    """
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise BalrSamError(f"--set {item!r}: expected KEY=VALUE")
    try:
        return key, json.loads(text)
    except json.JSONDecodeError:
        return key, text


def monailabel_installed() -> bool:
    """Whether the ``monailabel`` package (the sample app's source) is importable here."""
    return importlib.util.find_spec("monailabel") is not None


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: unreadable JSON ({err})") from err
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def plan_deployment(
    app: PathLike,
    source: PathLike,
    *,
    sam_checkpoint: Optional[PathLike] = None,
    model: Optional[PathLike] = None,
    settings: Sequence[str] = (),
    force: bool = False,
) -> Deployment:
    """Check a deployment without writing anything.

    Args:
        app: the MONAI Label app folder (created with the sample app when absent or empty).
        source: the bundle to deploy (its ``configs/``, ``docs/``, ``schema/``, ``LICENSE``).
        sam_checkpoint: Meta's SAM weights the model was trained on (needed the first time).
        model: the trained ``model.pt`` (default: the one deployed before, if any).
        settings: ``KEY=VALUE`` values for the deployed configs.
        force: replace a different deployed ``model.pt`` or SAM link.

    Returns:
        The checked :class:`Deployment`.

    Raises:
        BalrSamError: a bad argument, file or combination, as one line naming the file.
    """
    app, source = Path(app).expanduser().absolute(), Path(source)
    plan = Deployment(app=app, source=source, state={"settings": {}})
    if not (app / "main.py").is_file():
        if app.exists() and (not app.is_dir() or any(app.iterdir())):
            raise BalrSamError(f"{app}: exists and is not a MONAI Label app (no main.py); choose another --app")
        if not monailabel_installed():
            raise BalrSamError(
                f"{app}: no MONAI Label app there, and MONAI Label is not installed in this environment ({sys.prefix}) to copy its "
                "monaibundle sample app from: run scripts/setup_monailabel.sh"
            )
        plan.needs_app = True
    state_file = plan.bundle / "monailabel" / "settings.json"
    if state_file.is_file():
        plan.state = _read_json(state_file)
        if not isinstance(plan.state.get("settings"), dict):
            raise DataError(f"{state_file}: no 'settings' object; remove the file to deploy afresh")
    for key, value in DEFAULT_SETTINGS.items():
        plan.settings.setdefault(key, value)

    if sam_checkpoint:
        sam_file = Path(sam_checkpoint).expanduser().absolute()
        if not sam_file.is_file():
            raise CheckpointError(f"{sam_file}: no such SAM checkpoint")
        link = plan.bundle / "models" / sam_file.name
        if (link.is_symlink() or link.exists()) and link.resolve() != sam_file.resolve() and not force:
            raise BalrSamError(f"{link}: exists and is not {sam_file}; pass --force to replace it")
        plan.settings["sam_checkpoint"] = f"$@bundle_root + '/models/{sam_file.name}'"
        plan.state["sam_checkpoint_file"] = str(sam_file)
        plan.sam_file, plan.new_sam = sam_file, True
    elif plan.state.get("sam_checkpoint_file"):
        plan.sam_file = plan.bundle / "models" / Path(plan.state["sam_checkpoint_file"]).name
    else:
        raise BalrSamError("the first deployment needs --sam-checkpoint FILE (Meta's SAM weights the model was trained on)")
    for item in settings:
        key, value = parse_setting(item)
        plan.settings[key] = value

    plan.configs = {name: _read_json(source / "configs" / name) for name in CONFIGS}
    unknown = sorted(k for k in plan.settings if not any(k in c for c in plan.configs.values()))
    if unknown:
        raise BalrSamError(f"settings {unknown} are not top-level values of {' or '.join(CONFIGS)}")
    for name, config in plan.configs.items():
        config.update({k: v for k, v in plan.settings.items() if k in config and ONLY_IN.get(k, name) == name})

    if model:
        model_file = Path(model).expanduser().absolute()
        if not model_file.is_file():
            raise CheckpointError(f"{model_file}: no such model file")
        if plan.target.exists() and not filecmp.cmp(model_file, plan.target, shallow=False) and not force:
            raise BalrSamError(f"{plan.target}: exists and differs from {model_file} (it may be a model fine-tuned in MONAI Label); pass --force to replace it")
        plan.model_file = model_file
    elif plan.target.exists():
        plan.model_file = plan.target
    if plan.model_file is not None:
        _check_model(plan)
    return plan


def _check_model(plan: Deployment) -> None:
    """Load the model as MONAI Label will (the deployed inference.json's ``network_def``), with the
    checks MONAI Label's non-strict loading skips: network configuration and SAM base weights."""
    from monai.bundle import ConfigParser

    from balr_sam.inference import load_trained_weights

    inference = plan.configs["inference.json"]
    parser = ConfigParser(dict(inference, bundle_root=str(plan.bundle), sam_checkpoint=str(plan.sam_file)))
    try:
        network = parser.get_parsed_content("network_def", instantiate=True)
    except Exception as err:  # noqa: BLE001 - the config parser wraps the cause
        cause = err.__cause__ or err
        raise CheckpointError(
            f"cannot build the bundle's network (variant {inference['variant']!r}, img_size {inference['img_size']!r}) on {plan.sam_file}: {cause}"
        ) from err
    try:
        load_trained_weights(network, plan.model_file, merge=False)
    except CheckpointError as err:
        raise CheckpointError(f"the deployed bundle cannot use {plan.model_file}: {err}") from err


def _copy_sample_app(app: Path) -> None:
    """MONAI Label's ``monaibundle`` sample app, copied the way ``monailabel apps --download`` does it."""
    app.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{app.name}.", dir=app.parent) as tmp:
        subprocess.run(
            [sys.executable, "-m", "monailabel.main", "apps", "--download", "--name", "monaibundle", "--output", tmp], check=True, stdout=subprocess.DEVNULL
        )
        if app.exists():
            app.rmdir()  # checked empty by plan_deployment
        shutil.move(os.path.join(tmp, "monaibundle"), str(app))


def _copy_bundle_files(plan: Deployment) -> None:
    """configs/, docs/, schema/ and LICENSE from the source; models/ belongs to the deployment (fine-tuned models live there)."""
    for sub in ("configs", "docs", "schema"):
        if (plan.source / sub).is_dir():
            shutil.rmtree(plan.bundle / sub, ignore_errors=True)
            shutil.copytree(plan.source / sub, plan.bundle / sub)
    if (plan.source / "LICENSE").is_file():
        atomic_write(plan.bundle / "LICENSE", lambda tmp: shutil.copyfile(plan.source / "LICENSE", tmp))
    (plan.bundle / "models").mkdir(parents=True, exist_ok=True)
    (plan.bundle / "monailabel").mkdir(exist_ok=True)


def _write_configs(plan: Deployment) -> None:
    for name, config in plan.configs.items():
        atomic_write_text(plan.bundle / "configs" / name, json.dumps(config, indent=4) + "\n")


def _link_sam(plan: Deployment) -> None:
    """``models/<name>`` -> the SAM checkpoint, replaced in one rename."""
    if not plan.new_sam or plan.sam_file is None:
        return
    link = plan.bundle / "models" / plan.sam_file.name
    tmp = link.with_name(f".{link.name}.link")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(plan.sam_file.resolve())
    os.replace(tmp, link)


def _copy_model(plan: Deployment) -> None:
    """``models/model.pt`` from ``model_file`` (atomically; copies a killed run left behind are removed)."""
    models = plan.bundle / "models"
    for partial in partial_files(models, lambda name: name == "model.pt"):
        partial.unlink()
    source = plan.model_file
    if source is None or source == plan.target or (plan.target.exists() and filecmp.cmp(source, plan.target, shallow=False)):
        return
    atomic_write(plan.target, lambda tmp: shutil.copy2(source, tmp))


def datastore_datalist() -> Dict[str, Any]:
    """The datastore's format as a datalist: CT volumes, labels already in the bundle's ids (what MONAI Label saves); no cases."""
    from balr_sam.labels import get_label_set

    return {
        "name": "MONAI Label datastore",
        "description": "Format of the images and labels MONAI Label passes to train.json (train#dataset#data, validate#dataset#data): "
        "CT volumes, labels in the bundle's ids; the lists stay empty",
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


def _write_datalist(plan: Deployment) -> None:
    atomic_write_text(plan.bundle / "monailabel" / "datalist.json", json.dumps(datastore_datalist(), indent=2) + "\n")


def _write_state(plan: Deployment) -> None:
    """``monailabel/settings.json``, written last: a deployment is complete once it exists."""
    atomic_write_text(plan.bundle / "monailabel" / "settings.json", json.dumps(plan.state, indent=2, sort_keys=True) + "\n")


def deploy(
    app: PathLike,
    source: PathLike,
    *,
    sam_checkpoint: Optional[PathLike] = None,
    model: Optional[PathLike] = None,
    settings: Sequence[str] = (),
    force: bool = False,
) -> Deployment:
    """Check (:func:`plan_deployment`, same arguments), then write the deployment.

    Returns:
        The :class:`Deployment` written.

    Raises:
        BalrSamError: see :func:`plan_deployment`; nothing is written then.
    """
    plan = plan_deployment(app, source, sam_checkpoint=sam_checkpoint, model=model, settings=settings, force=force)
    if plan.needs_app:
        _copy_sample_app(plan.app)
    _copy_bundle_files(plan)
    _write_configs(plan)
    _link_sam(plan)
    _copy_model(plan)
    _write_datalist(plan)
    _write_state(plan)
    return plan


def server_command(app: PathLike) -> str:
    """The command line that starts MONAI Label with the deployed model."""
    return (
        f"{sys.executable} -m monailabel.main start_server --app {app} --studies /path/to/images --conf models {NAME} --conf zoo_source local --conf sam2 false"
    )
