"""Low-rank tensor attention for SAM's mask decoder.

SAM's decoder attention (``segment_anything.modeling.transformer.Attention``) projects queries,
keys and values with three ``d_int x d`` matrices split into ``H`` heads of ``d_h = d_int / H``
channels. BALR-SAM represents the three projections *jointly* as one tensor and computes
attention in a reduced space (paper: "a low-rank tensor decomposition of the query, key, and
value matrices", 75 % less decoder memory). Our decomposition is a partial Tucker decomposition
of the stacked tensor ``T[m, h] = [W_m^h | b_m^h]`` (``m`` in {q, k, v}; ``3 x H x d_h x (d+1)``)
along its head-channel mode:

* a **head factor** ``U_h`` (``d_h x r_h``, orthonormal columns) per head, *shared by q, k and
  v*: the leading left singular vectors of the head's joint unfolding
  ``[W_q^h W_k^h W_v^h b_q^h b_k^h b_v^h]``;
* a **core** ``G[m, h] = U_h^T [W_m^h | b_m^h]`` (``3 x H x r_h x (d+1)``), the trainable
  reduced projections.

Because ``U_h`` is shared and orthonormal, ``(U_h q~)^T (U_h k~) = q~^T k~``: scores and
attention-weighted values are computed on the ``r_h``-dimensional reduced vectors
``q~ = G[q, h] [x; 1]`` and ``U_h`` is folded into the output projection (``W_o^h U_h``). Only
``H * r_h`` channels of Q, K and V are ever materialised (``r_h = d_h / 4`` by default: a 75 %
cut), and attention runs through :func:`torch.nn.functional.scaled_dot_product_attention`,
whose fused kernels keep no ``N_q x N_k`` probability matrix for backward. At full rank
(``r_h = d_h``) the module reproduces SAM's attention to float tolerance, and the initial
approximation error shrinks monotonically as ``r_h`` grows (nested subspaces). The input mode
is left at full rank on purpose: a factor there would save no activation memory and, for SAM's
decoder sizes, would need more parameters than the reduced projections themselves.
"""

from __future__ import annotations

import math
from typing import Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LowRankTensorAttention", "rank_from_ratio", "convert_decoder_attention", "attention_approximation_error"]


