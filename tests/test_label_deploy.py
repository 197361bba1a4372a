"""``balr-sam label-deploy`` (:mod:`balr_sam.monailabel`) without MONAI Label: the files it writes into an
app folder, the same result when run again, a deployment interrupted at any step completed by the same
command, and one error line naming the file for each bad input, with nothing written. A folder holding
``main.py`` stands for MONAI Label's sample app (the real one and the server are tested in
``tests_label/``, in the MONAI Label environment)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple, Union

import pytest
import torch

from balr_sam import monailabel
from balr_sam.cli import main
from balr_sam.errors import BalrSamError, CheckpointError, DataError
from balr_sam.monailabel import datastore_datalist, deploy
from balr_sam.networks import build_balr_sam
from balr_sam.networks.trainable import save_trainable_checkpoint
from balr_sam.networks.variants import build_sam

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
TINY = ["variant=vit_t", "img_size=64"]
APP_MAIN = "# stands for MONAI Label's monaibundle sample app\n"


def _sam(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    torch.save(build_sam("vit_t").state_dict(), path)
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """A random ``vit_t`` SAM base (official format), a BALR-SAM at img_size 64 on it (``model.pt``), another SAM base."""
    root = tmp_path_factory.mktemp("label_weights")
    sam = _sam(root / "sam_vit_t.pth", 0)
    model = root / "model.pt"
    save_trainable_checkpoint(build_balr_sam("vit_t", img_size=64, sam_checkpoint=sam), model)
    return {"sam": sam, "model": model, "other_sam": _sam(root / "other" / "sam_vit_t.pth", 1)}


@pytest.fixture
def app(tmp_path: Path) -> Path:
    app = tmp_path / "app"
    app.mkdir()
    (app / "main.py").write_text(APP_MAIN)
    return app


@pytest.fixture
def unchecked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Dict[str, Path]:
    """For the tests of what is written: the model check (loading the network) skipped, small stand-in files."""
    monkeypatch.setattr(monailabel, "_check_model", lambda plan: None)
    files = tmp_path / "files"
    files.mkdir()
    (files / "sam_vit_t.pth").write_bytes(b"sam weights")
    (files / "model.pt").write_bytes(b"trained model 1")
    (files / "model2.pt").write_bytes(b"trained model 2")
    return {"sam": files / "sam_vit_t.pth", "model": files / "model.pt", "model2": files / "model2.pt"}


Tree = Dict[str, Union[bytes, Tuple[str, str], str]]


def _tree(root: Path) -> Tree:
    """Every file (content), link (target) and folder under ``root``."""
    tree: Tree = {}
    for path in sorted(root.rglob("*")):
        key = path.relative_to(root).as_posix()
        tree[key] = ("link", os.readlink(path)) if path.is_symlink() else path.read_bytes() if path.is_file() else "folder"
    return tree


def test_first_deployment_writes_the_bundle_monai_label_reads(app: Path, weights: Dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    sets = [arg for item in TINY for arg in ("--set", item)]
    assert main(["label-deploy", "--app", str(app), "--sam-checkpoint", str(weights["sam"]), "--model", str(weights["model"]), *sets]) == 0
    bundle = app / "model" / "balr_sam"
    out = capsys.readouterr().out
    assert f"bundle deployed at {bundle}" in out and "start_server --app" in out and "copied MONAI Label" not in out
    assert (app / "main.py").read_text() == APP_MAIN

    for name in ("LICENSE", "docs/README.md", "schema/metadata_schema.json", "configs/demo.json", "configs/metadata.json", "configs/logging.conf"):
        assert (bundle / name).read_bytes() == (BUNDLE / name).read_bytes(), name
    train, inference = (json.loads((bundle / "configs" / n).read_text()) for n in ("train.json", "inference.json"))
    source_train, source_inference = (json.loads((BUNDLE / "configs" / n).read_text()) for n in ("train.json", "inference.json"))
    sam_value = "$@bundle_root + '/models/sam_vit_t.pth'"
    assert train == {
        **source_train,
        "sam_checkpoint": sam_value,
        "dataset_dir": "$@bundle_root + '/monailabel'",
        "resume": False,
        "val_interval": 1,
        "variant": "vit_t",
        "img_size": 64,
    }
    changed = {"sam_checkpoint": sam_value, "variant": "vit_t", "img_size": 64}
    assert inference == {**source_inference, **{k: v for k, v in {**changed, "resume": False, "val_interval": 1}.items() if k in source_inference}}
    assert inference["dataset_dir"] == source_inference["dataset_dir"]  # inference.json's own input folder

    models = bundle / "models"
    assert (models / "model.pt").read_bytes() == weights["model"].read_bytes()
    assert (models / "sam_vit_t.pth").is_symlink() and (models / "sam_vit_t.pth").resolve() == weights["sam"].resolve()
    assert sorted(p.name for p in models.iterdir()) == ["model.pt", "sam_vit_t.pth"]
    datalist = json.loads((bundle / "monailabel" / "datalist.json").read_text())
    assert datalist == datastore_datalist() and len(datalist["labels"]) == 9 and datalist["training"] == []
    state = json.loads((bundle / "monailabel" / "settings.json").read_text())
    assert state == {
        "sam_checkpoint_file": str(weights["sam"]),
        "settings": {
            "dataset_dir": "$@bundle_root + '/monailabel'",
            "resume": False,
            "val_interval": 1,
            "sam_checkpoint": sam_value,
            "variant": "vit_t",
            "img_size": 64,
        },
    }


def test_running_again_changes_nothing_and_remembers_the_settings(app: Path, unchecked: Dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    deploy(app, BUNDLE, sam_checkpoint=unchecked["sam"], model=unchecked["model"], settings=["img_size=64"])
    first = _tree(app)
    model = app / "model" / "balr_sam" / "models" / "model.pt"
    inode = model.stat().st_ino
    deploy(app, BUNDLE, sam_checkpoint=unchecked["sam"], model=unchecked["model"], settings=["img_size=64"])
    assert _tree(app) == first
    assert model.stat().st_ino == inode  # the same model is not copied again
    # without the options: the SAM link, the model and the settings of the earlier deployment
    assert main(["label-deploy", "--app", str(app)]) == 0
    assert _tree(app) == first
    assert "img_size = 64" in capsys.readouterr().out


def test_the_deployed_model_stays_unless_forced(app: Path, unchecked: Dict[str, Path]) -> None:
    deploy(app, BUNDLE, sam_checkpoint=unchecked["sam"], model=unchecked["model"])
    target = app / "model" / "balr_sam" / "models" / "model.pt"
    before = _tree(app)
    with pytest.raises(BalrSamError, match=rf"^{target}: exists and differs from {unchecked['model2']} .*pass --force to replace it$"):
        deploy(app, BUNDLE, model=unchecked["model2"])
    assert _tree(app) == before
    deploy(app, BUNDLE, model=unchecked["model2"], force=True)
    assert target.read_bytes() == b"trained model 2"

    other = unchecked["sam"].parent / "other" / "sam_vit_t.pth"
    other.parent.mkdir()
    other.write_bytes(b"other sam")
    link = target.parent / "sam_vit_t.pth"
    with pytest.raises(BalrSamError, match=rf"^{link}: exists and is not {other}; pass --force to replace it$"):
        deploy(app, BUNDLE, sam_checkpoint=other)
    deploy(app, BUNDLE, sam_checkpoint=other, force=True)
    assert link.resolve() == other.resolve()


STEPS = ["_copy_bundle_files", "_write_configs", "_link_sam", "_copy_model", "_write_datalist", "_write_state"]


@pytest.mark.parametrize("step", STEPS)
def test_an_interrupted_deployment_is_completed_by_the_same_command(
    step: str, tmp_path: Path, app: Path, unchecked: Dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = tmp_path / "reference"
    shutil.copytree(app, reference)
    args = {"sam_checkpoint": unchecked["sam"], "model": unchecked["model"], "settings": TINY}
    deploy(reference, BUNDLE, **args)

    def killed(plan: monailabel.Deployment) -> None:
        raise KeyboardInterrupt(step)

    with monkeypatch.context() as patch:
        patch.setattr(monailabel, step, killed)
        with pytest.raises(KeyboardInterrupt):
            deploy(app, BUNDLE, **args)
    assert not (app / "model" / "balr_sam" / "monailabel" / "settings.json").exists()
    deploy(app, BUNDLE, **args)
    assert _tree(app) == _tree(reference)


def test_a_model_copy_killed_mid_write_is_cleaned_up(app: Path, unchecked: Dict[str, Path]) -> None:
    deploy(app, BUNDLE, sam_checkpoint=unchecked["sam"], model=unchecked["model"])
    models = app / "model" / "balr_sam" / "models"
    (models / ".model.pt.k1ll3d.part").write_bytes(b"trained mo")  # what atomic_write leaves when the process dies
    (models / "model.pt").unlink()
    deploy(app, BUNDLE, sam_checkpoint=unchecked["sam"], model=unchecked["model"])
    assert sorted(p.name for p in models.iterdir()) == ["model.pt", "sam_vit_t.pth"]
    assert (models / "model.pt").read_bytes() == b"trained model 1"


def _refused(app: Path, error: type, pattern: str, **kwargs: object) -> None:
    before = _tree(app.parent)
    with pytest.raises(error, match=pattern):
        deploy(app, kwargs.pop("source", BUNDLE), **kwargs)  # type: ignore[arg-type]
    assert _tree(app.parent) == before, "a refused deployment wrote something"


def test_bad_arguments_are_refused_naming_the_file(tmp_path: Path, app: Path, unchecked: Dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    sam, model = unchecked["sam"], unchecked["model"]
    _refused(app, BalrSamError, r"^the first deployment needs --sam-checkpoint FILE")
    _refused(app, CheckpointError, rf"^{tmp_path}/nope\.pth: no such SAM checkpoint$", sam_checkpoint=tmp_path / "nope.pth")
    _refused(app, CheckpointError, rf"^{tmp_path}/nope\.pt: no such model file$", sam_checkpoint=sam, model=tmp_path / "nope.pt")
    _refused(app, BalrSamError, r"^--set 'img_size': expected KEY=VALUE$", sam_checkpoint=sam, settings=["img_size"])
    _refused(
        app, BalrSamError, r"^settings \['nonsense'\] are not top-level values of train\.json or inference\.json$", sam_checkpoint=sam, settings=["nonsense=1"]
    )

    broken = tmp_path / "broken_bundle"
    shutil.copytree(BUNDLE / "configs", broken / "configs")
    (broken / "configs" / "train.json").write_text("{ not json")
    _refused(app, DataError, rf"^{broken}/configs/train\.json: unreadable JSON", sam_checkpoint=sam, source=broken)

    not_an_app = tmp_path / "photos"
    not_an_app.mkdir()
    (not_an_app / "holiday.jpg").write_bytes(b"jpeg")
    _refused(not_an_app, BalrSamError, rf"^{not_an_app}: exists and is not a MONAI Label app \(no main\.py\); choose another --app$", sam_checkpoint=sam)
    monkeypatch.setattr(monailabel, "monailabel_installed", lambda: False)
    _refused(
        tmp_path / "new_app",
        BalrSamError,
        rf"^{tmp_path}/new_app: no MONAI Label app there, and MONAI Label is not installed .*run scripts/setup_monailabel\.sh$",
        sam_checkpoint=sam,
    )

    deploy(app, BUNDLE, sam_checkpoint=sam, model=model)
    state = app / "model" / "balr_sam" / "monailabel" / "settings.json"
    state.write_text('{"settings": ')  # e.g. edited by hand
    _refused(app, DataError, rf"^{state}: unreadable JSON")
    state.write_text('{"sam_checkpoint_file": "x"}')
    _refused(app, DataError, rf"^{state}: no 'settings' object; remove the file to deploy afresh$")


def test_a_model_the_deployed_bundle_cannot_use_is_refused(app: Path, weights: Dict[str, Path]) -> None:
    """The checks MONAI Label's non-strict loading skips: network configuration and SAM base weights."""
    sam, model = weights["sam"], weights["model"]
    _refused(
        app,
        CheckpointError,
        rf"^the deployed bundle cannot use {model}: .*trained with another network configuration \(img_size: checkpoint 64, bundle config 128\)",
        sam_checkpoint=sam,
        model=model,
        settings=["variant=vit_t", "img_size=128"],
    )
    _refused(
        app,
        CheckpointError,
        rf"^the deployed bundle cannot use {model}: .*trained on other SAM base weights",
        sam_checkpoint=weights["other_sam"],
        model=model,
        settings=TINY,
    )
    _refused(
        app,
        CheckpointError,
        rf"^cannot build the bundle's network \(variant 'vit_b', img_size 64\) on {sam}: ",
        sam_checkpoint=sam,
        model=model,
        settings=["img_size=64"],
    )


def _script(args: List[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "setup_monailabel.sh"), "--no-install", "--venv", sys.prefix, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_setup_script_passes_its_options_on_with_the_callers_relative_paths(tmp_path: Path, weights: Dict[str, Path]) -> None:
    shutil.copy(weights["sam"], tmp_path / "sam_vit_t.pth")
    shutil.copy(weights["model"], tmp_path / "model.pt")
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.py").write_text(APP_MAIN)
    done = _script(["--app", "app", "--sam-checkpoint", "sam_vit_t.pth", "--model", "model.pt", "--set", "variant=vit_t", "--set", "img_size=64"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    models = tmp_path / "app" / "model" / "balr_sam" / "models"
    assert (models / "model.pt").read_bytes() == weights["model"].read_bytes()
    assert (models / "sam_vit_t.pth").resolve() == (tmp_path / "sam_vit_t.pth").resolve()

    done = _script(["--model", "model.pt"], tmp_path)
    assert done.returncode == 2 and "the following arguments are required: --app" in done.stderr
    done = _script(["--app"], tmp_path)
    assert done.returncode == 2 and "setup_monailabel.sh: --app needs a value" in done.stderr
