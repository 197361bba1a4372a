"""Prompt-free, multi-class mask decoder built from SAM's pretrained ``MaskDecoder``.

SAM's decoder predicts masks for prompt tokens. BALR-SAM is prompt-free: the sparse prompt
embedding is empty, the dense one is SAM's learned no-mask embedding, and the decoder carries
one mask token (and one hypernetwork MLP) per class, background included, so that one forward
pass returns one logit map per class. When the class count equals SAM's number of mask tokens
(4) the pretrained tokens and MLPs are kept; otherwise they are freshly initialised, as SAMed
does. SAM's IoU token is kept (it takes part in the token self-attention, so dropping it would
change every output), its IoU prediction head is not (nothing is trained against it).
"""

from __future__ import annotations

from typing import List

import torch
from segment_anything.modeling.mask_decoder import MLP, MaskDecoder
from torch import nn

from balr_sam.networks.lowrank_attention import convert_decoder_attention

__all__ = ["PromptFreeMaskDecoder"]


class PromptFreeMaskDecoder(nn.Module):
    """SAM's two-way transformer decoder with one output per class and no prompts.

    Args:
        sam_decoder: a (pretrained) ``segment_anything`` :class:`MaskDecoder`; its modules are reused.
        num_classes: ``K``, output channels (background included).
        low_rank_attention: replace every decoder attention by low-rank tensor attention.
        rank_ratio: per-head rank of the low-rank attention as a fraction of the head size (see
            :func:`balr_sam.networks.lowrank_attention.convert_decoder_attention`).
    """

    def __init__(self, sam_decoder: MaskDecoder, num_classes: int, low_rank_attention: bool = True, rank_ratio: float = 0.25) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        dim = sam_decoder.transformer_dim
        self.num_classes = num_classes
        self.transformer_dim = dim
        self.transformer = sam_decoder.transformer
        if low_rank_attention:
            convert_decoder_attention(self.transformer, rank_ratio)
        self.iou_token = sam_decoder.iou_token
        self.output_upscaling = sam_decoder.output_upscaling
        if num_classes == sam_decoder.num_mask_tokens:
            self.mask_tokens = sam_decoder.mask_tokens
            self.output_hypernetworks_mlps = sam_decoder.output_hypernetworks_mlps
        else:
            device = sam_decoder.mask_tokens.weight.device
            self.mask_tokens = nn.Embedding(num_classes, dim, device=device)
            self.output_hypernetworks_mlps = nn.ModuleList(MLP(dim, dim, dim // 8, 3).to(device) for _ in range(num_classes))

    def forward(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, dense_embedding: torch.Tensor) -> torch.Tensor:
        """Predict per-class logits.

        Args:
            image_embeddings: ``(B, C, h, w)`` image-encoder output (plus CDEN features).
            image_pe: ``(1, C, h, w)`` positional encoding (``PromptEncoder.get_dense_pe()``).
            dense_embedding: ``(1, C, 1, 1)`` or ``(B, C, h, w)`` no-mask embedding.

        Returns:
            ``(B, K, 4h, 4w)`` logits.
        """
        b, c, h, w = image_embeddings.shape
        tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = tokens.unsqueeze(0).expand(b, -1, -1)
        src = image_embeddings + dense_embedding
        pos_src = image_pe.expand(b, -1, -1, -1)
        hs, src = self.transformer(src, pos_src, tokens)
        mask_tokens_out = hs[:, 1 : 1 + self.num_classes, :]
        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper_in: List[torch.Tensor] = [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)]
        hyper = torch.stack(hyper_in, dim=1)  # B x K x C/8
        b, c8, uh, uw = upscaled.shape
        return (hyper @ upscaled.view(b, c8, uh * uw)).view(b, -1, uh, uw)