def rank_from_ratio(dim: int, ratio: float) -> int:
    """``round(ratio * dim)`` clipped to ``[1, dim]``."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"rank ratio must be in (0, 1], got {ratio}")
    return max(1, min(dim, int(round(ratio * dim))))


class LowRankTensorAttention(nn.Module):
    """Multi-head attention with jointly factorised Q/K/V projections, computed in a reduced space.

    Args:
        embedding_dim: ``d``, channels of the inputs and of the output.
        internal_dim: ``d_int = H * d_h`` of the attention being represented (SAM: ``d / downsample_rate``).
        num_heads: ``H``.
        head_rank: ``r_h``, reduced channels per head (``1 <= r_h <= d_h``).

    Shapes: ``q`` ``(B, N_q, d)``, ``k`` and ``v`` ``(B, N_k, d)`` -> ``(B, N_q, d)``.
    """

    def __init__(self, embedding_dim: int, internal_dim: int, num_heads: int, head_rank: int) -> None:
        super().__init__()
        if internal_dim % num_heads:
            raise ValueError("num_heads must divide internal_dim")
        self.embedding_dim = embedding_dim
        self.internal_dim = internal_dim
        self.num_heads = num_heads
        self.head_dim = internal_dim // num_heads
        if not 1 <= head_rank <= self.head_dim:
            raise ValueError(f"head_rank must be in [1, {self.head_dim}], got {head_rank}")
        self.head_rank = head_rank
        # SAM scales scores by its own head dimension; kept so that full rank is exact.
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.core = nn.Parameter(torch.empty(3, num_heads, head_rank, embedding_dim))
        self.core_bias = nn.Parameter(torch.zeros(3, num_heads, head_rank))
        self.out_proj = nn.Linear(num_heads * head_rank, embedding_dim)
        nn.init.normal_(self.core, std=1.0 / math.sqrt(embedding_dim))

    @classmethod
    def from_attention(cls, attention: nn.Module, head_rank: int) -> "LowRankTensorAttention":
        """Initialise from a ``segment_anything`` decoder ``Attention`` by truncated decomposition (see module doc)."""
        d, d_int, heads = attention.embedding_dim, attention.internal_dim, attention.num_heads
        d_h = d_int // heads
        module = cls(d, d_int, heads, head_rank).to(attention.q_proj.weight.device)
        with torch.no_grad():
            projections = (attention.q_proj, attention.k_proj, attention.v_proj)
            weights = torch.stack([p.weight.double() for p in projections]).view(3, heads, d_h, d)
            biases = torch.stack([p.bias.double() for p in projections]).view(3, heads, d_h, 1)
            stacked = torch.cat([weights, biases], dim=-1)  # 3 x H x d_h x (d + 1)
            unfold = stacked.permute(1, 2, 0, 3).reshape(heads, d_h, 3 * (d + 1))  # per head: d_h x 3(d+1)
            u, _, _ = torch.linalg.svd(unfold, full_matrices=False)
            u = u[:, :, :head_rank]  # H x d_h x r_h
            core = torch.einsum("hdr,mhde->mhre", u, stacked)
            module.core.copy_(core[..., :d])
            module.core_bias.copy_(core[..., d])
            w_out = attention.out_proj.weight.double().view(d, heads, d_h)
            module.out_proj.weight.copy_(torch.einsum("ohd,hdr->ohr", w_out, u).reshape(d, heads * head_rank))
            module.out_proj.bias.copy_(attention.out_proj.bias)
        return module

    def _project(self, x: torch.Tensor, m: int) -> torch.Tensor:
        """``(B, N, d)`` -> reduced heads ``(B, H, N, r_h)`` for projection ``m`` (0 q, 1 k, 2 v)."""
        b, n, _ = x.shape
        y = F.linear(x, self.core[m].reshape(-1, self.embedding_dim), self.core_bias[m].reshape(-1))
        return y.view(b, n, self.num_heads, self.head_rank).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = F.scaled_dot_product_attention(self._project(q, 0), self._project(k, 1), self._project(v, 2), scale=self.scale)
        b, _, n, _ = out.shape  # B x H x N_q x r_h
        return self.out_proj(out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_rank))

    def extra_repr(self) -> str:
        return f"d={self.embedding_dim}, heads={self.num_heads}, head_dim={self.head_dim}, head_rank={self.head_rank}"


def _decoder_attentions(transformer: nn.Module) -> Iterator[Tuple[nn.Module, str, nn.Module]]:
    """Yield ``(parent, attribute, attention)`` for every SAM ``Attention`` in a two-way transformer."""
    from segment_anything.modeling.transformer import Attention

    for parent in transformer.modules():
        for name, child in parent.named_children():
            if isinstance(child, Attention):
                yield parent, name, child


def convert_decoder_attention(transformer: nn.Module, rank_ratio: float) -> int:
    """Replace every attention of SAM's ``TwoWayTransformer`` by a :class:`LowRankTensorAttention`.

    Args:
        transformer: ``mask_decoder.transformer`` (token self-attention, token-to-image,
            image-to-token and the final token-to-image attention).
        rank_ratio: ``r_h / d_h`` per head (1.0 = full rank, exact).

    Returns:
        The number of attentions replaced.
    """
    replaced = list(_decoder_attentions(transformer))
    for parent, name, attention in replaced:
        head_dim = attention.internal_dim // attention.num_heads
        low_rank = LowRankTensorAttention.from_attention(attention, head_rank=rank_from_ratio(head_dim, rank_ratio))
        setattr(parent, name, low_rank)
    return len(replaced)


def attention_approximation_error(
    reference: nn.Module, low_rank: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: Optional[float] = 1e-12
) -> float:
    """Relative Frobenius error ``|A_lr(q,k,v) - A(q,k,v)| / |A(q,k,v)|`` of a converted attention."""
    with torch.no_grad():
        ref = reference(q=q, k=k, v=v)
        out = low_rank(q=q, k=k, v=v)
    return float((out - ref).norm() / (ref.norm() + eps))
