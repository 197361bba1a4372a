"""The configurations ``balr-sam benchmark`` compares, all on the same SAM variant and input size.

* ``full_ft``: MedSAM-style full fine-tuning: SAM with the prompt-free multi-class head
  (:class:`~balr_sam.networks.decoder.PromptFreeMaskDecoder`, full-rank attention), every
  parameter trainable;
* ``samed``: SAMed-style LoRA: rank-4 adapters on the q and v slices of every encoder block's
  fused ``attn.qkv`` (:class:`~balr_sam.networks.qkv_lora.QVLoRALinear`), the encoder frozen
  otherwise, prompt encoder and decoder trainable, full-rank decoder attention, no CDEN;
* ``balr_sam``: BALR-SAM as built by :func:`~balr_sam.networks.balr_sam.build_balr_sam`
  (adapters unmerged for training);
* ``sam`` (inference only): the stock ``segment_anything`` :class:`Sam` at the same size, run
  through its own ``forward`` (no prompts, multimask output).

For inference every trained configuration is put in its inference form (:func:`inference_form`:
``BALRSAM.fuse_for_inference``): BALR-SAM's and SAMed's adapters merged into the frozen weights
(zero extra cost, as ``peft``'s merge), CDEN's BatchNorms folded. All weights are random.
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch
from torch import nn

from balr_sam.networks.balr_sam import BALRSAM, build_balr_sam
from balr_sam.networks.fast_attention import use_sdpa_attention
from balr_sam.networks.qkv_lora import inject_qv_lora
from balr_sam.networks.variants import build_sam

__all__ = ["TRAIN_CONFIGS", "CONFIGS", "LABELS", "SAMED_RANK", "build_config", "inference_form", "stock_sam_forward"]

#: The trained configurations, in table order.
TRAIN_CONFIGS = ("full_ft", "samed", "balr_sam")
#: Every configuration, in table order (stock SAM is measured for inference only).
CONFIGS = ("sam", *TRAIN_CONFIGS)
#: Column names of the configurations in the benchmark table.
LABELS: Dict[str, str] = {"sam": "stock SAM", "full_ft": "full FT", "samed": "SAMed", "balr_sam": "BALR-SAM"}
#: SAMed's LoRA rank (on q and v).
SAMED_RANK = 4


def build_config(name: str, variant: str, img_size: int, num_classes: int = 9, device: str = "cpu", fast_attention: bool = False) -> nn.Module:
    """Build one configuration with random weights, its trainable set as described above.

    Args:
        name: ``sam``, ``full_ft``, ``samed`` or ``balr_sam``.
        variant: SAM variant (``vit_t`` ... ``vit_h``).
        img_size: model input size ``S``.
        num_classes: output classes, background included (not used by ``sam``).
        device: where to build the model.
        fast_attention: SDPA encoder attention instead of SAM's.

    Returns:
        a :class:`BALRSAM` (``B x 1|3 x H x W`` -> ``B x num_classes x H x W`` logits), or SAM's
        :class:`Sam` for ``sam``.

    Raises:
        ValueError: unknown ``name``.
    """
    dev = torch.device(device)
    if name == "sam":
        sam = build_sam(variant, img_size=img_size, device=dev)
        if fast_attention:
            use_sdpa_attention(sam.image_encoder)
        return sam
    if name == "balr_sam":
        return build_balr_sam(variant, num_classes=num_classes, img_size=img_size, device=dev, fast_attention=fast_attention)
    if name not in ("full_ft", "samed"):
        raise ValueError(f"unknown configuration {name!r}; expected one of {', '.join(CONFIGS)}")
    model = build_balr_sam(
        variant,
        num_classes=num_classes,
        img_size=img_size,
        device=dev,
        use_adapters=False,
        use_cden=False,
        use_lowrank_attention=False,
        fast_attention=fast_attention,
    )
    if name == "full_ft":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    inject_qv_lora(model.image_encoder, rank=SAMED_RANK)
    for pname, p in model.named_parameters():
        p.requires_grad_(".lora_" in pname or pname.startswith(("mask_decoder.", "prompt_encoder.")))
    return model


def inference_form(model: nn.Module) -> nn.Module:
    """``model`` in eval mode, adapters merged and CDEN's BatchNorms folded (``BALRSAM``); returns it."""
    if isinstance(model, BALRSAM):
        model.fuse_for_inference()
    return model.eval()


def stock_sam_forward(sam: nn.Module, images: torch.Tensor) -> List[Dict[str, Any]]:
    """Run SAM's own ``forward`` on ``B x 1 x S x S`` images in [0, 1] (no prompts, multimask output)."""
    size = images.shape[-1]
    return sam([{"image": img * 255.0, "original_size": (size, size)} for img in images.expand(-1, 3, -1, -1)], multimask_output=True)
