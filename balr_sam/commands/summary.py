"""``balr-sam summary``: parameter counts and decoder attention memory of a BALR-SAM variant.

The image encoder is built on PyTorch's ``meta`` device (shapes only), so even ViT-H is
summarised in about a second without allocating its 2.5 GB of weights. A base whose weights come
with a package (``lite_medsam``) has its weight file checked (size and SHA-256) all the same.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Dict, Optional

import torch

from balr_sam.networks.balr_sam import BALRSAMConfig, build_balr_sam
from balr_sam.networks.bases import BASES, get_base
from balr_sam.networks.report import decoder_memory_comparison, parameter_report
from balr_sam.types import PathLike

__all__ = ["register", "summarize", "format_summary"]


def summarize(
    variant: str, img_size: Optional[int] = None, num_classes: int = 9, batch: int = 1, sam_checkpoint: Optional[PathLike] = None, **options: Any
) -> Dict[str, Any]:
    """Parameter report and decoder attention memory comparison for one configuration.

    ``img_size`` defaults to the input size of the base's pretrained weights (1024 for SAM's
    ViTs, 256 for LiteMedSAM); ``sam_checkpoint`` is the base's weight file, as for
    :func:`build_balr_sam` (checked, decoder weights loaded).

    Raises:
        CheckpointError: the base's weights are missing or altered.
    """
    img_size = get_base(variant).native_img_size if img_size is None else img_size
    model = build_balr_sam(variant, num_classes=num_classes, img_size=img_size, sam_checkpoint=sam_checkpoint, encoder_device=torch.device("meta"), **options)
    return {
        "variant": variant,
        "config": model.config.to_dict(),
        "parameters": parameter_report(model),
        "decoder_attention_memory": decoder_memory_comparison(model, batch=batch),
    }


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def format_summary(summary: Dict[str, Any]) -> str:
    """Markdown tables for a :func:`summarize` result."""
    p, m, c = summary["parameters"], summary["decoder_attention_memory"], summary["config"]
    lines = [
        f"BALR-SAM {summary['variant']} (img_size {c['img_size']}, {c['num_classes']} classes, "
        f"adapter rank {c['adapter_rank']}, decoder rank ratio {c['decoder_rank_ratio']})",
        "",
        "| component | parameters | trainable |",
        "|---|---:|---:|",
    ]
    for name, counts in p["components"].items():
        lines.append(f"| {name} | {counts['total']:,} | {counts['trainable']:,} |")
    lines += [
        f"| **total** | **{p['total']:,}** | **{p['trainable']:,} ({p['trainable_percent']:.2f} %)** |",
        "",
        f"Decoder attention memory, batch {m['input']['batch']}, embedding {'x'.join(map(str, m['input']['embedding']))}, {m['input']['tokens']} tokens:",
        "",
        "| decoder | Q/K/V activations | saved for backward |",
        "|---|---:|---:|",
        f"| SAM | {_mib(m['sam']['qkv_bytes'])} | {_mib(m['sam']['saved_bytes'])} |",
        f"| BALR-SAM | {_mib(m['balr_sam']['qkv_bytes'])} | {_mib(m['balr_sam']['saved_bytes'])} |",
        f"| ratio | {m['ratio_qkv']:.3f} | {m['ratio_saved']:.3f} ({m['reduction_percent']:.1f} % less) |",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    options = {}
    if args.adapter_rank is not None:
        options["adapter_rank"] = args.adapter_rank
    if args.decoder_rank_ratio is not None:
        options["decoder_rank_ratio"] = args.decoder_rank_ratio
    summary = summarize(args.variant, img_size=args.img_size, num_classes=args.num_classes, batch=args.batch, sam_checkpoint=args.sam_checkpoint, **options)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def register(subparsers: "argparse._SubParsersAction") -> None:
    parser = subparsers.add_parser("summary", help="parameter counts and decoder attention memory of a variant", description=__doc__)
    parser.add_argument("--variant", default="vit_b", choices=sorted(BASES), help="SAM base (default vit_b)")
    parser.add_argument(
        "--img-size", type=int, default=None, help="model input size (default: the base's pretrained size, 1024 for SAM's ViTs, 256 for lite_medsam)"
    )
    parser.add_argument(
        "--sam-checkpoint",
        default=None,
        help="the base's weight file (SAM ViTs: Meta's checkpoint, checked against the variant; "
        "lite_medsam: a copy of lite_medsam.pth instead of the package's)",
    )
    parser.add_argument("--num-classes", type=int, default=BALRSAMConfig.num_classes, help="output classes incl. background (default 9, Synapse)")
    parser.add_argument("--batch", type=int, default=1, help="images per decoder pass for the memory count")
    parser.add_argument("--adapter-rank", type=int, default=None, help="override the adapter rank")
    parser.add_argument("--decoder-rank-ratio", type=float, default=None, help="override the per-head decoder rank ratio")
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    parser.set_defaults(func=run)
