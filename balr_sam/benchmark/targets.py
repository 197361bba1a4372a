"""The issue's performance targets for BALR-SAM and whether a benchmark run meets them.

Ratios are BALR-SAM's figure over a baseline's from the same run (:func:`ratio`). A target is
``holds`` or ``does not hold``; the GPU-only targets (a 512 x 512 x 150 volume end to end, Dice +
HD95 of 8 organs) say ``not measured (GPU, 512x512x150 only)`` on CPU or at another volume size.
The throughput target is 0.9x stock SAM on CPU and 3x on CUDA.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Tuple

__all__ = ["TARGETS", "FULL_VOLUME", "ratio", "throughput_target", "check_targets"]

#: ``(key, description, op, threshold, gpu_only)``; ``None`` threshold: see :func:`throughput_target`.
TARGETS: Tuple[Tuple[str, str, str, Optional[float], bool], ...] = (
    ("train_time_vs_full_ft", "BALR-SAM training step <= 0.7x full fine-tuning", "<=", 0.7, False),
    ("train_time_vs_samed", "BALR-SAM training step <= 1.2x SAMed", "<=", 1.2, False),
    ("train_memory_vs_full_ft", "BALR-SAM peak training memory <= 0.6x full fine-tuning", "<=", 0.6, False),
    ("decoder_memory_vs_sam", "BALR-SAM decoder attention memory <= 0.25x SAM's", "<=", 0.25, False),
    ("throughput_vs_sam", "BALR-SAM merged inference throughput >= 0.9x stock SAM (CPU) / 3x (GPU)", ">=", None, False),
    ("volume_seconds", "512x512x150 volume end to end < 2 s (GPU)", "<", 2.0, True),
    ("metrics_seconds", "Dice + HD95 for 8 organs < 1 s (GPU)", "<", 1.0, True),
)

#: The volume size the GPU targets are stated for.
FULL_VOLUME = (512, 512, 150)


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    """``a / b``, or ``None`` when either is missing, ``b`` is zero or ``a`` is NaN."""
    if a is None or b is None or not b or (isinstance(a, float) and math.isnan(a)):
        return None
    return float(a) / float(b)


def throughput_target(cuda: bool) -> float:
    """BALR-SAM's required inference throughput as a multiple of stock SAM's: 3 on GPU, 0.9 on CPU."""
    return 3.0 if cuda else 0.9


def check_targets(
    figures: Mapping[str, Mapping[str, Any]], ratios: Mapping[str, Mapping[str, Optional[float]]], metrics_seconds: float, settings: Mapping[str, Any]
) -> List[Dict[str, Any]]:
    """Each target of :data:`TARGETS` with its value from this run and its status.

    Args:
        figures: ``{metric: {config: value}}`` of the run.
        ratios: ``{metric: {"vs_full_ft", "vs_samed", "vs_sam": ratio}}`` of the run.
        metrics_seconds: Dice + HD95 seconds.
        settings: the run's settings (``device``, ``volume_shape``).

    Returns:
        ``[{"key", "target", "value", "threshold", "status"}]`` in :data:`TARGETS` order.
    """
    cuda = str(settings["device"]).startswith("cuda")
    values = {
        "train_time_vs_full_ft": ratios["train_step_seconds"]["vs_full_ft"],
        "train_time_vs_samed": ratios["train_step_seconds"]["vs_samed"],
        "train_memory_vs_full_ft": ratios["peak_train_memory_bytes"]["vs_full_ft"],
        "decoder_memory_vs_sam": ratios["decoder_attention_bytes"]["vs_sam"],
        "throughput_vs_sam": ratios["inference_slices_per_second"]["vs_sam"],
        "volume_seconds": figures["volume_seconds"]["balr_sam"],
        "metrics_seconds": metrics_seconds,
    }
    targets = []
    for key, text, op, threshold, gpu_only in TARGETS:
        threshold = throughput_target(cuda) if threshold is None else threshold
        value = values[key]
        if gpu_only and (not cuda or (key == "volume_seconds" and tuple(settings["volume_shape"]) != FULL_VOLUME)):
            status = "not measured (GPU, 512x512x150 only)"
        elif value is None:
            status = "not measured"
        else:
            holds = value <= threshold if op == "<=" else value >= threshold if op == ">=" else value < threshold
            status = "holds" if holds else "does not hold"
        if key == "throughput_vs_sam":
            text = f"BALR-SAM merged inference throughput >= {threshold:g}x stock SAM ({'GPU' if cuda else 'CPU'})"
        targets.append({"key": key, "target": text, "value": value, "threshold": threshold, "status": status})
    return targets
