"""Type aliases shared by the whole package (one definition each)."""

from __future__ import annotations

import os
from typing import Union

__all__ = ["PathLike"]

#: a file or folder name as users pass it: ``str`` or any ``os.PathLike`` (``pathlib.Path``)
PathLike = Union[str, "os.PathLike[str]"]
