"""Extra label-map data the data side needs, read from ``balr_sam/resources/label_maps.json``.

:mod:`balr_sam.labels` gives the product's label sets and the maps from source numberings; this
module adds, from the same JSON, ``source_max`` (the largest value each source numbering
defines, for strict validation: BTCV 13 organs, TotalSegmentator v2 "total" 117 classes) and
``source_labels`` (the names of a source numbering's values, e.g. BTCV's 13 organs).
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Dict

from balr_sam.labels import get_label_set

__all__ = ["label_source_max", "source_label_ids"]


@lru_cache(maxsize=None)
def _raw() -> Dict[str, dict]:
    text = resources.files("balr_sam").joinpath("resources/label_maps.json").read_text()
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def label_source_max(label_set: str, source: str) -> int:
    """Largest label value the numbering ``source`` defines for ``label_set``.

    From ``source_max`` in the JSON; for a map without an entry, the largest value it lists.

    Raises:
        KeyError: unknown label set or source.
    """
    ls = get_label_set(label_set)
    if source not in ls.maps:
        raise KeyError(f"label set {label_set!r} has no map {source!r}; known: {sorted(ls.maps)}")
    table = _raw()[label_set].get("source_max", {})
    if source in table:
        return int(table[source])
    return max(ls.maps[source]) if ls.maps[source] else 0


def source_label_ids(label_set: str, source: str) -> Dict[str, int]:
    """``{name: value}`` of a source numbering, e.g. ``source_label_ids("synapse", "btcv")["liver"] == 6``.

    Raises:
        KeyError: the JSON has no names for that source.
    """
    table = _raw().get(label_set, {}).get("source_labels", {})
    if source not in table:
        raise KeyError(f"no value names for source {source!r} of label set {label_set!r}")
    return {name: int(value) for value, name in table[source].items()}
