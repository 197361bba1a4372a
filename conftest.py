"""Fixtures shared by both test suites: ``tests`` (main environment) and ``tests_label`` (the MONAI
Label environment). pytest loads this file for either, since it sits at the rootdir.

The optional real sample data (``../shared/data`` next to the repository, or
``$BALR_SAM_SHARED_DATA``) is found here: it is not part of the product (``SPEC.md`` section 3);
tests use it when present (``shared_data_dir``) or skip without it (``shared_data``), unless
``$BALR_SAM_REQUIRE_SHARED_DATA=1`` (set by CI), which makes its absence a failure.

Hypothesis runs derandomised (the ``ci`` profile) when ``$CI`` is ``true``/``1``, so that CI
runs the same examples every time; locally it explores new ones."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Callable, Optional, Tuple

import pytest
import torch

from balr_sam.data.prepare import prepare_synapse
from balr_sam.data.synthetic import generate_ct_dataset
from balr_sam.networks.variants import build_sam

#: Environment variable that overrides the location of the shared sample data.
SHARED_DATA_ENV = "BALR_SAM_SHARED_DATA"
#: Environment variable that, set to 1, turns missing shared sample data into a failure (CI).
REQUIRE_SHARED_DATA_ENV = "BALR_SAM_REQUIRE_SHARED_DATA"

try:  # the MONAI Label environment (tests_label) has no Hypothesis, and no property tests
    from hypothesis import settings as hypothesis_settings
except ImportError:
    hypothesis_settings = None
if hypothesis_settings is not None:
    hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
    if os.environ.get("CI", "").lower() in ("1", "true"):
        hypothesis_settings.load_profile("ci")


@pytest.fixture(scope="session")
def shared_data_dir() -> Optional[Path]:
    """The shared sample-data folder, or ``None`` when it is absent: ``$BALR_SAM_SHARED_DATA`` when
    set, else ``<repository root>/../shared/data``."""
    env = os.environ.get(SHARED_DATA_ENV)
    path = Path(env) if env else Path(__file__).resolve().parent.parent / "shared" / "data"
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def shared_data(shared_data_dir: Optional[Path]) -> Path:
    """The real sample data folder (``<repo>/../shared/data`` or ``$BALR_SAM_SHARED_DATA``); skips when
    absent, fails instead when ``$BALR_SAM_REQUIRE_SHARED_DATA=1``."""
    if shared_data_dir is None:
        message = f"shared sample data not found: set {SHARED_DATA_ENV} or put it at <repo>/../shared/data"
        if os.environ.get(REQUIRE_SHARED_DATA_ENV) == "1":
            pytest.fail(f"{message} ({REQUIRE_SHARED_DATA_ENV}=1)")
        pytest.skip(message)
    return shared_data_dir


def _tiny_synapse(
    root: Path,
    cases: int,
    held_out: float,
    *,
    seed: int = 3,
    val_fraction: Optional[float] = None,
    test_fraction: Optional[float] = None,
    shape: Tuple[int, int, int] = (48, 48, 8),
) -> Tuple[Path, Path]:
    data = root / "synapse"
    generate_ct_dataset(data, cases=cases, seed=seed, shape=shape)
    prepare_synapse(
        data,
        data / "datalist.json",
        test_fraction=held_out if test_fraction is None else test_fraction,
        val_fraction=held_out if val_fraction is None else val_fraction,
        seed=0,
    )
    torch.manual_seed(0)
    sam = root / "sam_vit_t.pth"
    torch.save(build_sam("vit_t").state_dict(), sam)
    return data, sam


@pytest.fixture(scope="session")
def tiny_synapse() -> Callable[..., Tuple[Path, Path]]:
    """Writes, under ``root``, ``synapse/`` (``cases`` synthetic CT phantoms of ``shape``, 48 x 48 x 8 by
    default, drawn with ``seed``, and a ``datalist.json`` holding out the fraction ``held_out`` for
    validation and as much for test, unless ``val_fraction`` / ``test_fraction`` say otherwise) and
    ``sam_vit_t.pth`` (a random ``vit_t`` SAM in the official format, always the same weights);
    returns both paths."""
    return _tiny_synapse


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """A function returning a TCP port on 127.0.0.1 that is free when called."""
    return _free_port
