"""``balr-sam benchmark`` runs end to end with the smallest settings; checks structure, not speed."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from balr_sam.benchmark import TABLE_COLUMNS, TRAIN_CONFIGS, QVLoRA, build_config, format_table, trainable_parameters
from balr_sam.cli import main


def _reject_non_finite(token: str) -> None:
    raise ValueError(f"not strict JSON: {token}")


def test_configurations_trainable_sets() -> None:
    full = build_config("full_ft", "vit_t", 64, num_classes=3)
    samed = build_config("samed", "vit_t", 64, num_classes=3)
    balr = build_config("balr_sam", "vit_t", 64, num_classes=3)
    assert trainable_parameters(full) == sum(p.numel() for p in full.parameters())
    assert all(isinstance(b.attn.qkv, QVLoRA) for b in samed.image_encoder.blocks)
    for name, p in samed.named_parameters():
        if name.startswith("image_encoder."):
            assert p.requires_grad == (".lora_" in name), name
        else:
            assert p.requires_grad, name
    assert trainable_parameters(balr) < trainable_parameters(full)
    unadapted = copy.deepcopy(samed)
    for block in unadapted.image_encoder.blocks:
        block.attn.qkv = block.attn.qkv.base
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():  # zero-initialised LoRA: SAMed computes the un-adapted function
        out = samed(x)
        assert out.shape == (1, 3, 64, 64)
        assert torch.equal(out, unadapted(x))


def test_benchmark_smallest_settings(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "bench.json"
    argv = ["benchmark", "--variant", "vit_t", "--img-size", "32", "--batch", "1", "--num-classes", "3", "--warmup", "0", "--steps", "1",
            "--infer-iters", "1", "--volume-shape", "16", "16", "2", "--batch-cases", "2", "--memory-steps", "1", "--json", str(out),
            "--threads", str(torch.get_num_threads())]  # the current count: exercises the option, changes nothing
    assert main(argv) == 0
    table = capsys.readouterr().out
    header = "| " + " | ".join(TABLE_COLUMNS) + " |"
    assert header in table
    for row in ("trainable parameters", "training step", "peak training memory", "decoder attention memory", "inference throughput", "end to end", "smaller than 512x512x150"):
        assert row in table
    assert "| target | value | status |" in table
    result = json.loads(out.read_text(), parse_constant=_reject_non_finite)  # strict JSON: no NaN/Infinity
    assert format_table(result) in table
    figures, ratios = result["figures"], result["ratios"]
    for metric in ("trainable_parameters", "train_step_seconds", "peak_train_memory_bytes", "decoder_attention_bytes", "inference_slices_per_second", "volume_seconds"):
        for name in TRAIN_CONFIGS:
            assert figures[metric][name] > 0, (metric, name)
        for key in ("vs_full_ft", "vs_samed"):
            r = ratios[metric][key]
            assert isinstance(r, float) and math.isfinite(r) and r > 0, (metric, key)
            assert r == pytest.approx(figures[metric]["balr_sam"] / figures[metric][key[3:]])
    assert ratios["inference_slices_per_second"]["vs_sam"] > 0
    assert ratios["decoder_attention_bytes"]["vs_sam"] > 0
    assert {t["key"] for t in result["targets"]} >= {"train_time_vs_full_ft", "train_time_vs_samed", "train_memory_vs_full_ft", "decoder_memory_vs_sam", "throughput_vs_sam"}
    assert all(t["status"] in ("holds", "does not hold") for t in result["targets"][:5])
    assert result["memory"]["balr_sam"]["kind"] == "peak RSS of the child process"
    assert result["encoder_flops"]["flops_per_forward"] > 0
    batch = result["batch_inference"]
    assert batch["cases"] == 2 and batch["sequential"] > 0 and batch["read_ahead"] > 0
    assert "| next case read ahead (`--prefetch on`" in table
