"""The Markdown report of a benchmark run: the comparison table, the attention-kernel table,
encoder FLOP/s, metric time, batch inference and the targets (:func:`format_table`).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from balr_sam.benchmark.baselines import CONFIGS, LABELS
from balr_sam.benchmark.targets import FULL_VOLUME, ratio

__all__ = ["TABLE_COLUMNS", "format_table"]

#: Header of the comparison table: one column per configuration, then BALR-SAM's ratios.
TABLE_COLUMNS = ("metric", *(LABELS[name] for name in CONFIGS), "BALR-SAM / full FT", "BALR-SAM / SAMed", "BALR-SAM / stock SAM")


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


def _row_names(settings: Dict[str, Any]) -> Dict[str, str]:
    s = settings
    full = tuple(s["volume_shape"]) == FULL_VOLUME
    return {
        "trainable_parameters": "trainable parameters",
        "train_step_seconds": f"training step (median of {s['steps']}, batch {s['batch']})",
        "peak_train_memory_bytes": "peak training memory (" + ("CUDA max allocated" if s["device"].startswith("cuda") else "child peak RSS") + ")",
        "train_memory_above_model_bytes": "training memory above the built model",
        "decoder_attention_bytes": f"decoder attention memory (saved for backward, batch {s['batch']})",
        "inference_slices_per_second": "inference throughput (slices/s; BALR-SAM merged" + (" + SDPA)" if s["fast_attention"] != "off" else ")"),
        "inference_slices_per_second_unmerged": "inference throughput, BALR-SAM adapters unmerged",
        "inference_slices_per_second_merged_sam_attention": "inference throughput, BALR-SAM merged, SAM attention",
        "inference_slices_per_second_merged_sdpa": "inference throughput, BALR-SAM merged, SDPA attention",
        "volume_seconds": f"one {'x'.join(map(str, s['volume_shape']))} CT volume end to end (`balr-sam infer`'s segmenter"
        + (")" if full else ", smaller than 512x512x150)"),
    }


def format_table(result: Dict[str, Any]) -> str:
    """Markdown for a :func:`~balr_sam.benchmark.run.run_benchmark` result (also after a JSON round trip)."""
    s, fig, rat = result["settings"], result["figures"], result["ratios"]
    names = _row_names(s)
    machine = result["machine"]
    lines = [
        f"balr-sam benchmark: {s['variant']} at {s['img_size']} px, batch {s['batch']}, {s['num_classes']} classes, device {s['device']}"
        + (", bf16 autocast" if s["amp"] else ", fp32")
        + (", torch.compile" if s["compile"] else "")
        + f", fast attention: {s['fast_attention']}; {machine.get('gpu') or machine.get('cpu')}, {machine['threads']} threads",
        "",
        "| " + " | ".join(TABLE_COLUMNS) + " |",
        "|---|" + "---:|" * (len(TABLE_COLUMNS) - 1),
    ]
    for metric, values in fig.items():
        r = rat[metric]
        cells = [names[metric], *(_fmt(metric, values.get(n)) for n in CONFIGS), _fr(r["vs_full_ft"]), _fr(r["vs_samed"]), _fr(r["vs_sam"])]
        lines.append("| " + " | ".join(cells) + " |")
    k = result["attention_kernels"]
    lines += [
        "",
        f"Encoder attention kernel (BALR-SAM encoder, batch {s['batch']}, median of {s['steps']}):",
        "",
        "| pass | SAM attention | SDPA attention | SDPA / SAM |",
        "|---|---:|---:|---:|",
        f"| inference forward | {_fmt('seconds', k['infer_sam'])} | {_fmt('seconds', k['infer_sdpa'])} | {_fr(ratio(k['infer_sdpa'], k['infer_sam']))} |",
        f"| training forward + backward | {_fmt('seconds', k['train_sam'])} | {_fmt('seconds', k['train_sdpa'])} "
        f"| {_fr(ratio(k['train_sdpa'], k['train_sam']))} |",
    ]
    f = result["encoder_flops"]
    if f.get("fraction_of_peak") is not None:
        peak = f"{f['peak_tflops']:g} TFLOP/s peak, {100 * f['fraction_of_peak']:.1f} % of it"
    else:
        peak = "device peak: n/a (CPU)" if not s["device"].startswith("cuda") else "device peak unknown (--peak-tflops)"
    lines += [
        "",
        f"Encoder: {f['flops_per_forward'] / 1e9:,.1f} GFLOP per forward (batch {s['infer_batch']}), "
        f"achieved {f['achieved_tflops'] * 1000:,.1f} GFLOP/s ({peak}).",
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
        f"| next case read ahead (`--prefetch on`; `auto` on CUDA) | {_fmt('seconds', b['read_ahead'])} | {_fr(ratio(b['read_ahead'], b['sequential']))} |",
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
