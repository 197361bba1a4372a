"""Tiny trained models that segment, for the end-to-end tests, and the check that they do.

A few CPU iterations leave the tiny BALR-SAM predicting background everywhere, so comparisons of
its outputs (inference against the evaluator, streamed against ``SliceInferer``) would compare
blank with blank. :func:`make_segmenting` gives a trained checkpoint's class hypernetworks (the
last layer of each class's MLP, which sets that class's logit map) seeded random values, trying
seeds in order until the network's labels on the given probe images are mixed
(:func:`assert_segments`' criteria); the result is deterministic. :func:`assert_segments` is
called on every label map an end-to-end comparison uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["assert_segments", "make_segmenting", "segments"]

#: Foreground fraction a segmenting label map must have, as (lowest, highest).
FOREGROUND = (0.05, 0.95)


def segments(labels: np.ndarray, min_classes: int) -> bool:
    """Whether ``labels`` has 5-95 % foreground (label > 0) and at least ``min_classes`` distinct labels."""
    labels = np.asarray(labels)
    foreground = float((labels > 0).mean())
    return FOREGROUND[0] <= foreground <= FOREGROUND[1] and len(np.unique(labels)) >= min_classes


def assert_segments(labels: np.ndarray, min_classes: int = 2, what: str = "label map") -> None:
    """Fail unless ``labels`` (any shape) has 5-95 % foreground and at least ``min_classes`` labels
    (3 for CT, background included; 2 for the binary 2D jobs)."""
    labels = np.asarray(labels)
    classes = np.unique(labels).tolist()
    foreground = float((labels > 0).mean())
    assert segments(labels, min_classes), f"{what} does not segment: foreground {foreground:.3f}, labels {classes} (need >= {min_classes})"


def make_segmenting(
    checkpoint: Path, probes: Iterable[torch.Tensor], *, min_classes: int, sam_checkpoint: Optional[str] = None, scale: float = 4.0, seeds: int = 50
) -> int:
    """Rewrite the trainable checkpoint ``checkpoint`` in place so that its network segments ``probes``.

    Args:
        checkpoint: a ``balr-sam-trainable/1`` file (``models/model.pt``).
        probes: network inputs (``B x C x S x S``, preprocessed as the bundle does).
        min_classes: distinct labels each probe's argmax must show (background included).
        sam_checkpoint: the SAM base the model was trained on.
        scale: standard deviation of the seeded weights times ``sqrt(fan_in)``.
        seeds: how many seeds to try.

    Returns:
        The seed used.

    Raises:
        AssertionError: no seed gave mixed labels on every probe.
    """
    from balr_sam.inference import load_balr_sam

    probes = list(probes)
    state = torch.load(checkpoint, weights_only=True)
    net = load_balr_sam(checkpoint, sam_checkpoint=sam_checkpoint, allow_base_mismatch=sam_checkpoint is None).eval()
    with torch.no_grad():  # the encoder does not change: its embeddings are computed once
        embeddings = [net.image_embeddings(net.preprocess(x)) for x in probes]
        pe, dense = net.prompt_encoder.get_dense_pe(), net.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
    last = {k: v for k, v in state["model"].items() if ".output_hypernetworks_mlps." in k and ".layers.2." in k}
    assert last, f"{checkpoint}: no class hypernetworks among the trainable weights"
    for seed in range(seeds):
        gen = torch.Generator().manual_seed(seed)
        new = {}
        for key, value in sorted(last.items()):
            fan_in = value.shape[-1] if value.ndim == 2 else 1
            new[key] = torch.randn(value.shape, generator=gen) * scale / fan_in**0.5
        net.load_state_dict(new, strict=False)
        ok = True
        with torch.no_grad():
            for embedding, x in zip(embeddings, probes):
                logits = F.interpolate(net.mask_decoder(embedding, pe, dense), size=x.shape[-2:], mode="bilinear", align_corners=False)
                labels = logits.argmax(1).numpy()
                ok = ok and all(segments(one, min_classes) for one in labels)
        if ok:
            state["model"].update(new)
            torch.save(state, checkpoint)
            return seed
    raise AssertionError(f"{checkpoint}: no seed in {seeds} made the network segment the probes")
