"""Packaging facts that a wheel build does not check by itself: every package and bundle file is
listed in pyproject.toml, one version number, and where the bundle is found (source checkout,
installed copy, ``--config`` names). The installed wheel itself is tested in ``test_wheel.py``."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import pytest

import balr_sam
from balr_sam import bundle_location
from balr_sam.bundle_location import bundle_dir
from balr_sam.errors import BalrSamError
from balr_sam.inference import config_file, default_bundle_dir

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
#: a user's weights and run outputs in the bundle folder: never shipped
NOT_SHIPPED = ("models", "runs", "eval")


def _setuptools() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_and_data_folder_is_listed() -> None:
    listed = set(_setuptools()["packages"])
    expected = {"balr_sam"} | {
        ".".join(("balr_sam", *d.relative_to(REPO / "balr_sam").parts)) for d in (REPO / "balr_sam").rglob("*") if d.is_dir() and d.name != "__pycache__"
    }
    expected |= {"balr_sam.bundle"} | {f"balr_sam.bundle.{d.name}" for d in BUNDLE.iterdir() if d.is_dir() and d.name not in NOT_SHIPPED}
    assert listed == expected, f"pyproject.toml [tool.setuptools] packages: missing {sorted(expected - listed)}, extra {sorted(listed - expected)}"
    assert _setuptools()["package-dir"] == {"balr_sam.bundle": "bundle"}


def test_every_bundle_file_is_package_data() -> None:
    """What a new config, document or schema file needs: a package-data pattern (else the wheel lacks it)."""
    patterns = _setuptools()["package-data"]
    files = [f for f in BUNDLE.rglob("*") if f.is_file() and f.relative_to(BUNDLE).parts[0] not in NOT_SHIPPED]
    assert len(files) >= 12
    for file in files:
        folder = file.parent.relative_to(BUNDLE).parts
        package = ".".join(("balr_sam", "bundle", *folder))
        assert any(fnmatch.fnmatch(file.name, p) for p in patterns.get(package, ())), f"{file}: no package-data pattern of {package} ships it"


def test_one_version_number() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert _setuptools()["dynamic"]["version"] == {"attr": "balr_sam.__version__"}
    metadata = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    assert metadata["version"] == balr_sam.__version__, "bundle/configs/metadata.json's version must be balr_sam.__version__"
    assert balr_sam.__version__ in metadata["changelog"]


def test_bundle_dir_is_the_checkout_bundle_in_a_source_checkout() -> None:
    assert bundle_dir() == BUNDLE
    assert default_bundle_dir() == BUNDLE


def test_bundle_dir_falls_back_to_the_installed_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Installed from a wheel: no checkout around the package, ``balr_sam/bundle/`` inside it."""
    package = tmp_path / "site-packages" / "balr_sam"
    (package / "bundle" / "configs").mkdir(parents=True)
    monkeypatch.setattr(bundle_location, "_checkout_bundle", lambda: tmp_path / "site-packages" / "bundle")
    monkeypatch.setattr(bundle_location.resources, "files", lambda name: package)
    with pytest.raises(BalrSamError, match="no bundle configs found.*reinstall balr-sam or pass --bundle"):
        bundle_dir()
    (package / "bundle" / "configs" / "inference.json").write_text("{}")
    assert bundle_dir() == (package / "bundle").resolve()


def test_config_option_takes_a_path_or_a_bundle_config_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert config_file("isic2017.json", BUNDLE) == BUNDLE / "configs" / "isic2017.json"
    own = tmp_path / "isic2017.json"
    own.write_text("{}")
    assert config_file("isic2017.json", BUNDLE) == Path("isic2017.json")  # a file of that name here wins
    assert config_file(str(own), BUNDLE) == own
    with pytest.raises(BalrSamError, match=r"^nope\.json: no such config file \(nor .*configs/nope\.json\)$"):
        config_file("nope.json", BUNDLE)
