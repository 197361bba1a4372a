"""What ``balr-sam benchmark`` measures, one function per figure, on the configurations of
:mod:`balr_sam.benchmark.baselines` (the volume figures are in :mod:`balr_sam.benchmark.volume`).

Every function takes the run's ``settings`` (see :func:`balr_sam.benchmark.run.run_benchmark`)
and returns plain JSON-able values. Where configurations are compared by time, they are run
round-robin (interleaved) in one process, so that load from other jobs on a shared machine hits
them alike, and the figure is the median after ``warmup`` untimed rounds.

* training step time (:func:`measure_training`): ``DiceCELoss`` + ``AdamW`` on one fixed random
  batch;
* peak training memory (:func:`memory_in_child`): one fresh child process per configuration
  (``python -m balr_sam.benchmark --child-memory NAME``), its peak RSS on CPU,
  ``torch.cuda.max_memory_allocated`` on CUDA;
* decoder attention memory (:func:`measure_decoder_memory`): counted, not timed, with
  :func:`balr_sam.networks.report.decoder_memory_comparison`;
* inference throughput (:func:`measure_inference`): slices/s under ``torch.inference_mode``;
* encoder FLOP/s (:func:`measure_encoder_flops`): ``FlopCounterMode`` count over the median time;
* Dice + HD95 of 8 organs (:func:`measure_metrics`);
* encoder attention kernels, SAM's vs SDPA (:func:`measure_attention_kernels`).
"""

from __future__ import annotations

import copy
import gc
import json
import os
import resource
import subprocess
import sys
from functools import partial
from typing import Any, Callable, Dict, List, Tuple

import torch
from torch import nn

from balr_sam.benchmark.baselines import TRAIN_CONFIGS, build_config, inference_form, stock_sam_forward
from balr_sam.benchmark.timing import autocast, median, timed
from balr_sam.networks.balr_sam import build_balr_sam
from balr_sam.networks.fast_attention import use_sam_attention, use_sdpa_attention
from balr_sam.networks.report import decoder_attention_memory, decoder_memory_comparison, parameter_report

__all__ = [
    "PEAK_TFLOPS",
    "Settings",
    "Log",
    "TrainingStep",
    "child_train_memory",
    "memory_in_child",
    "measure_training",
    "measure_decoder_memory",
    "measure_inference",
    "measure_encoder_flops",
    "measure_metrics",
    "measure_attention_kernels",
]

Settings = Dict[str, Any]
Log = Callable[[str], None]

# Dense peak TFLOP/s (bf16 tensor cores, fp32) by device-name fragment, from the vendors' data sheets.
PEAK_TFLOPS = {
    "H200": (989.0, 67.0),
    "H100 PCIe": (756.0, 51.0),
    "H100": (989.0, 67.0),
    "A100": (312.0, 19.5),
    "L40S": (362.0, 91.6),
    "A10G": (70.0, 31.2),
    "L4": (121.0, 30.3),
    "V100": (125.0, 15.7),
    "T4": (65.0, 8.1),
    "RTX 4090": (165.0, 82.6),
    "RTX 3090": (71.0, 35.6),
}


