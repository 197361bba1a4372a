"""SAM variants (ViT-B/L/H and small CPU variants) built from ``segment_anything``'s own classes.

``vit_b``, ``vit_l`` and ``vit_h`` have exactly the shapes of Meta's official checkpoints
(``sam_vit_b_01ec64.pth``, ``sam_vit_l_0b3195.pth``, ``sam_vit_h_4b8939.pth``). ``vit_t`` and
``vit_s`` are small variants of the same classes, with random weights only, for CPU tests and the
embedded demo. Every variant can be built at any input size that is a multiple of 16.
:mod:`balr_sam.networks.bases` describes them, with LiteMedSAM, as the bases BALR-SAM builds on.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, dataclass
from functools import partial
from typing import Dict, Optional, Tuple

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

__all__ = ["SamVariant", "VARIANTS", "SAM_IMG_SIZE", "PATCH_SIZE", "get_variant", "build_sam", "check_img_size"]

SAM_IMG_SIZE = 1024  # input size of Meta's official checkpoints
PATCH_SIZE = 16


@dataclass(frozen=True)
class SamVariant:
    """Architecture hyper-parameters of one SAM variant.

    Attributes:
        name: registry name.
        encoder_embed_dim, encoder_depth, encoder_num_heads: ViT width, depth and heads.
        encoder_global_attn_indexes: blocks with global (not windowed) attention.
        prompt_embed_dim: channels of the image embedding and width of the mask decoder.
        decoder_mlp_dim, decoder_num_heads: the decoder's two-way transformer sizes.
        window_size: windowed-attention size of the other encoder blocks.
        checkpoint_name: Meta's file name for the official weights, if any.
    """

    name: str
    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: Tuple[int, ...]
    prompt_embed_dim: int = 256
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    window_size: int = 14
    checkpoint_name: Optional[str] = None

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


VARIANTS: Dict[str, SamVariant] = {
    v.name: v
    for v in (
        SamVariant("vit_h", 1280, 32, 16, (7, 15, 23, 31), checkpoint_name="sam_vit_h_4b8939.pth"),
        SamVariant("vit_l", 1024, 24, 16, (5, 11, 17, 23), checkpoint_name="sam_vit_l_0b3195.pth"),
        SamVariant("vit_b", 768, 12, 12, (2, 5, 8, 11), checkpoint_name="sam_vit_b_01ec64.pth"),
        # Small variants of the same classes (random weights): CPU tests and the embedded demo.
        SamVariant("vit_s", 384, 6, 6, (2, 5), prompt_embed_dim=256, decoder_mlp_dim=1024),
        SamVariant("vit_t", 96, 4, 3, (1, 3), prompt_embed_dim=128, decoder_mlp_dim=512, window_size=8),
    )
}


def get_variant(name: str) -> SamVariant:
    """Return the variant called ``name`` (one of :data:`VARIANTS`)."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown SAM variant {name!r}; choose one of {sorted(VARIANTS)}") from None


def check_img_size(img_size: int) -> int:
    """Validate a model input size (a positive multiple of the 16-pixel patch size)."""
    if img_size <= 0 or img_size % PATCH_SIZE:
        raise ValueError(f"img_size must be a positive multiple of {PATCH_SIZE}, got {img_size}")
    return int(img_size)


def build_sam(
    variant: str,
    img_size: int = SAM_IMG_SIZE,
    device: Optional[torch.device] = None,
    encoder_device: Optional[torch.device] = None,
) -> Sam:
    """Build ``segment_anything``'s :class:`Sam` for ``variant`` at ``img_size``, randomly initialised.

    This mirrors ``segment_anything.build_sam._build_sam`` with the input size as a parameter, so the
    position embedding has ``(img_size/16)^2`` tokens and the global-attention blocks' relative
    position tables have ``2*img_size/16 - 1`` rows.

    Args:
        variant: a name in :data:`VARIANTS`.
        img_size: input size, a multiple of 16.
        device: where to allocate the weights (default: PyTorch's default device).
        encoder_device: where to allocate the image encoder, if not ``device``;
            ``torch.device("meta")`` skips allocating the (large, frozen) encoder, which is all
            that parameter counting needs.
    """
    spec = get_variant(variant)
    img_size = check_img_size(img_size)
    grid = img_size // PATCH_SIZE
    encoder_device = device if encoder_device is None else encoder_device
    with torch.device(encoder_device) if encoder_device is not None else nullcontext():
        image_encoder = ImageEncoderViT(
            depth=spec.encoder_depth,
            embed_dim=spec.encoder_embed_dim,
            img_size=img_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=spec.encoder_num_heads,
            patch_size=PATCH_SIZE,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=spec.encoder_global_attn_indexes,
            window_size=spec.window_size,
            out_chans=spec.prompt_embed_dim,
        )
    with torch.device(device) if device is not None else nullcontext():
        return Sam(
            image_encoder=image_encoder,
            prompt_encoder=PromptEncoder(
                embed_dim=spec.prompt_embed_dim,
                image_embedding_size=(grid, grid),
                input_image_size=(img_size, img_size),
                mask_in_chans=16,
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(
                    depth=2,
                    embedding_dim=spec.prompt_embed_dim,
                    mlp_dim=spec.decoder_mlp_dim,
                    num_heads=spec.decoder_num_heads,
                ),
                transformer_dim=spec.prompt_embed_dim,
                iou_head_depth=3,
                iou_head_hidden_dim=256,
            ),
            pixel_mean=[123.675, 116.28, 103.53],
            pixel_std=[58.395, 57.12, 57.375],
        )
