"""The BALR-SAM network and its parts (see :mod:`balr_sam.networks.balr_sam`)."""

from balr_sam.networks.adapters import LoRALinear, inject_adapters, merge_adapters, unmerge_adapters
from balr_sam.networks.balr_sam import BALRSAM, BALRSAMConfig, build_balr_sam
from balr_sam.networks.bases import BASES, SamBase, get_base
from balr_sam.networks.cden import CDEN
from balr_sam.networks.checkpoint import load_sam_weights, read_sam_state_dict, resize_position_tables
from balr_sam.networks.decoder import PromptFreeMaskDecoder
from balr_sam.networks.lowrank_attention import LowRankTensorAttention, convert_decoder_attention
from balr_sam.networks.variants import VARIANTS, build_sam, get_variant

__all__ = [
    "BALRSAM",
    "BALRSAMConfig",
    "build_balr_sam",
    "BASES",
    "SamBase",
    "get_base",
    "build_sam",
    "get_variant",
    "VARIANTS",
    "LoRALinear",
    "inject_adapters",
    "merge_adapters",
    "unmerge_adapters",
    "CDEN",
    "PromptFreeMaskDecoder",
    "LowRankTensorAttention",
    "convert_decoder_attention",
    "load_sam_weights",
    "read_sam_state_dict",
    "resize_position_tables",
]
