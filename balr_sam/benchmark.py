"""``balr-sam benchmark``: full fine-tuning vs SAMed-style LoRA vs BALR-SAM on one workload.

Configurations (same variant, input size, batch, loss ``DiceCELoss`` and optimizer ``AdamW``):

* ``full_ft``: MedSAM-style full fine-tuning: SAM with the prompt-free multi-class head
  (:class:`PromptFreeMaskDecoder`, full-rank attention), every parameter trainable;
* ``samed``: SAMed-style LoRA: rank-4 adapters on the q and v parts of every encoder block's
  fused ``attn.qkv`` (:class:`QVLoRA`), encoder frozen otherwise, prompt encoder and decoder
  trainable, full-rank decoder attention, no CDEN;
* ``balr_sam``: BALR-SAM as built by :func:`build_balr_sam` (adapters unmerged for training;
  for inference :meth:`BALRSAM.fuse_for_inference`: adapters merged, CDEN's BatchNorms folded);
* ``sam`` (inference only): the stock ``segment_anything`` :class:`Sam` at the same size, run
  through its own ``forward`` (no prompts, multimask output).

Measured: trainable parameters, training step time (median of ``steps`` after ``warmup``, the
three configurations interleaved step by step in one process so that load on a shared machine hits
them alike), peak training memory (one child process per configuration: its peak RSS on CPU,
``torch.cuda.max_memory_allocated`` on GPU), decoder attention memory (counted with
:func:`measure_attention_memory`), inference throughput (slices/s, interleaved), the end-to-end
time to segment one CT volume (read NIfTI, window, slice, infer, argmax, stack, write NIfTI),
Dice + HD95 for 8 organs on one volume, and the encoder's achieved FLOP/s (against the device
peak on CUDA). Every figure comes with its ratio to the baselines measured in the same run.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from balr_sam.networks.balr_sam import build_balr_sam
from balr_sam.networks.fast_attention import use_sam_attention, use_sdpa_attention
from balr_sam.networks.report import decoder_attention_memory, decoder_memory_comparison
from balr_sam.networks.variants import build_sam

__all__ = [
    "TRAIN_CONFIGS",
    "QVLoRA",
    "build_config",
    "run_benchmark",
    "format_table",
    "TABLE_COLUMNS",
    "TARGETS",
    "main",
]

TRAIN_CONFIGS = ("full_ft", "samed", "balr_sam")
LABELS = {"sam": "stock SAM", "full_ft": "full FT", "samed": "SAMed", "balr_sam": "BALR-SAM"}
TABLE_COLUMNS = ("metric", "stock SAM", "full FT", "SAMed", "BALR-SAM", "BALR-SAM / full FT", "BALR-SAM / SAMed", "BALR-SAM / stock SAM")

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

# (key, description, op, threshold, gpu_only)
TARGETS = (
    ("train_time_vs_full_ft", "BALR-SAM training step <= 0.7x full fine-tuning", "<=", 0.7, False),
    ("train_time_vs_samed", "BALR-SAM training step <= 1.2x SAMed", "<=", 1.2, False),
    ("train_memory_vs_full_ft", "BALR-SAM peak training memory <= 0.6x full fine-tuning", "<=", 0.6, False),
    ("decoder_memory_vs_sam", "BALR-SAM decoder attention memory <= 0.25x SAM's", "<=", 0.25, False),
    ("throughput_vs_sam", "BALR-SAM merged inference throughput >= 0.9x stock SAM (CPU) / 3x (GPU)", ">=", None, False),
    ("volume_seconds", "512x512x150 volume end to end < 2 s (GPU)", "<", 2.0, True),
    ("metrics_seconds", "Dice + HD95 for 8 organs < 1 s (GPU)", "<", 1.0, True),
)


# ------------------------------------------------------------------------------ configurations
class QVLoRA(nn.Module):
    """SAMed's LoRA: rank-``r`` updates of the q and v outputs of a fused ``qkv`` linear layer.

    ``y = qkv(x) + [B_q A_q x, 0, B_v A_v x]`` with ``A`` Kaiming-initialised and ``B`` zero (an
    untrained wrapper computes ``qkv`` exactly). The wrapped layer stays ``.base``.
    """

    def __init__(self, qkv: nn.Linear, rank: int = 4) -> None:
        super().__init__()
        self.base = qkv
        self.dim = qkv.in_features
        dev, dt = qkv.weight.device, qkv.weight.dtype
        self.lora_A_q = nn.Parameter(torch.empty(rank, self.dim, device=dev, dtype=dt))
        self.lora_B_q = nn.Parameter(torch.zeros(self.dim, rank, device=dev, dtype=dt))
        self.lora_A_v = nn.Parameter(torch.empty(rank, self.dim, device=dev, dtype=dt))
        self.lora_B_v = nn.Parameter(torch.zeros(self.dim, rank, device=dev, dtype=dt))
        nn.init.kaiming_uniform_(self.lora_A_q, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.lora_A_v, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.base(x)
        dq = x @ self.lora_A_q.t() @ self.lora_B_q.t()
        dv = x @ self.lora_A_v.t() @ self.lora_B_v.t()
        return qkv + torch.cat([dq, torch.zeros_like(dq), dv], dim=-1)


def build_config(name: str, variant: str, img_size: int, num_classes: int = 9, device: str = "cpu", fast_attention: bool = False) -> nn.Module:
    """Build one configuration (``sam``, ``full_ft``, ``samed``, ``balr_sam``) with random weights."""
    dev = torch.device(device)
    if name == "sam":
        sam = build_sam(variant, img_size=img_size, device=dev)
        if fast_attention:
            use_sdpa_attention(sam.image_encoder)
        return sam
    if name == "balr_sam":
        return build_balr_sam(variant, num_classes=num_classes, img_size=img_size, device=dev, fast_attention=fast_attention)
    if name not in ("full_ft", "samed"):
        raise ValueError(f"unknown configuration {name!r}")
    model = build_balr_sam(variant, num_classes=num_classes, img_size=img_size, device=dev, use_adapters=False, use_cden=False, use_lowrank_attention=False, fast_attention=fast_attention)
    if name == "full_ft":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    for block in model.image_encoder.blocks:
        block.attn.qkv = QVLoRA(block.attn.qkv, rank=4)
    for pname, p in model.named_parameters():
        p.requires_grad_(".lora_" in pname or pname.startswith(("mask_decoder.", "prompt_encoder.")))
    return model


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ------------------------------------------------------------------------------------ helpers
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _autocast(device: str, amp: bool) -> Any:
    return torch.autocast("cuda", dtype=torch.bfloat16) if amp and device.startswith("cuda") else nullcontext()


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


class _Trainer:
    """One configuration's model, loss, optimizer and a fixed batch; ``step()`` = one training step."""

    def __init__(self, name: str, args: Dict[str, Any]) -> None:
        from monai.losses import DiceCELoss

        torch.manual_seed(0)
        self.device = args["device"]
        self.amp = args["amp"]
        self.model = build_config(name, args["variant"], args["img_size"], args["num_classes"], self.device, args["fast_attention"] == "all").train()
        self.forward = torch.compile(self.model) if args["compile"] else self.model
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.trainable = trainable_parameters(self.model)
        self.optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True, lambda_ce=0.2, lambda_dice=0.8)
        gen = torch.Generator().manual_seed(1)
        b, s = args["batch"], args["img_size"]
        self.x = torch.rand(b, 1, s, s, generator=gen).to(self.device)
        self.y = torch.randint(0, args["num_classes"], (b, 1, s, s), generator=gen).to(self.device)

    def step(self) -> float:
        _sync(self.device)
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        with _autocast(self.device, self.amp):
            logits = self.forward(self.x)
        loss = self.loss(logits.float(), self.y)
        loss.backward()
        self.optimizer.step()
        _sync(self.device)
        return time.perf_counter() - start


