"""Trainable-only checkpoints: adapters + CDEN + decoder, loaded on top of SAM's base weights.

A BALR-SAM checkpoint holds only what fine-tuning changes (tens of MB for ViT-B instead of
hundreds), the model configuration needed to rebuild the network, and a fingerprint of the frozen
SAM base weights it was trained on. Loading it onto other base weights (another variant, another
SAM release, random weights) fails loudly instead of producing silently wrong segmentations.

The file is a plain dict of tensors, strings and numbers, so it is read with
``torch.load(..., weights_only=True)``. The weights sit under ``"model"``, where MONAI's and
MONAI Label's checkpoint loaders look for a bundle's ``models/model.pt`` state dict; loaded
non-strictly into a network built on the SAM checkpoint, they give the trained model. The
checked loader of a trained model (configuration and base weights) is
:mod:`balr_sam.inference.weights`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import torch

from balr_sam.atomic import atomic_write
from balr_sam.errors import CheckpointError
from balr_sam.networks.balr_sam import BALRSAM
from balr_sam.networks.checkpoint import safe_torch_load
from balr_sam.types import PathLike

__all__ = [
    "CHECKPOINT_FORMAT",
    "trainable_state_dict",
    "base_fingerprint",
    "fingerprints_match",
    "load_trainable_state_dict",
    "save_trainable_checkpoint",
    "load_trainable_checkpoint",
]

CHECKPOINT_FORMAT = "balr-sam-trainable/1"
_SAMPLES = 16  # values sampled per tensor for the fingerprint


def trainable_state_dict(model: BALRSAM) -> Dict[str, torch.Tensor]:
    """Every state-dict entry that is not a frozen SAM base weight (adapters, CDEN with its BN statistics, decoder).

    With merged adapters the encoder weights hold the adapters' updates, which is why only
    adapter factors (never encoder weights) are stored here.
    """
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if not model.is_base_key(k)}


def base_fingerprint(model: BALRSAM) -> Dict[str, List[float]]:
    """A compact fingerprint of the frozen SAM base weights.

    Per tensor: its shape, mean, standard deviation and ``16`` evenly spaced values, all in
    float64. Computed with adapters unmerged (so merging does not change it); compared with a
    relative tolerance, it survives the rounding of a merge/unmerge round trip but not different
    weights.
    """
    merged = model.adapters_merged
    if merged:
        model.unmerge_adapters()
    try:
        result = {}
        for key, value in model.state_dict().items():
            if not model.is_base_key(key) or not torch.is_floating_point(value):
                continue
            flat = value.detach().reshape(-1).double().cpu()
            index = torch.linspace(0, flat.numel() - 1, min(_SAMPLES, flat.numel())).long()
            std = flat.std().item() if flat.numel() > 1 else 0.0
            result[key] = [float(d) for d in value.shape] + [flat.mean().item(), std] + flat[index].tolist()
        return result
    finally:
        if merged:
            model.merge_adapters()


def fingerprints_match(expected: Mapping[str, List[float]], found: Mapping[str, List[float]], rtol: float = 1e-4, atol: float = 1e-6) -> List[str]:
    """Names of base tensors whose fingerprints differ (empty list: the base weights match)."""
    bad = sorted(set(expected) ^ set(found))
    for key in set(expected) & set(found):
        a, b = torch.tensor(expected[key], dtype=torch.float64), torch.tensor(found[key], dtype=torch.float64)
        if a.shape != b.shape or not torch.allclose(a, b, rtol=rtol, atol=atol):
            bad.append(key)
    return sorted(bad)


def load_trainable_state_dict(model: BALRSAM, state_dict: Mapping[str, torch.Tensor], source: str = "<state dict>") -> None:
    """Load a trainable-only state dict into ``model`` (unmerging and re-merging adapters around it).

    Raises:
        CheckpointError: keys or shapes do not match the model's trainable part.
    """
    expected = {k: v.shape for k, v in model.state_dict().items() if not model.is_base_key(k)}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = [
        f"{k}: expected {tuple(expected[k])}, found {tuple(state_dict[k].shape)}" for k in expected if k in state_dict and state_dict[k].shape != expected[k]
    ]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches ({'; '.join(wrong[:3])})")
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise CheckpointError(f"{source}: trainable weights do not fit this BALR-SAM model: " + "; ".join(parts))
    merged = model.adapters_merged
    if merged:
        model.unmerge_adapters()
    model.load_state_dict(dict(state_dict), strict=False)
    if merged:
        model.merge_adapters()


def save_trainable_checkpoint(model: BALRSAM, path: PathLike, extra: Optional[Mapping[str, Any]] = None) -> int:
    """Save adapters + CDEN + decoder, the config and the base fingerprint; returns the file size in bytes.

    The write is atomic (temporary file + rename): an interrupted save never leaves a partial file.
    """
    path = Path(path)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": model.config.to_dict(),
        "base_fingerprint": base_fingerprint(model),
        "model": trainable_state_dict(model),
        "extra": dict(extra or {}),
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp))
    return path.stat().st_size


def load_trainable_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Read and validate a trainable-only checkpoint (``weights_only=True``)."""
    payload = safe_torch_load(path)
    if not isinstance(payload, Mapping) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a BALR-SAM trainable checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    return dict(payload)
