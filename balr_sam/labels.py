"""Label sets of the product and maps from source numberings: the one reader of ``resources/label_maps.json``.

The Synapse set uses TransUNet's preprocessed ids (1 spleen, 2 right kidney, 3 left kidney,
4 gallbladder, 5 liver, 6 stomach, 7 aorta, 8 pancreas); ``maps`` convert raw BTCV and
TotalSegmentator "total" label maps to those ids, every unlisted value becoming background;
``source_max`` is the largest value each source numbering defines (BTCV 13 organs,
TotalSegmentator v2 "total" 117 classes), above which a strict reader refuses a label file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Dict, List, Mapping

import numpy as np

__all__ = ["LabelSet", "available_label_sets", "get_label_set", "remap_labels"]


@dataclass(frozen=True)
class LabelSet:
    """A named set of classes.

    Attributes:
        name: the set's name (``synapse``, ``isic2017``, ``polyp``, ``binary``).
        labels: id -> machine name, background (0) included.
        display_names: id -> name printed in reports (foreground classes only).
        report_order: foreground ids in the column order of published tables.
        maps: source numbering name -> {source value: product id}.
        source_max: source numbering name -> the largest value it defines (where the JSON says).
        source_labels: source numbering name -> {value name: value} (where the JSON names them).
    """

    name: str
    labels: Mapping[int, str]
    display_names: Mapping[int, str]
    report_order: List[int]
    maps: Mapping[str, Mapping[int, int]]
    source_max: Mapping[str, int]
    source_labels: Mapping[str, Mapping[str, int]]

    @property
    def num_classes(self) -> int:
        """Number of output channels of a network for this set (background included)."""
        return len(self.labels)

    @property
    def foreground(self) -> List[int]:
        """Foreground ids in ascending order."""
        return sorted(i for i in self.labels if i != 0)

    def lookup_table(self, source: str, max_value: int) -> np.ndarray:
        """Return an int array ``lut`` with ``lut[v]`` the product id of source value ``v``."""
        if source not in self.maps:
            raise KeyError(f"label set {self.name!r} has no map {source!r}; known: {sorted(self.maps)}")
        lut = np.zeros(max_value + 1, dtype=np.int64)
        for src, dst in self.maps[source].items():
            if src <= max_value:
                lut[src] = dst
        return lut

    def clip_value(self, source: str) -> int:
        """One above the largest value listed in ``source``'s map (1 for an empty or unknown map).

        Every source value from there up maps to background, so label arrays can be clipped
        there, keeping :meth:`lookup_table` small whatever the largest value in a file.
        """
        return max(self.maps.get(source, {}), default=0) + 1

    def max_source_value(self, source: str) -> int:
        """Largest label value the numbering ``source`` defines (``source_max``, else the map's largest).

        Raises:
            KeyError: the set has no map ``source``.
        """
        if source not in self.maps:
            raise KeyError(f"label set {self.name!r} has no map {source!r}; known: {sorted(self.maps)}")
        return int(self.source_max.get(source, max(self.maps[source], default=0)))

    def source_ids(self, source: str) -> Dict[str, int]:
        """``{name: value}`` of a source numbering, e.g. ``get_label_set("synapse").source_ids("btcv")["liver"] == 6``.

        Raises:
            KeyError: the JSON names no values for that source.
        """
        if source not in self.source_labels:
            raise KeyError(f"no value names for source {source!r} of label set {self.name!r}")
        return dict(self.source_labels[source])


@lru_cache(maxsize=None)
def _raw() -> Dict[str, dict]:
    text = resources.files("balr_sam").joinpath("resources/label_maps.json").read_text()
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def available_label_sets() -> List[str]:
    """Names of the label sets shipped with the product."""
    return sorted(_raw())


@lru_cache(maxsize=None)
def get_label_set(name: str) -> LabelSet:
    """Return the label set ``name`` (see :func:`available_label_sets`)."""
    raw = _raw()
    if name not in raw:
        raise KeyError(f"unknown label set {name!r}; known: {available_label_sets()}")
    entry = raw[name]
    return LabelSet(
        name=name,
        labels={int(k): v for k, v in entry["labels"].items()},
        display_names={int(k): v for k, v in entry["display_names"].items()},
        report_order=[int(i) for i in entry["report_order"]],
        maps={m: {int(k): int(v) for k, v in table.items()} for m, table in entry["maps"].items()},
        source_max={m: int(v) for m, v in entry.get("source_max", {}).items()},
        source_labels={m: {name: int(v) for v, name in table.items()} for m, table in entry.get("source_labels", {}).items()},
    )


def remap_labels(label: np.ndarray, label_set: str, source: str) -> np.ndarray:
    """Map a label array from a source numbering to the product's ids.

    Args:
        label: integer array of any shape, values >= 0.
        label_set: name of the target set, e.g. ``"synapse"``.
        source: name of the source numbering in that set's maps, e.g. ``"btcv"``, ``"totalseg"``.

    Returns:
        ``uint8`` array of the same shape; values not in the map become 0.
    """
    arr = np.asarray(label)
    if arr.size and arr.min() < 0:
        raise ValueError(f"negative label values are not valid (found {arr.min()})")
    # values above the map's largest source value all become 0: clip there, so that the lookup
    # table stays small whatever the largest value in the file
    ls = get_label_set(label_set)
    top = ls.clip_value(source)
    lut = ls.lookup_table(source, top)  # KeyError for an unknown source
    return lut[np.minimum(arr, top).astype(np.int64)].astype(np.uint8)