def _rss_bytes() -> int:
    """Peak RSS of this process (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def child_train_memory(name: str, args: Dict[str, Any]) -> Dict[str, Any]:
    """Run in a fresh process: build ``name``, train ``memory_steps`` steps, report its memory peak."""
    cuda = args["device"].startswith("cuda")
    if args.get("threads"):
        torch.set_num_threads(args["threads"])
    trainer = _Trainer(name, args)
    gc.collect()
    before = torch.cuda.memory_allocated() if cuda else _rss_bytes()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args["memory_steps"]):
        trainer.step()
    peak = torch.cuda.max_memory_allocated() if cuda else _rss_bytes()
    return {"config": name, "peak_bytes": int(peak), "before_training_bytes": int(before), "kind": "cuda max_memory_allocated" if cuda else "peak RSS of the child process"}


def _memory_in_child(name: str, args: Dict[str, Any]) -> Dict[str, Any]:
    cmd = [sys.executable, "-m", "balr_sam.benchmark", "--child-memory", name, "--child-args", json.dumps(args)]
    env = dict(os.environ)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory child for {name} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- measurements
def measure_training(args: Dict[str, Any], log: Callable[[str], None]) -> Dict[str, Any]:
    """Interleaved training step times (median of ``steps`` after ``warmup``) for the three configurations."""
    trainers = {name: _Trainer(name, args) for name in TRAIN_CONFIGS}
    times: Dict[str, List[float]] = {name: [] for name in TRAIN_CONFIGS}
    for i in range(args["warmup"] + args["steps"]):
        for name, trainer in trainers.items():
            t = trainer.step()
            if i >= args["warmup"]:
                times[name].append(t)
        log(f"training step {i + 1}/{args['warmup'] + args['steps']}")
    result = {name: {"trainable_parameters": trainers[name].trainable, "step_seconds": _median(times[name]), "step_seconds_all": times[name]} for name in TRAIN_CONFIGS}
    del trainers
    gc.collect()
    return result


def measure_decoder_memory(args: Dict[str, Any]) -> Dict[str, Any]:
    """Decoder attention bytes saved for backward: SAM's decoder and the three configurations.

    ``full_ft`` and ``samed`` share one decoder (prompt-free head, full-rank attention), measured once.
    """
    batch, meta = args["batch"], torch.device("meta")
    model = build_balr_sam(args["variant"], num_classes=args["num_classes"], img_size=args["img_size"], encoder_device=meta)
    comparison = decoder_memory_comparison(model, batch=batch)
    baseline = build_balr_sam(args["variant"], num_classes=args["num_classes"], img_size=args["img_size"], encoder_device=meta, use_adapters=False, use_cden=False, use_lowrank_attention=False)
    baseline_bytes = decoder_attention_memory(baseline, batch).saved_bytes
    return {"sam": comparison["sam"]["saved_bytes"], "comparison": comparison, "full_ft": baseline_bytes, "samed": baseline_bytes, "balr_sam": comparison["balr_sam"]["saved_bytes"]}


def _stock_sam_forward(sam: nn.Module, images: torch.Tensor) -> Any:
    size = images.shape[-1]
    return sam([{"image": img * 255.0, "original_size": (size, size)} for img in images.expand(-1, 3, -1, -1)], multimask_output=True)


def measure_inference(args: Dict[str, Any], log: Callable[[str], None]) -> Dict[str, Any]:
    """Interleaved inference throughput (slices/s) of stock SAM, the baselines and BALR-SAM (unmerged, merged, merged + SDPA)."""
    device, size, batch = args["device"], args["img_size"], args["infer_batch"]
    torch.manual_seed(0)
    models: Dict[str, Tuple[nn.Module, Callable[[nn.Module, torch.Tensor], Any]]] = {}
    plain = lambda m, x: m(x)  # noqa: E731
    models["sam"] = (build_config("sam", args["variant"], size, device=device).eval(), _stock_sam_forward)
    models["full_ft"] = (build_config("full_ft", args["variant"], size, args["num_classes"], device).eval(), plain)
    models["samed"] = (build_config("samed", args["variant"], size, args["num_classes"], device).eval(), plain)
    unmerged = build_config("balr_sam", args["variant"], size, args["num_classes"], device).eval()
    models["balr_sam_unmerged"] = (unmerged, plain)
    merged = copy.deepcopy(unmerged)
    merged.fuse_for_inference()
    models["balr_sam_merged"] = (merged, plain)
    sdpa = copy.deepcopy(merged)
    use_sdpa_attention(sdpa.image_encoder)
    models["balr_sam_merged_sdpa"] = (sdpa, plain)
    if args["compile"]:
        models = {k: (torch.compile(m), f) for k, (m, f) in models.items()}
    x = torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(2)).to(device)
    times: Dict[str, List[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for i in range(args["warmup"] + args["infer_iters"]):
            for name, (model, fwd) in models.items():
                _sync(device)
                start = time.perf_counter()
                with _autocast(device, args["amp"]):
                    fwd(model, x)
                _sync(device)
                if i >= args["warmup"]:
                    times[name].append(time.perf_counter() - start)
            log(f"inference round {i + 1}/{args['warmup'] + args['infer_iters']}")
    result = {name: {"slices_per_second": batch / _median(t), "seconds_per_batch": _median(t)} for name, t in times.items()}
    result["_best_balr"] = "balr_sam_merged_sdpa" if args["fast_attention"] != "off" else "balr_sam_merged"
    return result


def measure_encoder_flops(args: Dict[str, Any]) -> Dict[str, Any]:
    """FLOPs of one merged BALR-SAM encoder forward (``FlopCounterMode``) and the achieved rate."""
    from torch.utils.flop_counter import FlopCounterMode

    device = args["device"]
    model = build_config("balr_sam", args["variant"], args["img_size"], args["num_classes"], device, args["fast_attention"] != "off").eval()
    model.fuse_for_inference()
    x = torch.rand(args["infer_batch"], 3, args["img_size"], args["img_size"]).to(device)
    with torch.inference_mode():
        counter = FlopCounterMode(display=False)
        with counter:
            model.image_encoder(x)
        flops = counter.get_total_flops()
        times = []
        for i in range(args["warmup"] + args["infer_iters"]):
            _sync(device)
            start = time.perf_counter()
            with _autocast(device, args["amp"]):
                model.image_encoder(x)
            _sync(device)
            if i >= args["warmup"]:
                times.append(time.perf_counter() - start)
    achieved = flops / _median(times) / 1e12
    out: Dict[str, Any] = {"flops_per_forward": int(flops), "achieved_tflops": achieved, "peak_tflops": None, "fraction_of_peak": None}
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name()
        peak = args.get("peak_tflops")
        if peak is None:
            for key, (bf16, fp32) in PEAK_TFLOPS.items():
                if key in name:
                    peak = bf16 if args["amp"] else fp32
                    break
        out.update(device_name=name, peak_tflops=peak, fraction_of_peak=(achieved / peak) if peak else None)
    return out


def _write_volume(path: Path, shape: Tuple[int, int, int]) -> None:
    import numpy as np

    from balr_sam.data.testing import affine_for, write_nifti

    rng = np.random.default_rng(0)
    data = rng.integers(-1000, 1000, size=shape, dtype=np.int16)
    write_nifti(path, data, affine_for((0.8, 0.8, 3.0)))


def segment_volume(model: nn.Module, source: Path, output: Path, batch: int, device: str, amp: bool) -> None:
    """Read a NIfTI CT volume, window it, segment it slice by slice, stack the labels, write NIfTI."""
    import nibabel as nib
    import numpy as np

    from balr_sam.data.transforms import HU_WINDOW
    from balr_sam.inference import write_label_nifti

    lo, hi = HU_WINDOW
    image = nib.load(str(source))
    volume = torch.from_numpy(np.asarray(image.dataobj, dtype=np.float32))
    volume = ((volume.clamp(lo, hi) - lo) / (hi - lo)).permute(2, 0, 1).unsqueeze(1)  # Z x 1 x X x Y
    labels = []
    with torch.inference_mode():
        for start in range(0, volume.shape[0], batch):
            x = volume[start : start + batch].to(device, non_blocking=True)
            with _autocast(device, amp):
                logits = model(x)
            labels.append(logits.argmax(1).to(torch.uint8))
    stacked = torch.cat(labels).permute(1, 2, 0).cpu().numpy()
    write_label_nifti(output, stacked, image.affine)


def measure_volume(args: Dict[str, Any], log: Callable[[str], None]) -> Dict[str, Any]:
    """End-to-end seconds for one volume with each configuration (BALR-SAM merged), interleaved."""
    shape = tuple(args["volume_shape"])
    device = args["device"]
    models = {}
    for name in TRAIN_CONFIGS:
        model = build_config(name, args["variant"], args["img_size"], args["num_classes"], device, name == "balr_sam" and args["fast_attention"] != "off").eval()
        if name == "balr_sam":
            model.fuse_for_inference()
        models[name] = model
    times: Dict[str, List[float]] = {k: [] for k in models}
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "ct.nii.gz"
        _write_volume(source, shape)  # not timed
        for i in range(args["volume_repeats"]):
            for name, model in models.items():
                _sync(device)
                start = time.perf_counter()
                segment_volume(model, source, Path(tmp) / f"{name}.nii.gz", args["infer_batch"], device, args["amp"])
                _sync(device)
                times[name].append(time.perf_counter() - start)
            log(f"volume round {i + 1}/{args['volume_repeats']}")
    return {name: {"seconds": _median(t), "shape": list(shape)} for name, t in times.items()}


class _StagedCases:
    """``balr-sam infer``'s staged predictor protocol over a :class:`StreamingVolumeSegmenter`."""

    def __init__(self, segmenter: Any) -> None:
        self.segmenter = segmenter

    def load(self, item: Any) -> Any:
        return self.segmenter.load(item.image)

    def segment(self, item: Any, loaded: Any) -> Any:
        return self.segmenter.segment(loaded)

    def __call__(self, item: Any) -> Any:
        return self.segment(item, self.load(item))


