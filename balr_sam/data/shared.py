"""Location of the optional real sample data (``../shared/data`` next to the repository).

The samples are not part of the product (see ``SPEC.md`` section 3); tests and examples use them
when present and skip otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

__all__ = ["SHARED_DATA_ENV", "shared_data_dir"]

#: Environment variable that overrides the location of the shared sample data.
SHARED_DATA_ENV = "BALR_SAM_SHARED_DATA"


def shared_data_dir() -> Optional[Path]:
    """The shared sample-data folder, or ``None`` when it is absent.

    ``$BALR_SAM_SHARED_DATA`` when set, else ``<repository root>/../shared/data`` (the
    repository root being the folder that holds the ``balr_sam`` package).
    """
    env = os.environ.get(SHARED_DATA_ENV)
    path = Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return path if path.is_dir() else None
