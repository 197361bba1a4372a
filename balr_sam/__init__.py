"""BALR-SAM: Boundary-Aware Low-Rank adaptation of the Segment Anything Model (arXiv 2509.24204).

The package provides the network (:mod:`balr_sam.networks`), MONAI transforms and data
preparation (:mod:`balr_sam.data`), metrics (:mod:`balr_sam.metrics`), evaluation
(:mod:`balr_sam.evaluation`), Ignite handlers and metrics (:mod:`balr_sam.engine`) and the
``balr-sam`` command line. Submodules are imported on first
access (``balr_sam.engine``), so MONAI bundle configs only need ``"$import balr_sam"``.
"""

import importlib
from types import ModuleType

__version__ = "0.1.0"

_SUBMODULES = ("bundle_support", "data", "engine", "evaluation", "inference", "labels", "metrics", "networks")


def __getattr__(name: str) -> ModuleType:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
