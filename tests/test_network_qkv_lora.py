"""SAMed-style LoRA on the q and v slices of the fused ``attn.qkv`` (``balr_sam.networks.qkv_lora``)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from balr_sam.networks.adapters import LoRALinear, merge_adapters, unmerge_adapters
from balr_sam.networks.qkv_lora import QVLoRALinear, inject_qv_lora
from balr_sam.networks.variants import build_sam


def _random_b(module: nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, QVLoRALinear):
                m.lora_B_q.copy_(torch.randn(m.lora_B_q.shape, generator=generator) * 0.1)
                m.lora_B_v.copy_(torch.randn(m.lora_B_v.shape, generator=generator) * 0.1)


def test_update_touches_only_q_and_v_and_merges_exactly() -> None:
    torch.manual_seed(0)
    dim, rank = 16, 3
    base = nn.Linear(dim, 3 * dim)
    x = torch.randn(5, dim)
    expected = base(x)
    lora = QVLoRALinear.from_linear(base, rank=rank, alpha=6.0)
    assert isinstance(lora, LoRALinear) and lora.weight is base.weight and not lora.weight.requires_grad
    assert {n for n, p in lora.named_parameters() if p.requires_grad} == {"lora_A", "lora_B_q", "lora_B_v"}
    assert sum(p.numel() for p in lora.parameters() if p.requires_grad) == 4 * rank * dim  # SAMed's count
    torch.testing.assert_close(lora(x), expected)  # B = 0 at initialisation
    _random_b(lora)
    adapted = lora(x)
    a_q, a_v = lora.lora_A[:rank], lora.lora_A[rank:]
    scaling = 6.0 / rank
    torch.testing.assert_close(adapted[:, :dim], expected[:, :dim] + scaling * x @ (lora.lora_B_q @ a_q).t())
    torch.testing.assert_close(adapted[:, dim : 2 * dim], expected[:, dim : 2 * dim])  # k untouched
    torch.testing.assert_close(adapted[:, 2 * dim :], expected[:, 2 * dim :] + scaling * x @ (lora.lora_B_v @ a_v).t())
    weight = base.weight.detach().clone()
    lora.merge()
    torch.testing.assert_close(lora(x), adapted, atol=1e-5, rtol=0)
    lora.unmerge()
    torch.testing.assert_close(lora.weight, weight)
    torch.testing.assert_close(lora(x), adapted, atol=1e-5, rtol=0)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="rank"):
        QVLoRALinear(8, 24, rank=0)
    with pytest.raises(ValueError, match="3 x dim"):
        QVLoRALinear(8, 20, rank=2)


def test_injected_encoder_starts_as_sam_and_merges_to_the_same_function() -> None:
    torch.manual_seed(0)
    encoder = build_sam("vit_t", img_size=64).image_encoder.eval()
    plain = copy.deepcopy(encoder)
    keys_before = set(encoder.state_dict())
    replaced = inject_qv_lora(encoder, rank=4)
    assert replaced == [f"blocks.{i}.attn.qkv" for i in range(len(encoder.blocks))]
    # the frozen weights keep their official names; only the adapter factors are new
    assert set(encoder.state_dict()) - keys_before == {f"{name}.lora_{p}" for name in replaced for p in ("A", "B_q", "B_v")}
    assert keys_before <= set(encoder.state_dict())
    assert inject_qv_lora(encoder) == []  # already adapted: nothing replaced twice
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(encoder(x), plain(x))  # zero-initialised B: the un-adapted network
        _random_b(encoder)
        weights = {k: v.clone() for k, v in encoder.state_dict().items()}
        unmerged = encoder(x)
        assert not torch.allclose(unmerged, plain(x), atol=1e-4)
        assert merge_adapters(encoder) == len(encoder.blocks)
        torch.testing.assert_close(encoder(x), unmerged, atol=1e-4, rtol=1e-4)
        assert unmerge_adapters(encoder) == len(encoder.blocks)
    for key, value in encoder.state_dict().items():
        torch.testing.assert_close(value, weights[key], atol=1e-6, rtol=0, msg=key)


def test_injection_refuses_a_qkv_that_is_not_a_plain_linear() -> None:
    encoder = build_sam("vit_t", img_size=64).image_encoder
    encoder.blocks[0].attn.qkv = LoRALinear.from_linear(encoder.blocks[0].attn.qkv, rank=2)
    with pytest.raises(TypeError, match="blocks.0.attn.qkv"):
        inject_qv_lora(encoder)
