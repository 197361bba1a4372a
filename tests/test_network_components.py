"""Adapters, CDEN and low-rank tensor attention in isolation."""

from __future__ import annotations

import pytest
import torch
from segment_anything.modeling.transformer import Attention
from torch import nn

from balr_sam.networks.adapters import LoRALinear, inject_adapters
from balr_sam.networks.bases import get_base
from balr_sam.networks.cden import CDEN
from balr_sam.networks.lowrank_attention import LowRankTensorAttention, attention_approximation_error
from balr_sam.networks.variants import build_sam


def test_lora_linear_starts_as_the_base_layer_and_merges_exactly() -> None:
    torch.manual_seed(0)
    base = nn.Linear(32, 24)
    x = torch.randn(5, 32)
    expected = base(x)
    lora = LoRALinear.from_linear(base, rank=4)
    assert lora.weight is base.weight and not lora.weight.requires_grad
    torch.testing.assert_close(lora(x), expected)  # B = 0 at initialisation
    with torch.no_grad():
        lora.lora_B.normal_()
    adapted = lora(x)
    torch.testing.assert_close(adapted, expected + x @ (lora.lora_B @ lora.lora_A).t())
    lora.merge()
    torch.testing.assert_close(lora(x), adapted, atol=1e-5, rtol=0)
    lora.unmerge()
    torch.testing.assert_close(lora.weight, base.weight)
    torch.testing.assert_close(lora(x), adapted, atol=1e-5, rtol=0)


def test_adapters_go_after_attention_and_into_the_mlp_residual_path_of_every_block() -> None:
    encoder = build_sam("vit_t").image_encoder
    keys_before = set(encoder.state_dict())
    replaced = inject_adapters(encoder, targets=get_base("vit_t").adapter_targets, rank=2)
    assert replaced == [f"blocks.{i}.{t}" for i in range(len(encoder.blocks)) for t in ("attn.proj", "mlp.lin2")]
    added = set(encoder.state_dict()) - keys_before
    # the frozen weights keep their official names; only adapter factors are new
    assert keys_before <= set(encoder.state_dict())
    assert added == {f"{name}.lora_{ab}" for name in replaced for ab in "AB"}


def test_cden_shape_size_and_zero_start() -> None:
    cden = CDEN(out_channels=256, width=48)
    n_params = sum(p.numel() for p in cden.parameters())
    assert 1_000_000 <= n_params <= 2_000_000
    x = torch.randn(2, 3, 256, 192)
    out = cden(x)
    assert out.shape == (2, 256, 16, 12)
    assert torch.count_nonzero(out) == 0  # the untrained model equals SAM
    with torch.no_grad():
        nn.init.normal_(cden.out_proj.weight)
    assert cden(x).abs().sum() > 0


@pytest.mark.parametrize("stride", [8, 4])
def test_cden_follows_the_embedding_stride_of_its_base(stride: int) -> None:
    """Below stride 16 (LiteMedSAM: 4) top-down steps bring the features to the embedding's grid."""
    cden = CDEN(out_channels=256, width=48, stride=stride)
    assert 1_000_000 <= sum(p.numel() for p in cden.parameters()) <= 2_000_000
    x = torch.randn(2, 3, 128, 96)
    assert cden(x).shape == (2, 256, 128 // stride, 96 // stride) and not cden(x).any()
    with torch.no_grad():
        nn.init.normal_(cden.out_proj.weight)
    assert cden(x).abs().sum() > 0
    with pytest.raises(ValueError, match="stride"):
        CDEN(stride=2)


def test_cden_boundary_path_responds_to_edges() -> None:
    """The fixed high-pass filters are zero on flat images and non-zero at edges."""
    cden = CDEN(out_channels=32, width=8)
    flat = torch.full((1, 3, 32, 32), 0.3)
    assert cden.boundary_filters(flat).abs().max() < 1e-6
    step = flat.clone()
    step[..., 16:] = 0.9
    edges = cden.boundary_filters(step)
    assert edges[0, 0, :, 15:17].min() > 0.1 and edges[0, 0, :, :10].abs().max() < 1e-6


def _sam_attention(embedding_dim: int = 64, heads: int = 4, downsample: int = 2, seed: int = 0) -> Attention:
    torch.manual_seed(seed)
    return Attention(embedding_dim, heads, downsample_rate=downsample)


@pytest.mark.parametrize("downsample", [1, 2])
def test_full_rank_tensor_attention_equals_sam_attention(downsample: int) -> None:
    attention = _sam_attention(downsample=downsample)
    head_dim = attention.internal_dim // attention.num_heads
    low_rank = LowRankTensorAttention.from_attention(attention, head_rank=head_dim)
    q, k = torch.randn(2, 7, 64), torch.randn(2, 50, 64)
    v = k + torch.randn_like(k)
    torch.testing.assert_close(low_rank(q=q, k=k, v=v), attention(q=q, k=k, v=v), atol=1e-5, rtol=1e-5)


def _projection_error(attention: Attention, low_rank: LowRankTensorAttention) -> float:
    """Relative error of the initialised cores as a reconstruction of SAM's stacked Q/K/V tensor.

    The core is ``U^T T`` with orthonormal ``U``, so ``|T - U U^T T|^2 = |T|^2 - |core|^2``.
    """
    full = torch.cat([torch.cat([p.weight, p.bias[:, None]], 1) for p in (attention.q_proj, attention.k_proj, attention.v_proj)]).detach()
    core = torch.cat([low_rank.core, low_rank.core_bias[..., None]], -1).detach()
    return float((full.double().norm() ** 2 - core.double().norm() ** 2).clamp(min=0).sqrt() / full.double().norm())


def test_approximation_error_falls_as_rank_grows() -> None:
    attention = _sam_attention(embedding_dim=128, heads=4, downsample=1)  # head_dim 32
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 9, 128, generator=gen), torch.randn(2, 64, 128, generator=gen)
    ranks = (1, 2, 4, 8, 16, 24, 32)
    modules = [LowRankTensorAttention.from_attention(attention, r) for r in ranks]
    tensor_errors = [_projection_error(attention, m) for m in modules]
    output_errors = [attention_approximation_error(attention, m, q, k, k) for m in modules]
    # the truncated decomposition of the Q/K/V tensor improves strictly with every added rank
    assert all(a > b for a, b in zip(tensor_errors, tensor_errors[1:])), tensor_errors
    assert tensor_errors[-1] < 1e-4  # float32 cores: sqrt of a difference of squares
    # and so does the attention output, from the default rank (head_dim / 4) upwards
    assert all(a > b for a, b in zip(output_errors[2:], output_errors[3:])), output_errors
    assert output_errors[-1] < 1e-5 and output_errors[2] > 0.1


def test_reduced_space_holds_a_quarter_of_the_channels_by_default() -> None:
    from balr_sam.networks.lowrank_attention import convert_decoder_attention

    transformer = build_sam("vit_s").mask_decoder.transformer
    assert convert_decoder_attention(transformer, rank_ratio=0.25) == 7  # 2 x (self, t2i, i2t) + final t2i
    for module in transformer.modules():
        if isinstance(module, LowRankTensorAttention):
            assert module.head_rank * 4 == module.head_dim
