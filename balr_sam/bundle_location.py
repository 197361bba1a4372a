"""Where the MONAI bundle's files are: the source checkout's ``bundle/`` or the installed copy.

The repository keeps the bundle at ``<repository>/bundle`` (MONAI model-zoo layout); a wheel
carries the same files (``configs/``, ``docs/``, ``schema/``, ``LICENSE``, never ``models/``)
as ``balr_sam/bundle/`` (see ``pyproject.toml``). The installed copy is only read: commands that
write take their output folder from the user (``balr-sam demo --output``, ``balr-sam infer
OUTPUT``) and their weights from ``--checkpoint``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from balr_sam.errors import BalrSamError

__all__ = ["bundle_dir"]

_MARKER = Path("configs") / "inference.json"


def _checkout_bundle() -> Path:
    """``<repository>/bundle`` of the checkout this package is imported from (it may not exist)."""
    return Path(__file__).resolve().parents[1] / "bundle"


def bundle_dir() -> Path:
    """The bundle folder: the source checkout's ``bundle/`` when running from one, else the installed copy.

    Returns:
        An absolute path holding ``configs/inference.json``, ``configs/train.json``, ...

    Raises:
        BalrSamError: neither exists (a broken installation).
    """
    checkout = _checkout_bundle()
    if (checkout.parent / "pyproject.toml").is_file() and (checkout / _MARKER).is_file():
        return checkout
    installed = resources.files("balr_sam") / "bundle"
    # an installed wheel is a folder; an import from a zip archive has no paths to hand to MONAI
    if isinstance(installed, Path) and (installed / _MARKER).is_file():
        return installed.resolve()
    raise BalrSamError(
        f"no bundle configs found: neither {checkout / _MARKER} (source checkout) nor {installed / _MARKER} (installed package); "
        "reinstall balr-sam or pass --bundle"
    )