def measure_batch_inference(args: Dict[str, Any], log: Callable[[str], None]) -> Dict[str, Any]:
    """Seconds for ``batch_cases`` volumes through the product's batch path (``run_batch_inference``
    with the streamed segmenter, BALR-SAM merged), reading the next case ahead or not, interleaved."""
    from balr_sam.data.transforms import ct_inference_preprocessing
    from balr_sam.inference import StreamingVolumeSegmenter, find_inputs, run_batch_inference

    device = args["device"]
    model = build_config("balr_sam", args["variant"], args["img_size"], args["num_classes"], device, args["fast_attention"] != "off").eval()
    model.fuse_for_inference()
    segmenter = StreamingVolumeSegmenter(model, ct_inference_preprocessing(img_size=args["img_size"]), args["infer_batch"], torch.device(device), args["amp"])
    predictor = _StagedCases(segmenter)
    times: Dict[str, List[float]] = {"sequential": [], "read_ahead": []}
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "in"
        inputs.mkdir()
        for i in range(args["batch_cases"]):
            _write_volume(inputs / f"case{i}.nii.gz", tuple(args["volume_shape"]))  # not timed
        items = find_inputs(inputs)
        for i in range(args["volume_repeats"]):
            for mode in times:
                out = Path(tmp) / f"out_{mode}_{i}"
                _sync(device)
                start = time.perf_counter()
                report = run_batch_inference(items, out, predictor, {0: "background"}, progress=False, prefetch=mode == "read_ahead")
                _sync(device)
                times[mode].append(time.perf_counter() - start)
                if not report.ok:
                    raise RuntimeError(f"batch inference benchmark failed: {report.failed}")
            log(f"batch round {i + 1}/{args['volume_repeats']}")
    return {"cases": args["batch_cases"], "shape": list(args["volume_shape"]), **{mode: _median(t) for mode, t in times.items()}}


