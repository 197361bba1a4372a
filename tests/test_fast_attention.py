"""SDPA encoder attention (``balr_sam.networks.fast_attention``) computes SAM's attention exactly."""

from __future__ import annotations

import pytest
import torch
from segment_anything.modeling.image_encoder import Attention

from balr_sam.networks import build_balr_sam, build_sam
from balr_sam.networks.fast_attention import SDPAAttention, use_sam_attention, use_sdpa_attention

TOL = 1e-5


def _random_rel_pos(module: torch.nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "rel_pos" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


@pytest.mark.parametrize("use_rel_pos", [True, False])
@pytest.mark.parametrize("hw", [(8, 8), (6, 10)])
def test_sdpa_attention_equals_sam_attention(use_rel_pos: bool, hw: tuple) -> None:
    torch.manual_seed(0)
    sam = Attention(dim=48, num_heads=3, qkv_bias=True, use_rel_pos=use_rel_pos, input_size=hw)
    _random_rel_pos(sam)
    fast = SDPAAttention(dim=48, num_heads=3, qkv_bias=True, use_rel_pos=use_rel_pos, input_size=hw)
    fast.load_state_dict(sam.state_dict())  # identical parameter names
    x = torch.randn(2, *hw, 48, generator=torch.Generator().manual_seed(1), requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    ref, out = sam(x), fast(x2)
    assert torch.allclose(out, ref, atol=TOL, rtol=0)
    # gradients (training) agree too
    ref.square().sum().backward()
    out.square().sum().backward()
    assert torch.allclose(x2.grad, x.grad, atol=1e-4, rtol=1e-5)
    for (n, a), (_, b) in zip(sam.named_parameters(), fast.named_parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-4, rtol=1e-4), n


def test_swapped_encoder_equals_sam_encoder_and_keeps_state_dict_keys() -> None:
    torch.manual_seed(0)
    encoder = build_sam("vit_t", img_size=128).image_encoder.eval()
    _random_rel_pos(encoder)
    keys = list(encoder.state_dict())
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = encoder(x)
        assert use_sdpa_attention(encoder) == len(encoder.blocks)
        assert all(type(b.attn) is SDPAAttention for b in encoder.blocks)
        out = encoder(x)
    assert list(encoder.state_dict()) == keys
    assert torch.allclose(out, ref, atol=TOL, rtol=0)
    assert use_sam_attention(encoder) == len(encoder.blocks)
    assert all(type(b.attn) is Attention for b in encoder.blocks)


def test_balr_sam_fast_attention_option() -> None:
    torch.manual_seed(0)
    slow = build_balr_sam("vit_t", num_classes=3, img_size=128).eval()
    _random_rel_pos(slow)
    fast = build_balr_sam("vit_t", num_classes=3, img_size=128, fast_attention=True).eval()
    fast.load_state_dict(slow.state_dict())
    assert fast.config.fast_attention and all(type(b.attn) is SDPAAttention for b in fast.image_encoder.blocks)
    x = torch.rand(1, 1, 128, 128, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(fast(x), slow(x), atol=1e-4, rtol=0)
