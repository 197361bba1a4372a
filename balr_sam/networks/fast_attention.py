"""SAM's image-encoder attention on :func:`torch.nn.functional.scaled_dot_product_attention`.

``segment_anything``'s :class:`~segment_anything.modeling.image_encoder.Attention` materialises
``softmax(q k^T * scale + rel_pos)`` itself. :class:`SDPAAttention` computes the same function
with PyTorch's fused SDPA kernel: SAM's decomposed relative-position term (``add_decomposed_rel_pos``:
``rel_h[..., :, None] + rel_w[..., None, :]``, both computed from the *unscaled* queries) is passed
as an additive float ``attn_mask``; SDPA's default scale ``1/sqrt(head_dim)`` is SAM's ``scale``.

It is a subclass with no new parameters, so checkpoints (Meta's or BALR-SAM's, adapters
included) load unchanged, and :func:`use_sdpa_attention` swaps it into an existing encoder in
place by changing the class of each block's ``attn`` (no weights are copied).
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, get_rel_pos
from torch import nn

__all__ = ["SDPAAttention", "decomposed_rel_pos_bias", "use_sdpa_attention", "use_sam_attention"]


def decomposed_rel_pos_bias(
    q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, q_size: Tuple[int, int], k_size: Tuple[int, int]
) -> torch.Tensor:
    """SAM's decomposed relative-position term as an additive mask ``(B, q_h*q_w, k_h*k_w)``.

    ``q`` is ``(B, q_h*q_w, C)`` (unscaled queries, ``B`` = batch x heads), as in
    ``segment_anything.modeling.image_encoder.add_decomposed_rel_pos``.
    """
    q_h, q_w = q_size
    k_h, k_w = k_size
    rh = get_rel_pos(q_h, k_h, rel_pos_h)
    rw = get_rel_pos(q_w, k_w, rel_pos_w)
    b, _, dim = q.shape
    r_q = q.reshape(b, q_h, q_w, dim)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rh)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rw)
    return (rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).reshape(b, q_h * q_w, k_h * k_w)


class SDPAAttention(Attention):
    """Drop-in replacement of SAM's encoder :class:`Attention` computed with fused SDPA.

    Same constructor, same parameters (``qkv``, ``proj``, ``rel_pos_h``, ``rel_pos_w``), same
    function: ``(B, H, W, C) -> (B, H, W, C)``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        n = h * w
        # (3, B, heads, N, head_dim)
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        mask = None
        if self.use_rel_pos:
            bias = decomposed_rel_pos_bias(q.reshape(b * self.num_heads, n, -1), self.rel_pos_h, self.rel_pos_w, (h, w), (h, w))
            mask = bias.view(b, self.num_heads, n, n).to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        out = out.view(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
        return self.proj(out)


def _swap(encoder: nn.Module, cls: type) -> int:
    count = 0
    for module in encoder.modules():
        if type(module) is not cls and type(module) in (Attention, SDPAAttention):
            module.__class__ = cls
            count += 1
    return count


def use_sdpa_attention(encoder: nn.Module) -> int:
    """Make every SAM encoder attention in ``encoder`` (or a whole model) an :class:`SDPAAttention`.

    In place, parameters untouched; returns how many modules were switched.
    """
    return _swap(encoder, SDPAAttention)


def use_sam_attention(encoder: nn.Module) -> int:
    """Undo :func:`use_sdpa_attention` (back to ``segment_anything``'s own attention)."""
    return _swap(encoder, Attention)