def measure_metrics(args: Dict[str, Any]) -> Dict[str, Any]:
    """Seconds for Dice + HD95 of 8 organs on one volume of ``volume_shape`` (synthetic blobs)."""
    import numpy as np

    from balr_sam.metrics import compute_case_metrics

    x, y, z = args["volume_shape"]
    gt = np.zeros((x, y, z), dtype=np.uint8)
    for k in range(1, 9):
        cx, cy = int(x * (0.15 + 0.08 * k)), int(y * (0.2 + 0.07 * k))
        r = max(2, x // 16)
        gt[max(cx - r, 0) : cx + r, max(cy - r, 0) : cy + r, z // 4 : 3 * z // 4] = k
    pred = np.roll(gt, 2, axis=0)
    _sync(args["device"])
    start = time.perf_counter()
    compute_case_metrics(pred, gt, classes=list(range(1, 9)), spacing=(0.8, 0.8, 3.0), device=args["device"])
    _sync(args["device"])
    return {"seconds": time.perf_counter() - start, "shape": [x, y, z]}


def measure_attention_kernels(args: Dict[str, Any], log: Callable[[str], None]) -> Dict[str, Any]:
    """Merged BALR-SAM encoder forward and unmerged training forward+backward, SAM attention vs SDPA (interleaved)."""
    device = args["device"]
    model = build_config("balr_sam", args["variant"], args["img_size"], args["num_classes"], device)
    x = torch.rand(args["batch"], 3, args["img_size"], args["img_size"]).to(device)
    res: Dict[str, List[float]] = {"infer_sam": [], "infer_sdpa": [], "train_sam": [], "train_sdpa": []}
    for i in range(args["warmup"] + args["steps"]):
        for kind in ("sam", "sdpa"):
            (use_sdpa_attention if kind == "sdpa" else use_sam_attention)(model.image_encoder)
            model.train()
            _sync(device)
            start = time.perf_counter()
            with _autocast(device, args["amp"]):
                out = model.image_encoder(x)
            out.float().square().mean().backward()
            _sync(device)
            t_train = time.perf_counter() - start
            model.eval()
            with torch.inference_mode():
                _sync(device)
                start = time.perf_counter()
                with _autocast(device, args["amp"]):
                    model.image_encoder(x)
                _sync(device)
                t_inf = time.perf_counter() - start
            if i >= args["warmup"]:
                res[f"train_{kind}"].append(t_train)
                res[f"infer_{kind}"].append(t_inf)
        log(f"attention kernels round {i + 1}/{args['warmup'] + args['steps']}")
    return {k: _median(v) for k, v in res.items()}


# ------------------------------------------------------------------------------------- driver
def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b is None or not b or (isinstance(a, float) and math.isnan(a)):
        return None
    return float(a) / float(b)


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
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr),
) -> Dict[str, Any]:
    """Run the whole benchmark and return its results (see :func:`format_table`).

    Args:
        fast_attention: ``off`` (SAM's attention everywhere), ``infer`` (SDPA for BALR-SAM
            inference: throughput, volume, FLOP/s) or ``all`` (also while training all configurations).
        volume_shape: ``X Y Z`` of the end-to-end CT volume (default 512x512x150 on CUDA,
            256x256x20 on CPU).
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
    args: Dict[str, Any] = {
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
    memory = {name: _memory_in_child(name, args) for name in TRAIN_CONFIGS}
    log("training step time")
    training = measure_training(args, log)
    log("decoder attention memory")
    decoder = measure_decoder_memory(args)
    log("inference throughput")
    inference = measure_inference(args, log)
    log("attention kernels: SAM vs SDPA")
    kernels = measure_attention_kernels(args, log)
    log("end-to-end volume")
    volume = measure_volume(args, log)
    log("batch inference: sequential vs read-ahead")
    batch_infer = measure_batch_inference(args, log)
    log("Dice + HD95")
    metrics = measure_metrics(args)
    log("encoder FLOP/s")
    flops = measure_encoder_flops(args)

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
            "vs_full_ft": _ratio(values.get("balr_sam"), values.get("full_ft")),
            "vs_samed": _ratio(values.get("balr_sam"), values.get("samed")),
            "vs_sam": _ratio(values.get("balr_sam"), values.get("sam")),
        }
        for metric, values in figures.items()
    }
    # rows with only a BALR-SAM figure are compared to the baselines' figures of the parent metric
    for metric in ("inference_slices_per_second_unmerged", "inference_slices_per_second_merged_sam_attention", "inference_slices_per_second_merged_sdpa"):
        v = figures[metric]["balr_sam"]
        ratios[metric] = {"vs_full_ft": _ratio(v, tp["full_ft"]), "vs_samed": _ratio(v, tp["samed"]), "vs_sam": _ratio(v, tp["sam"])}
    throughput_target = 3.0 if cuda else 0.9
    checks = {
        "train_time_vs_full_ft": ratios["train_step_seconds"]["vs_full_ft"],
        "train_time_vs_samed": ratios["train_step_seconds"]["vs_samed"],
        "train_memory_vs_full_ft": ratios["peak_train_memory_bytes"]["vs_full_ft"],
        "decoder_memory_vs_sam": ratios["decoder_attention_bytes"]["vs_sam"],
        "throughput_vs_sam": ratios["inference_slices_per_second"]["vs_sam"],
        "volume_seconds": figures["volume_seconds"]["balr_sam"],
        "metrics_seconds": metrics["seconds"],
    }
    targets = []
    for key, text, op, threshold, gpu_only in TARGETS:
        threshold = throughput_target if threshold is None else threshold
        value = checks[key]
        if gpu_only and (not cuda or (key == "volume_seconds" and tuple(args["volume_shape"]) != (512, 512, 150))):
            status = "not measured (GPU, 512x512x150 only)"
        elif value is None:
            status = "not measured"
        else:
            holds = value <= threshold if op == "<=" else value >= threshold if op == ">=" else value < threshold
            status = "holds" if holds else "does not hold"
        if key == "throughput_vs_sam":
            text = f"BALR-SAM merged inference throughput >= {throughput_target:g}x stock SAM ({'GPU' if cuda else 'CPU'})"
        targets.append({"key": key, "target": text, "value": value, "threshold": threshold, "status": status})
    return {
        "settings": args,
        "machine": _machine(device),
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
        "targets": targets,
    }


def _machine(device: str) -> Dict[str, Any]:
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


# ------------------------------------------------------------------------------------- output
def _fmt(metric: str, value: Any) -> str:
    if value is None:
        return "—"
    if metric.endswith("bytes"):
        return f"{value / 2**20:,.1f} MiB"
    if metric == "trainable_parameters":
        return f"{value:,}"
    if metric.endswith("seconds"):
        return f"{value * 1000:,.0f} ms" if value < 1 else f"{value:,.2f} s"
    return f"{value:,.2f}"


def _fr(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:.3f}x"


def format_table(result: Dict[str, Any]) -> str:
    """Markdown: the comparison table, the attention-kernel table and the targets."""
    s, fig, rat = result["settings"], result["figures"], result["ratios"]
    vol = "x".join(map(str, s["volume_shape"]))
    names = {
        "trainable_parameters": "trainable parameters",
        "train_step_seconds": f"training step (median of {s['steps']}, batch {s['batch']})",
        "peak_train_memory_bytes": "peak training memory (" + ("CUDA max allocated" if s["device"].startswith("cuda") else "child peak RSS") + ")",
        "train_memory_above_model_bytes": "training memory above the built model",
        "decoder_attention_bytes": f"decoder attention memory (saved for backward, batch {s['batch']})",
        "inference_slices_per_second": "inference throughput (slices/s; BALR-SAM merged" + (" + SDPA)" if s["fast_attention"] != "off" else ")"),
        "inference_slices_per_second_unmerged": "inference throughput, BALR-SAM adapters unmerged",
        "inference_slices_per_second_merged_sam_attention": "inference throughput, BALR-SAM merged, SAM attention",
        "inference_slices_per_second_merged_sdpa": "inference throughput, BALR-SAM merged, SDPA attention",
        "volume_seconds": f"one {vol} CT volume end to end" + ("" if tuple(s["volume_shape"]) == (512, 512, 150) else " (smaller than 512x512x150)"),
    }
    order = ("sam", "full_ft", "samed", "balr_sam")
    lines = [
        f"balr-sam benchmark: {s['variant']} at {s['img_size']} px, batch {s['batch']}, {s['num_classes']} classes, device {s['device']}"
        + (", bf16 autocast" if s["amp"] else ", fp32")
        + (", torch.compile" if s["compile"] else "")
        + f", fast attention: {s['fast_attention']}; {result['machine'].get('gpu') or result['machine'].get('cpu')}, {result['machine']['threads']} threads",
        "",
        "| " + " | ".join(TABLE_COLUMNS) + " |",
        "|---|" + "---:|" * (len(TABLE_COLUMNS) - 1),
    ]
    for metric, values in fig.items():
        cells = [names[metric]] + [_fmt(metric, values.get(n)) for n in order]
        r = rat[metric]
        cells += [_fr(r["vs_full_ft"]), _fr(r["vs_samed"]), _fr(r["vs_sam"])]
        lines.append("| " + " | ".join(cells) + " |")
    k = result["attention_kernels"]
    lines += [
        "",
        f"Encoder attention kernel (BALR-SAM encoder, batch {s['batch']}, median of {s['steps']}):",
        "",
        "| pass | SAM attention | SDPA attention | SDPA / SAM |",
        "|---|---:|---:|---:|",
        f"| inference forward | {_fmt('seconds', k['infer_sam'])} | {_fmt('seconds', k['infer_sdpa'])} | {_fr(_ratio(k['infer_sdpa'], k['infer_sam']))} |",
        f"| training forward + backward | {_fmt('seconds', k['train_sam'])} | {_fmt('seconds', k['train_sdpa'])} | {_fr(_ratio(k['train_sdpa'], k['train_sam']))} |",
    ]
    f = result["encoder_flops"]
    peak = f"{f['peak_tflops']:g} TFLOP/s peak, {100 * f['fraction_of_peak']:.1f} % of it" if f.get("fraction_of_peak") is not None else "device peak: n/a (CPU)" if not s["device"].startswith("cuda") else "device peak unknown (--peak-tflops)"
    lines += [
        "",
        f"Encoder: {f['flops_per_forward'] / 1e9:,.1f} GFLOP per forward (batch {s['infer_batch']}), achieved {f['achieved_tflops'] * 1000:,.1f} GFLOP/s ({peak}).",
        f"Dice + HD95, 8 organs, one {'x'.join(map(str, result['metrics']['shape']))} volume: {_fmt('seconds', result['metrics']['seconds'])}.",
    ]
    b = result["batch_inference"]
    lines += [
        "",
        f"Batch inference (`balr-sam infer`'s path: streamed segmenter, BALR-SAM merged), {b['cases']} volumes of {'x'.join(map(str, b['shape']))}:",
        "",
        "| reading | seconds | / sequential |",
        "|---|---:|---:|",
        f"| sequential | {_fmt('seconds', b['sequential'])} | 1.000x |",
        f"| next case read ahead (`--prefetch on`; `auto` on CUDA) | {_fmt('seconds', b['read_ahead'])} | {_fr(_ratio(b['read_ahead'], b['sequential']))} |",
        "",
        "| target | value | status |",
        "|---|---:|---|",
    ]
    for t in result["targets"]:
        v = t["value"]
        shown = "—" if v is None else (f"{v:.3f}x" if "vs" in t["key"] else _fmt("seconds", v))
        lines.append(f"| {t['target']} | {shown} | {t['status']} |")
    lines.append("")
    lines.append(f"Total benchmark time {result['seconds']:.0f} s.")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    from balr_sam.networks.variants import VARIANTS

    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--variant", default="vit_t", choices=sorted(VARIANTS), help="SAM variant (default vit_t)")
    parser.add_argument("--img-size", type=int, default=256, help="model input size (default 256)")
    parser.add_argument("--batch", type=int, default=2, help="training batch (default 2)")
    parser.add_argument("--num-classes", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations before each timing (default 2)")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per configuration (default 5)")
    parser.add_argument("--infer-iters", type=int, default=5, help="timed inference batches per configuration (default 5)")
    parser.add_argument("--infer-batch", type=int, default=None, help="inference batch (default: --batch)")
    parser.add_argument("--volume-shape", type=int, nargs=3, default=None, metavar=("X", "Y", "Z"), help="end-to-end CT volume (default 512 512 150 on CUDA, 256 256 20 on CPU)")
    parser.add_argument("--volume-repeats", type=int, default=1)
    parser.add_argument("--batch-cases", type=int, default=3, help="volumes in the batch-inference measurement (read-ahead vs sequential)")
    parser.add_argument("--memory-steps", type=int, default=2, help="training steps in each memory child (default 2)")
    parser.add_argument("--amp", dest="amp", action="store_true", default=None, help="bf16 autocast (default on CUDA)")
    parser.add_argument("--no-amp", dest="amp", action="store_false")
    parser.add_argument("--fast-attention", default="infer", choices=("off", "infer", "all"), help="SDPA encoder attention: off, for BALR-SAM inference (default), or also for training")
    parser.add_argument("--compile", action="store_true", help="torch.compile every model")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for the FLOP/s fraction (default: known GPUs)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--json", dest="json_file", default=None, help="also write the results as JSON to this file ('-' = stdout instead of the table)")


def run_from_args(args: argparse.Namespace) -> int:
    result = run_benchmark(
        device=args.device, variant=args.variant, img_size=args.img_size, batch=args.batch, num_classes=args.num_classes,
        warmup=args.warmup, steps=args.steps, infer_iters=args.infer_iters, infer_batch=args.infer_batch,
        volume_shape=args.volume_shape, volume_repeats=args.volume_repeats, batch_cases=args.batch_cases, memory_steps=args.memory_steps,
        amp=args.amp, fast_attention=args.fast_attention, compile=args.compile, peak_tflops=args.peak_tflops, threads=args.threads,
    )
    text = json.dumps(result, indent=2)
    if args.json_file == "-":
        print(text)
        return 0
    if args.json_file:
        Path(args.json_file).write_text(text + "\n")
    print(format_table(result))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m balr_sam.benchmark", description=__doc__.splitlines()[0])
    parser.add_argument("--child-memory", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-args", default=None, help=argparse.SUPPRESS)
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.child_memory:
        child_args = json.loads(args.child_args)
        print(json.dumps(child_train_memory(args.child_memory, child_args)))
        return 0
    return run_from_args(args)


if __name__ == "__main__":
    raise SystemExit(main())
