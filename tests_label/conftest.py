"""Fixtures of the MONAI Label integration tests (run in the label environment, see docs/monailabel.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from balr_sam.data.shared import SHARED_DATA_ENV, shared_data_dir


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real sample data folder (``<repo>/../shared/data`` or ``$BALR_SAM_SHARED_DATA``); skips when absent."""
    path = shared_data_dir()
    if path is None:
        pytest.skip(f"shared sample data not found: set {SHARED_DATA_ENV} or put it at <repo>/../shared/data")
    return path
