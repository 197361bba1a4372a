"""Parameter reports and the decoder attention memory measurement behind ``balr-sam summary``.

Attention memory is counted, not timed: every tensor that autograd saves for backward while an
attention module runs is recorded through :func:`torch.autograd.graph.saved_tensors_hooks`,
deduplicated by storage, excluding parameters and the module's own inputs (they exist whether or
not attention runs). Q/K/V activation bytes are ``(N_q + 2 N_k) x channels`` per attention call.
The count is deterministic for a given input size and PyTorch build.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Set, Tuple

import torch
from segment_anything.modeling.mask_decoder import MaskDecoder
from segment_anything.modeling.transformer import Attention, TwoWayTransformer
from torch import nn

from balr_sam.networks.balr_sam import BALRSAM
from balr_sam.networks.lowrank_attention import LowRankTensorAttention

__all__ = ["parameter_report", "AttentionMemory", "measure_attention_memory", "decoder_inputs", "decoder_attention_memory", "decoder_memory_comparison"]


def _count(params: Any) -> int:
    return sum(p.numel() for p in params)


def parameter_report(model: BALRSAM) -> Dict[str, Any]:
    """Total/trainable parameter counts, overall and per component.

    Returns:
        ``{"total", "trainable", "trainable_percent", "components": {name: {"total", "trainable"}}}``
        with components ``adapters``, ``cden``, ``mask_decoder``, ``image_encoder (frozen SAM)``
        and ``prompt_encoder (frozen SAM)``.
    """
    named = list(model.named_parameters())
    groups: Dict[str, List[nn.Parameter]] = {
        "adapters": [],
        "cden": [],
        "mask_decoder": [],
        "image_encoder (frozen SAM)": [],
        "prompt_encoder (frozen SAM)": [],
    }
    for name, param in named:
        if ".lora_" in name:
            groups["adapters"].append(param)
        elif name.startswith("cden."):
            groups["cden"].append(param)
        elif name.startswith("mask_decoder."):
            groups["mask_decoder"].append(param)
        elif name.startswith("image_encoder."):
            groups["image_encoder (frozen SAM)"].append(param)
        else:
            groups["prompt_encoder (frozen SAM)"].append(param)
    total = _count(p for _, p in named)
    trainable = _count(p for _, p in named if p.requires_grad)
    return {
        "total": total,
        "trainable": trainable,
        "trainable_percent": 100.0 * trainable / max(total, 1),
        "components": {k: {"total": _count(v), "trainable": _count(p for p in v if p.requires_grad)} for k, v in groups.items()},
    }


@dataclass
class AttentionMemory:
    """Bytes attributable to attention modules during one forward pass (``batch`` images)."""

    qkv_bytes: int
    saved_bytes: int
    calls: int

    def to_dict(self) -> Dict[str, int]:
        return {"qkv_bytes": self.qkv_bytes, "saved_bytes": self.saved_bytes, "calls": self.calls}


def _qkv_channels(module: nn.Module) -> int:
    if isinstance(module, LowRankTensorAttention):
        return module.num_heads * module.head_rank
    return module.internal_dim


def measure_attention_memory(
    model: nn.Module, run: Callable[[], Any], attention_types: Tuple[type, ...] = (Attention, LowRankTensorAttention)
) -> AttentionMemory:
    """Count Q/K/V activation bytes and saved-for-backward bytes inside attention modules.

    Args:
        model: the module holding the attentions (a decoder).
        run: a callable performing one forward pass of ``model`` with autograd recording.
        attention_types: the module classes counted as attention.
    """
    param_ptrs: Set[int] = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: Set[int] = set()
    state: Dict[str, Any] = {"saved": 0, "qkv": 0, "calls": 0, "inputs": set(), "ctx": None}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in seen and ptr not in param_ptrs and ptr not in state["inputs"]:
            seen.add(ptr)
            state["saved"] += storage.nbytes()
        return t

    def pre_hook(module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
        q, k, v = (kwargs[n] for n in ("q", "k", "v")) if kwargs else args[:3]
        state["inputs"] = {t.untyped_storage().data_ptr() for t in (q, k, v)}
        state["qkv"] += (q.shape[0] * (q.shape[1] + k.shape[1] + v.shape[1])) * _qkv_channels(module) * q.element_size()
        state["calls"] += 1
        state["ctx"] = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        state["ctx"].__enter__()

    def post_hook(module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any], output: Any) -> None:
        state["ctx"].__exit__(None, None, None)
        state["ctx"] = None

    handles = []
    for module in model.modules():
        if isinstance(module, attention_types):
            handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
            handles.append(module.register_forward_hook(post_hook, with_kwargs=True))
    try:
        with torch.enable_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return AttentionMemory(qkv_bytes=state["qkv"], saved_bytes=state["saved"], calls=state["calls"])


def decoder_inputs(model: BALRSAM, batch: int = 1) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The random decoder input of :func:`decoder_memory_comparison` for ``model``.

    Returns ``(image_embedding, image_pe, dense)`` of shapes ``(batch, C, g, g)``,
    ``(1, C, g, g)`` and ``(1, C, 1, 1)`` (``g`` the base's embedding grid, ``model.embedding_size``),
    drawn from a CPU generator seeded with 0 and moved to the decoder's device.
    """
    dim, grid = model.mask_decoder.transformer_dim, model.embedding_size
    device = next(model.mask_decoder.parameters()).device
    generator = torch.Generator(device="cpu").manual_seed(0)
    embedding = torch.randn(batch, dim, grid, grid, generator=generator).to(device)
    image_pe = torch.randn(1, dim, grid, grid, generator=generator).to(device)
    dense = torch.randn(1, dim, 1, 1, generator=generator).to(device)
    return embedding, image_pe, dense


