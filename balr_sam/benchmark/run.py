"""One benchmark run: settings, every measurement, figures, ratios and targets (:func:`run_benchmark`),
and the ``balr-sam benchmark`` command's action (:func:`run_from_args`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch

from balr_sam.atomic import atomic_write_text
from balr_sam.benchmark import measurements as m
from balr_sam.benchmark.baselines import TRAIN_CONFIGS
from balr_sam.benchmark.measurements import Log
from balr_sam.benchmark.table import format_table
from balr_sam.benchmark.targets import check_targets, ratio
from balr_sam.benchmark.volume import measure_batch_inference, measure_volume

__all__ = ["run_benchmark", "machine_info", "run_from_args"]

# rows with only a BALR-SAM figure, compared to the baselines' figures of the headline throughput
_BALR_ONLY_THROUGHPUT = ("inference_slices_per_second_unmerged", "inference_slices_per_second_merged_sam_attention", "inference_slices_per_second_merged_sdpa")


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def run_benchmark(
    device: str = "cpu",
    variant: str = "vit_t",
    img_size: int = 256,
    batch: int = 2,
    num_classes: int = 9,
    warmup: int = 2,
    steps: int = 5,
    infer_iters: int = 5,
    infer_batch: Optional[int] = None,
    volume_shape: Optional[Sequence[int]] = None,
    volume_repeats: int = 1,
    batch_cases: int = 3,
    memory_steps: int = 2,
    amp: Optional[bool] = None,
    fast_attention: str = "infer",
    compile: bool = False,
    peak_tflops: Optional[float] = None,
    threads: Optional[int] = None,
    log: Log = _stderr,
) -> Dict[str, Any]:
    """Run the whole benchmark and return its results (printed by :func:`~balr_sam.benchmark.table.format_table`).

    Args:
        device: ``cpu`` or ``cuda``.
        variant, img_size, num_classes: the model compared (SAM variant, input size, classes).
        batch: training batch (and decoder-memory batch).
        warmup: untimed rounds before each timing.
        steps: timed training steps (and attention-kernel rounds).
        infer_iters: timed inference batches (and FLOP/s rounds).
        infer_batch: inference batch and volume slab (default ``batch``).
        volume_shape: ``X Y Z`` of the end-to-end CT volume (default 512x512x150 on CUDA,
            256x256x20 on CPU).
        volume_repeats: rounds of the volume and batch-inference timings.
        batch_cases: volumes in the batch-inference timing.
        memory_steps: training steps in each memory child process.
        amp: bf16 autocast (default: on with CUDA; never on CPU).
        fast_attention: ``off`` (SAM's attention everywhere), ``infer`` (SDPA for BALR-SAM
            inference: throughput, volume, FLOP/s) or ``all`` (also while training all configurations).
        compile: ``torch.compile`` every model.
        peak_tflops: device peak for the FLOP/s fraction (default: known GPUs).
        threads: ``torch.set_num_threads``.
        log: progress messages (default: stderr).

    Returns:
        ``{"settings", "machine", "seconds", "figures", "ratios", "training", "memory",
        "decoder_memory", "inference", "attention_kernels", "volume", "batch_inference",
        "metrics", "encoder_flops", "targets"}``; ``figures`` is ``{metric: {config: value}}``,
        ``ratios`` ``{metric: {"vs_full_ft", "vs_samed", "vs_sam": BALR-SAM's ratio}}``.

    Raises:
        RuntimeError: CUDA asked for but not available; a child or a volume failed.
        ValueError: unknown ``fast_attention``.
    """
    cuda = device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but CUDA is not available")
    if fast_attention not in ("off", "infer", "all"):
        raise ValueError(f"fast_attention must be off, infer or all, got {fast_attention!r}")
    if threads:
        torch.set_num_threads(threads)
    if compile:
        import torch._dynamo as dynamo  # "as": a plain "import torch._dynamo" would make torch local to this function

        # six models share SAM's forward code; TorchDynamo's default of 8 cached graphs per code
        # object runs out and the later models silently fall back to eager
        dynamo.config.cache_size_limit = max(dynamo.config.cache_size_limit, 64)
        dynamo.config.accumulated_cache_size_limit = max(dynamo.config.accumulated_cache_size_limit, 1024)
    settings: Dict[str, Any] = {
        "device": device,
        "variant": variant,
        "img_size": img_size,
        "batch": batch,
        "num_classes": num_classes,
        "warmup": warmup,
        "steps": steps,
        "infer_iters": infer_iters,
        "infer_batch": infer_batch or batch,
        "volume_shape": list(volume_shape or ((512, 512, 150) if cuda else (256, 256, 20))),
        "volume_repeats": volume_repeats,
        "batch_cases": batch_cases,
        "memory_steps": memory_steps,
        "amp": bool(cuda if amp is None else amp) and cuda,
        "fast_attention": fast_attention,
        "compile": compile,
        "peak_tflops": peak_tflops,
        "threads": threads,
    }
    started = time.perf_counter()
    log("training memory (one child process per configuration)")
    memory = {name: m.memory_in_child(name, settings) for name in TRAIN_CONFIGS}
    log("training step time")
    training = m.measure_training(settings, log)
    log("decoder attention memory")
    decoder = m.measure_decoder_memory(settings)
    log("inference throughput")
    inference = m.measure_inference(settings, log)
    log("attention kernels: SAM vs SDPA")
    kernels = m.measure_attention_kernels(settings, log)
    log("end-to-end volume (balr-sam infer's segmenter)")
    volume = measure_volume(settings, log)
    log("batch inference: sequential vs read-ahead")
    batch_infer = measure_batch_inference(settings, log)
    log("Dice + HD95")
    metrics = m.measure_metrics(settings)
    log("encoder FLOP/s")
    flops = m.measure_encoder_flops(settings)

    best = inference.pop("_best_balr")
    tp = {k: v["slices_per_second"] for k, v in inference.items()}
    figures: Dict[str, Dict[str, Any]] = {
        "trainable_parameters": {n: training[n]["trainable_parameters"] for n in TRAIN_CONFIGS},
        "train_step_seconds": {n: training[n]["step_seconds"] for n in TRAIN_CONFIGS},
        "peak_train_memory_bytes": {n: memory[n]["peak_bytes"] for n in TRAIN_CONFIGS},
        "train_memory_above_model_bytes": {n: memory[n]["peak_bytes"] - memory[n]["before_training_bytes"] for n in TRAIN_CONFIGS},
        "decoder_attention_bytes": {"sam": decoder["sam"], **{n: decoder[n] for n in TRAIN_CONFIGS}},
        "inference_slices_per_second": {"sam": tp["sam"], "full_ft": tp["full_ft"], "samed": tp["samed"], "balr_sam": tp[best]},
        "inference_slices_per_second_unmerged": {"balr_sam": tp["balr_sam_unmerged"]},
        "inference_slices_per_second_merged_sam_attention": {"balr_sam": tp["balr_sam_merged"]},
        "inference_slices_per_second_merged_sdpa": {"balr_sam": tp["balr_sam_merged_sdpa"]},
        "volume_seconds": {n: volume[n]["seconds"] for n in TRAIN_CONFIGS},
    }
    ratios = {
        metric: {
            "vs_full_ft": ratio(v.get("balr_sam"), v.get("full_ft")),
            "vs_samed": ratio(v.get("balr_sam"), v.get("samed")),
            "vs_sam": ratio(v.get("balr_sam"), v.get("sam")),
        }
        for metric, v in figures.items()
    }
    for metric in _BALR_ONLY_THROUGHPUT:
        v = figures[metric]["balr_sam"]
        ratios[metric] = {"vs_full_ft": ratio(v, tp["full_ft"]), "vs_samed": ratio(v, tp["samed"]), "vs_sam": ratio(v, tp["sam"])}
    return {
        "settings": settings,
        "machine": machine_info(device),
        "seconds": time.perf_counter() - started,
        "figures": figures,
        "ratios": ratios,
        "training": training,
        "memory": memory,
        "decoder_memory": decoder["comparison"],
        "inference": inference,
        "attention_kernels": kernels,
        "volume": volume,
        "batch_inference": batch_infer,
        "metrics": metrics,
        "encoder_flops": flops,
        "targets": check_targets(figures, ratios, metrics["seconds"], settings),
    }


def machine_info(device: str) -> Dict[str, Any]:
    """Python and PyTorch versions, thread and CPU counts, the CPU model, and the GPU on CUDA."""
    info: Dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        info["cpu"] = platform.processor()
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def run_from_args(args: argparse.Namespace) -> int:
    """``balr-sam benchmark``: run with the parsed options, print the table (or the JSON with ``--json -``).

    Returns:
        0.
    """
    result = run_benchmark(
        device=args.device,
        variant=args.variant,
        img_size=args.img_size,
        batch=args.batch,
        num_classes=args.num_classes,
        warmup=args.warmup,
        steps=args.steps,
        infer_iters=args.infer_iters,
        infer_batch=args.infer_batch,
        volume_shape=args.volume_shape,
        volume_repeats=args.volume_repeats,
        batch_cases=args.batch_cases,
        memory_steps=args.memory_steps,
        amp=args.amp,
        fast_attention=args.fast_attention,
        compile=args.compile,
        peak_tflops=args.peak_tflops,
        threads=args.threads,
    )
    text = json.dumps(result, indent=2)
    if args.json_file == "-":
        print(text)
        return 0
    if args.json_file:
        atomic_write_text(args.json_file, text + "\n")
    print(format_table(result))
    return 0
