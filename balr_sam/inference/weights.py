"""The one loader of trained BALR-SAM weights (``models/model.pt``).

A trained model is a trainable-only checkpoint (:mod:`balr_sam.networks.trainable`: adapters,
CDEN and decoder, the network configuration and a fingerprint of the SAM base weights).
:func:`load_trained_weights` loads one into a network the caller built (the bundle's
``network_def``, possibly DDP-wrapped): it refuses a checkpoint of another network configuration
or of other SAM base weights with one line naming the file. :func:`load_balr_sam` is the same
loader for callers without a network: it builds one from the checkpoint's own configuration
first. The Ignite handler :class:`balr_sam.engine.LoadTrainedModel`, ``balr-sam infer``'s
:class:`~balr_sam.inference.predictor.BundlePredictor` and the MONAI Label deployment script all
load through here.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from balr_sam.errors import CheckpointError
from balr_sam.networks.balr_sam import BALRSAM, BALRSAMConfig, build_balr_sam
from balr_sam.networks.bases import get_base
from balr_sam.networks.trainable import base_fingerprint, fingerprints_match, load_trainable_checkpoint, load_trainable_state_dict
from balr_sam.types import PathLike

__all__ = ["unwrap_balr_sam", "load_trained_weights", "load_balr_sam"]

# configuration values that change how the network runs, not its weights
_RUNTIME_OPTIONS = ("adapter_dropout", "fast_attention", "channels_last")


def unwrap_balr_sam(network: torch.nn.Module) -> BALRSAM:
    """The :class:`BALRSAM` inside ``network`` (itself, or under DDP's / a wrapper's ``.module``).

    Raises:
        TypeError: there is no BALR-SAM network inside.
    """
    net = network
    while hasattr(net, "module") and not isinstance(net, BALRSAM):
        net = net.module
    if not isinstance(net, BALRSAM):
        raise TypeError(f"expected a BALRSAM network, got {type(net).__name__}")
    return net


def load_trained_weights(network: torch.nn.Module, checkpoint: PathLike, merge: bool = True, check_base: bool = True) -> BALRSAM:
    """Load a trained ``models/model.pt`` into a BALR-SAM network built from the same configuration.

    Args:
        network: the (possibly wrapped) network of the bundle's ``network_def``.
        checkpoint: a file written by :class:`~balr_sam.engine.SaveBestModel` /
            :func:`~balr_sam.networks.trainable.save_trainable_checkpoint`.
        merge: fold the adapters into the encoder weights afterwards (inference).
        check_base: refuse a checkpoint trained on other SAM base weights.

    Returns:
        the loaded :class:`BALRSAM` (unwrapped).

    Raises:
        CheckpointError: unreadable file, other architecture (variant, classes, input size,
            ranks), or other SAM base weights.
    """
    return _load_into(
        unwrap_balr_sam(network), load_trainable_checkpoint(checkpoint), checkpoint, merge=merge, check_base=check_base, base="the bundle's sam_checkpoint"
    )


def load_balr_sam(
    checkpoint: PathLike, sam_checkpoint: Optional[PathLike] = None, device: Optional[torch.device] = None, allow_base_mismatch: bool = False
) -> BALRSAM:
    """Rebuild a trained BALR-SAM from its checkpoint alone: the network its configuration names, on
    the base SAM weights of ``sam_checkpoint``, then :func:`load_trained_weights`'s loading.

    Args:
        checkpoint: a file written by :func:`~balr_sam.networks.trainable.save_trainable_checkpoint`.
        sam_checkpoint: the official SAM checkpoint the model was trained on (``None`` for the
            random-weight small variants of tests and the demo, whose base is not reproducible:
            then ``allow_base_mismatch`` must be set).
        device: where to build the model.
        allow_base_mismatch: skip the base-weight check (never for real use).

    Returns:
        the trained :class:`BALRSAM`, adapters unmerged.

    Raises:
        CheckpointError: unreadable file, or base weights that differ from the training run's.
    """
    payload = load_trainable_checkpoint(checkpoint)
    config = BALRSAMConfig.from_dict(payload["config"])
    options = {k: v for k, v in config.to_dict().items() if k not in ("variant", "num_classes", "img_size")}
    model = build_balr_sam(config.variant, config.num_classes, config.img_size, sam_checkpoint=sam_checkpoint, device=device, **options)
    base = get_base(config.variant).weights.describe(sam_checkpoint)
    return _load_into(model, payload, checkpoint, merge=False, check_base=not allow_base_mismatch, base=base)


def _load_into(model: BALRSAM, payload: Mapping[str, Any], checkpoint: PathLike, *, merge: bool, check_base: bool, base: str) -> BALRSAM:
    """Check ``payload`` (a read trainable checkpoint) against ``model`` and load it; ``base`` names the model's SAM weights in errors."""
    trained, built = payload["config"], model.config.to_dict()
    different = {k: (trained.get(k), v) for k, v in built.items() if k in trained and trained[k] != v and k not in _RUNTIME_OPTIONS}
    if different:
        detail = ", ".join(f"{k}: checkpoint {a!r}, bundle config {b!r}" for k, (a, b) in sorted(different.items()))
        raise CheckpointError(f"{checkpoint}: was trained with another network configuration ({detail}); set the bundle's values to the checkpoint's")
    if check_base:
        bad = fingerprints_match(payload["base_fingerprint"], base_fingerprint(model))
        if bad:
            raise CheckpointError(
                f"{checkpoint}: was trained on other SAM base weights than {base} "
                f"({len(bad)} base tensors differ, e.g. {', '.join(bad[:3])}); pass the SAM checkpoint used for training"
            )
    load_trainable_state_dict(model, payload["model"], source=str(checkpoint))
    if merge:
        model.merge_adapters()
    return model