def decoder_attention_memory(model: BALRSAM, batch: int = 1) -> AttentionMemory:
    """Attention memory of ``model``'s decoder on :func:`decoder_inputs` (one forward, ``batch`` images).

    The decoder's parameters are made trainable for the count and restored afterwards.
    """
    embedding, image_pe, dense = decoder_inputs(model, batch)
    with torch.enable_grad():
        requires = [p.requires_grad for p in model.mask_decoder.parameters()]
        for p in model.mask_decoder.parameters():
            p.requires_grad_(True)
        try:
            return measure_attention_memory(model.mask_decoder, lambda: model.mask_decoder(embedding, image_pe, dense))
        finally:
            for p, r in zip(model.mask_decoder.parameters(), requires):
                p.requires_grad_(r)


def decoder_memory_comparison(model: BALRSAM, batch: int = 1) -> Dict[str, Any]:
    """Decoder attention memory of ``model`` against SAM's decoder on the same input.

    SAM's decoder is built with the same width and as many mask tokens as ``model`` has classes
    (what SAMed does), and both decode the same random image embedding of the model's size
    (:func:`decoder_inputs`).

    Returns:
        ``{"input": {...}, "sam": AttentionMemory dict, "balr_sam": ..., "ratio_saved",
        "ratio_qkv", "reduction_percent"}``; the headline figures compare the bytes saved for
        backward (which include Q, K and V), ``ratio_qkv`` the Q/K/V activations alone.
    """
    spec_dim = model.mask_decoder.transformer_dim
    transformer = model.mask_decoder.transformer
    device = next(model.mask_decoder.parameters()).device
    grid = model.embedding_size
    sam_decoder = MaskDecoder(
        transformer_dim=spec_dim,
        transformer=TwoWayTransformer(
            depth=transformer.depth,
            embedding_dim=spec_dim,
            mlp_dim=transformer.layers[0].mlp.lin1.out_features,
            num_heads=transformer.layers[0].self_attn.num_heads,
        ),
        num_multimask_outputs=model.num_classes - 1,
    ).to(device)
    embedding, image_pe, dense = decoder_inputs(model, batch)
    sparse = torch.zeros(1, 0, spec_dim, device=device)

    def run_sam() -> Any:
        outputs = []
        for i in range(batch):  # SAM's decoder handles one image per call
            outputs.append(sam_decoder.predict_masks(embedding[i : i + 1], image_pe, sparse, dense)[0])
        return outputs

    with torch.enable_grad():
        for p in sam_decoder.parameters():
            p.requires_grad_(True)
        sam_mem = measure_attention_memory(sam_decoder, run_sam)
    ours = decoder_attention_memory(model, batch)
    return {
        "input": {"batch": batch, "img_size": model.img_size, "embedding": [batch, spec_dim, grid, grid], "tokens": model.num_classes + 1},
        "sam": sam_mem.to_dict(),
        "balr_sam": ours.to_dict(),
        "ratio_saved": ours.saved_bytes / sam_mem.saved_bytes,
        "ratio_qkv": ours.qkv_bytes / sam_mem.qkv_bytes,
        "reduction_percent": 100.0 * (1.0 - ours.saved_bytes / sam_mem.saved_bytes),
    }