class TrainingStep:
    """One configuration's model, loss, optimizer and a fixed random batch; calling it = one step.

    Args:
        name: a configuration of :data:`~balr_sam.benchmark.baselines.TRAIN_CONFIGS`.
        settings: the run's settings (``device``, ``variant``, ``img_size``, ``num_classes``,
            ``batch``, ``amp``, ``compile``, ``fast_attention``).

    The batch is ``batch x 1 x S x S`` in [0, 1] with labels ``batch x 1 x S x S``; the loss is
    MONAI's ``DiceCELoss`` (0.2 CE + 0.8 Dice), the optimizer ``AdamW`` over the trainable set.
    """

    def __init__(self, name: str, settings: Settings) -> None:
        from monai.losses import DiceCELoss

        torch.manual_seed(0)
        self.device = settings["device"]
        self.amp = settings["amp"]
        self.model = build_config(
            name, settings["variant"], settings["img_size"], settings["num_classes"], self.device, settings["fast_attention"] == "all"
        ).train()
        self.forward = torch.compile(self.model) if settings["compile"] else self.model
        self.trainable = parameter_report(self.model)["trainable"]
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.01)
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True, lambda_ce=0.2, lambda_dice=0.8)
        gen = torch.Generator().manual_seed(1)
        b, s = settings["batch"], settings["img_size"]
        self.x = torch.rand(b, 1, s, s, generator=gen).to(self.device)
        self.y = torch.randint(0, settings["num_classes"], (b, 1, s, s), generator=gen).to(self.device)

    def _step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.amp):
            logits = self.forward(self.x)
        self.loss(logits.float(), self.y).backward()
        self.optimizer.step()

    def __call__(self) -> float:
        """One training step; returns its seconds."""
        return timed(self.device, self._step)


