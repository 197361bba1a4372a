"""``balr-sam benchmark`` runs end to end with the smallest settings; checks structure, not speed."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from balr_sam.benchmark.baselines import TRAIN_CONFIGS, build_config, inference_form
from balr_sam.benchmark.table import TABLE_COLUMNS, format_table
from balr_sam.benchmark.volume import segment_file, volume_segmenter, write_synthetic_ct
from balr_sam.cli import main
from balr_sam.networks.qkv_lora import QVLoRALinear
from balr_sam.networks.report import parameter_report


def _reject_non_finite(token: str) -> None:
    raise ValueError(f"not strict JSON: {token}")


def test_configurations_trainable_sets() -> None:
    full = build_config("full_ft", "vit_t", 64, num_classes=3)
    samed = build_config("samed", "vit_t", 64, num_classes=3)
    balr = build_config("balr_sam", "vit_t", 64, num_classes=3)
    assert parameter_report(full)["trainable"] == sum(p.numel() for p in full.parameters())
    assert all(isinstance(b.attn.qkv, QVLoRALinear) for b in samed.image_encoder.blocks)
    for name, p in samed.named_parameters():
        if name.startswith("image_encoder."):
            assert p.requires_grad == (".lora_" in name), name
        else:
            assert p.requires_grad, name
    assert parameter_report(balr)["trainable"] < parameter_report(full)["trainable"]
    unadapted = copy.deepcopy(samed)
    for block in unadapted.image_encoder.blocks:
        lora = block.attn.qkv
        plain = nn.Linear(lora.in_features, lora.out_features)
        plain.weight, plain.bias = lora.weight, lora.bias
        block.attn.qkv = plain
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():  # zero-initialised LoRA: SAMed computes the un-adapted function
        out = samed(x)
        assert out.shape == (1, 3, 64, 64)
        assert torch.equal(out, unadapted(x))


def test_samed_inference_form_merges_its_lora() -> None:
    samed = build_config("samed", "vit_t", 64, num_classes=3)
    with torch.no_grad():
        for block in samed.image_encoder.blocks:
            block.attn.qkv.lora_B_q.normal_(std=0.1)
            block.attn.qkv.lora_B_v.normal_(std=0.1)
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        expected = samed.eval()(x)
        merged = inference_form(samed)
        assert all(b.attn.qkv.merged for b in merged.image_encoder.blocks)
        torch.testing.assert_close(merged(x), expected, atol=1e-4, rtol=1e-4)


def test_volume_figure_goes_through_the_products_segmenter(tmp_path: Path) -> None:
    """The timed path writes a label map in the input's exact grid, as ``balr-sam infer`` does."""
    source = write_synthetic_ct(tmp_path / "ct.nii.gz", (20, 18, 3))
    model = inference_form(build_config("balr_sam", "vit_t", 32, num_classes=3))
    settings = {"img_size": 32, "infer_batch": 2, "device": "cpu", "amp": False}
    labels = segment_file(volume_segmenter(model, settings), source, tmp_path / "out.nii.gz")
    written, original = nib.load(str(tmp_path / "out.nii.gz")), nib.load(str(source))
    assert labels.shape == written.shape == original.shape == (20, 18, 3)
    assert written.get_data_dtype() == np.uint8 and int(labels.max()) < 3
    np.testing.assert_allclose(written.affine, original.affine)
    np.testing.assert_array_equal(np.asarray(written.dataobj), labels)


def test_benchmark_smallest_settings(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "bench.json"
    argv = [
        "benchmark",
        "--variant",
        "vit_t",
        "--img-size",
        "32",
        "--batch",
        "1",
        "--num-classes",
        "3",
        "--warmup",
        "0",
        "--steps",
        "1",
        "--infer-iters",
        "1",
        "--volume-shape",
        "16",
        "16",
        "2",
        "--batch-cases",
        "2",
        "--memory-steps",
        "1",
        "--json",
        str(out),
        "--threads",
        str(torch.get_num_threads()),
    ]  # the current count: exercises the option, changes nothing
    assert main(argv) == 0
    table = capsys.readouterr().out
    header = "| " + " | ".join(TABLE_COLUMNS) + " |"
    assert header in table
    for row in (
        "trainable parameters",
        "training step",
        "peak training memory",
        "decoder attention memory",
        "inference throughput",
        "end to end",
        "smaller than 512x512x150",
        "`balr-sam infer`'s segmenter",
    ):
        assert row in table
    assert "| target | value | status |" in table
    result = json.loads(out.read_text(), parse_constant=_reject_non_finite)  # strict JSON: no NaN/Infinity
    assert format_table(result) in table
    figures, ratios = result["figures"], result["ratios"]
    for metric in (
        "trainable_parameters",
        "train_step_seconds",
        "peak_train_memory_bytes",
        "decoder_attention_bytes",
        "inference_slices_per_second",
        "volume_seconds",
    ):
        for name in TRAIN_CONFIGS:
            assert figures[metric][name] > 0, (metric, name)
        for key in ("vs_full_ft", "vs_samed"):
            r = ratios[metric][key]
            assert isinstance(r, float) and math.isfinite(r) and r > 0, (metric, key)
            assert r == pytest.approx(figures[metric]["balr_sam"] / figures[metric][key[3:]])
    assert ratios["inference_slices_per_second"]["vs_sam"] > 0
    assert ratios["decoder_attention_bytes"]["vs_sam"] > 0
    assert {t["key"] for t in result["targets"]} >= {
        "train_time_vs_full_ft",
        "train_time_vs_samed",
        "train_memory_vs_full_ft",
        "decoder_memory_vs_sam",
        "throughput_vs_sam",
    }
    assert all(t["status"] in ("holds", "does not hold") for t in result["targets"][:5])
    assert result["memory"]["balr_sam"]["kind"] == "peak RSS of the child process"
    assert result["encoder_flops"]["flops_per_forward"] > 0
    batch = result["batch_inference"]
    assert batch["cases"] == 2 and batch["sequential"] > 0 and batch["read_ahead"] > 0
    assert "| next case read ahead (`--prefetch on`" in table