def _rss_bytes() -> int:
    """Peak RSS of this process (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def child_train_memory(name: str, settings: Settings) -> Dict[str, Any]:
    """In a fresh process: build ``name``, train ``memory_steps`` steps, report the memory peak.

    Returns:
        ``{"config", "peak_bytes", "before_training_bytes", "kind"}``.
    """
    cuda = settings["device"].startswith("cuda")
    if settings.get("threads"):
        torch.set_num_threads(settings["threads"])
    step = TrainingStep(name, settings)
    gc.collect()
    before = torch.cuda.memory_allocated() if cuda else _rss_bytes()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(settings["memory_steps"]):
        step()
    peak = torch.cuda.max_memory_allocated() if cuda else _rss_bytes()
    return {
        "config": name,
        "peak_bytes": int(peak),
        "before_training_bytes": int(before),
        "kind": "cuda max_memory_allocated" if cuda else "peak RSS of the child process",
    }


def memory_in_child(name: str, settings: Settings) -> Dict[str, Any]:
    """:func:`child_train_memory` of ``name`` in a child process (``python -m balr_sam.benchmark --child-memory``).

    Raises:
        RuntimeError: the child failed (its stderr's tail is in the message).
    """
    cmd = [sys.executable, "-m", "balr_sam.benchmark", "--child-memory", name, "--child-args", json.dumps(settings)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ), check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory child for {name} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_training(settings: Settings, log: Log) -> Dict[str, Any]:
    """Interleaved training step times (median of ``steps`` after ``warmup``) of the trained configurations.

    Returns:
        ``{config: {"trainable_parameters", "step_seconds", "step_seconds_all"}}``.
    """
    steps = {name: TrainingStep(name, settings) for name in TRAIN_CONFIGS}
    times: Dict[str, List[float]] = {name: [] for name in TRAIN_CONFIGS}
    rounds = settings["warmup"] + settings["steps"]
    for i in range(rounds):
        for name, step in steps.items():
            t = step()
            if i >= settings["warmup"]:
                times[name].append(t)
        log(f"training step {i + 1}/{rounds}")
    result = {
        name: {"trainable_parameters": steps[name].trainable, "step_seconds": median(times[name]), "step_seconds_all": times[name]} for name in TRAIN_CONFIGS
    }
    del steps
    gc.collect()
    return result


def measure_decoder_memory(settings: Settings) -> Dict[str, Any]:
    """Decoder attention bytes saved for backward: SAM's decoder and the trained configurations.

    ``full_ft`` and ``samed`` share one decoder (prompt-free head, full-rank attention), measured
    once. The image encoders are built on the ``meta`` device (not needed).

    Returns:
        ``{"sam", "full_ft", "samed", "balr_sam": bytes, "comparison": decoder_memory_comparison(...)}``.
    """
    batch, meta = settings["batch"], torch.device("meta")
    model = build_balr_sam(settings["variant"], num_classes=settings["num_classes"], img_size=settings["img_size"], encoder_device=meta)
    comparison = decoder_memory_comparison(model, batch=batch)
    baseline = build_balr_sam(
        settings["variant"],
        num_classes=settings["num_classes"],
        img_size=settings["img_size"],
        encoder_device=meta,
        use_adapters=False,
        use_cden=False,
        use_lowrank_attention=False,
    )
    baseline_bytes = decoder_attention_memory(baseline, batch).saved_bytes
    return {
        "sam": comparison["sam"]["saved_bytes"],
        "comparison": comparison,
        "full_ft": baseline_bytes,
        "samed": baseline_bytes,
        "balr_sam": comparison["balr_sam"]["saved_bytes"],
    }


def measure_inference(settings: Settings, log: Log) -> Dict[str, Any]:
    """Interleaved inference throughput of stock SAM, the baselines (inference form) and BALR-SAM
    unmerged, merged, and merged + SDPA attention.

    Returns:
        ``{model: {"slices_per_second", "seconds_per_batch"}}`` for ``sam``, ``full_ft``,
        ``samed``, ``balr_sam_unmerged``, ``balr_sam_merged``, ``balr_sam_merged_sdpa``, and
        ``"_best_balr"``: the BALR-SAM model the headline figure uses.
    """
    device, size, batch, variant, classes = settings["device"], settings["img_size"], settings["infer_batch"], settings["variant"], settings["num_classes"]
    torch.manual_seed(0)
    plain = lambda m, x: m(x)  # noqa: E731
    models: Dict[str, Tuple[nn.Module, Callable[[nn.Module, torch.Tensor], Any]]] = {
        "sam": (build_config("sam", variant, size, device=device).eval(), stock_sam_forward),
        "full_ft": (inference_form(build_config("full_ft", variant, size, classes, device)), plain),
        "samed": (inference_form(build_config("samed", variant, size, classes, device)), plain),
    }
    unmerged = build_config("balr_sam", variant, size, classes, device).eval()
    models["balr_sam_unmerged"] = (unmerged, plain)
    merged = inference_form(copy.deepcopy(unmerged))
    models["balr_sam_merged"] = (merged, plain)
    sdpa = copy.deepcopy(merged)
    use_sdpa_attention(sdpa.image_encoder)
    models["balr_sam_merged_sdpa"] = (sdpa, plain)
    if settings["compile"]:
        models = {k: (torch.compile(m), f) for k, (m, f) in models.items()}
    x = torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(2)).to(device)
    times: Dict[str, List[float]] = {k: [] for k in models}
    rounds = settings["warmup"] + settings["infer_iters"]
    with torch.inference_mode():
        for i in range(rounds):
            for name, (model, forward) in models.items():
                with autocast(device, settings["amp"]):
                    t = timed(device, partial(forward, model, x))
                if i >= settings["warmup"]:
                    times[name].append(t)
            log(f"inference round {i + 1}/{rounds}")
    result: Dict[str, Any] = {name: {"slices_per_second": batch / median(t), "seconds_per_batch": median(t)} for name, t in times.items()}
    result["_best_balr"] = "balr_sam_merged_sdpa" if settings["fast_attention"] != "off" else "balr_sam_merged"
    return result


def measure_encoder_flops(settings: Settings) -> Dict[str, Any]:
    """FLOPs of one merged BALR-SAM encoder forward (``FlopCounterMode``) and the achieved rate.

    Returns:
        ``{"flops_per_forward", "achieved_tflops", "peak_tflops", "fraction_of_peak"}`` (plus
        ``device_name`` on CUDA; the peak from :data:`PEAK_TFLOPS` or ``settings["peak_tflops"]``).
    """
    from torch.utils.flop_counter import FlopCounterMode

    device = settings["device"]
    model = inference_form(
        build_config("balr_sam", settings["variant"], settings["img_size"], settings["num_classes"], device, settings["fast_attention"] != "off")
    )
    x = torch.rand(settings["infer_batch"], 3, settings["img_size"], settings["img_size"]).to(device)
    with torch.inference_mode():
        counter = FlopCounterMode(display=False)
        with counter:
            model.image_encoder(x)
        flops = counter.get_total_flops()
        times = []
        for i in range(settings["warmup"] + settings["infer_iters"]):
            with autocast(device, settings["amp"]):
                t = timed(device, lambda: model.image_encoder(x))
            if i >= settings["warmup"]:
                times.append(t)
    achieved = flops / median(times) / 1e12
    out: Dict[str, Any] = {"flops_per_forward": int(flops), "achieved_tflops": achieved, "peak_tflops": None, "fraction_of_peak": None}
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name()
        peak = settings.get("peak_tflops")
        if peak is None:
            for key, (bf16, fp32) in PEAK_TFLOPS.items():
                if key in name:
                    peak = bf16 if settings["amp"] else fp32
                    break
        out.update(device_name=name, peak_tflops=peak, fraction_of_peak=(achieved / peak) if peak else None)
    return out


def measure_metrics(settings: Settings) -> Dict[str, Any]:
    """Seconds for Dice + HD95 of 8 organs on one volume of ``volume_shape`` (synthetic blocks,
    the prediction shifted by 2 voxels), with :func:`balr_sam.metrics.compute_case_metrics`.

    Returns:
        ``{"seconds", "shape"}``.
    """
    import numpy as np

    from balr_sam.metrics import compute_case_metrics

    x, y, z = settings["volume_shape"]
    gt = np.zeros((x, y, z), dtype=np.uint8)
    for k in range(1, 9):
        cx, cy = int(x * (0.15 + 0.08 * k)), int(y * (0.2 + 0.07 * k))
        r = max(2, x // 16)
        gt[max(cx - r, 0) : cx + r, max(cy - r, 0) : cy + r, z // 4 : 3 * z // 4] = k
    pred = np.roll(gt, 2, axis=0)
    seconds = timed(settings["device"], lambda: compute_case_metrics(pred, gt, classes=list(range(1, 9)), spacing=(0.8, 0.8, 3.0), device=settings["device"]))
    return {"seconds": seconds, "shape": [x, y, z]}


def measure_attention_kernels(settings: Settings, log: Log) -> Dict[str, Any]:
    """BALR-SAM encoder inference forward and (unmerged) training forward + backward, SAM's
    attention vs SDPA, interleaved.

    Returns:
        median seconds ``{"infer_sam", "infer_sdpa", "train_sam", "train_sdpa"}``.
    """
    device, amp = settings["device"], settings["amp"]
    model = build_config("balr_sam", settings["variant"], settings["img_size"], settings["num_classes"], device)
    x = torch.rand(settings["batch"], 3, settings["img_size"], settings["img_size"]).to(device)
    res: Dict[str, List[float]] = {"infer_sam": [], "infer_sdpa": [], "train_sam": [], "train_sdpa": []}

    def train_pass() -> None:
        with autocast(device, amp):
            out = model.image_encoder(x)
        out.float().square().mean().backward()

    def infer_pass() -> None:
        with autocast(device, amp):
            model.image_encoder(x)

    rounds = settings["warmup"] + settings["steps"]
    for i in range(rounds):
        for kind in ("sam", "sdpa"):
            (use_sdpa_attention if kind == "sdpa" else use_sam_attention)(model.image_encoder)
            model.train()
            t_train = timed(device, train_pass)
            model.eval()
            with torch.inference_mode():
                t_infer = timed(device, infer_pass)
            if i >= settings["warmup"]:
                res[f"train_{kind}"].append(t_train)
                res[f"infer_{kind}"].append(t_infer)
        log(f"attention kernels round {i + 1}/{rounds}")
    return {k: median(v) for k, v in res.items()}
