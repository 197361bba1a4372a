"""SAMed's LoRA: low-rank updates of the q and v slices of each ViT block's fused ``attn.qkv``.

SAMed (Zhang & Liu, 2023) adapts SAM's image encoder with rank-4 LoRA on the query and value
projections only. SAM computes q, k and v with one fused linear layer ``attn.qkv``
(``dim -> 3 dim``, output rows ``[q; k; v]``), so the update is block-structured::

    W_qkv' = W_qkv + (alpha / r) * [B_q A_q; 0; B_v A_v]

:class:`QVLoRALinear` is a :class:`~balr_sam.networks.adapters.LoRALinear` of rank ``2 r``
whose down-projection ``lora_A`` stacks ``A_q`` over ``A_v`` (``2r x dim``, Kaiming-initialised)
and whose up-projection keeps only SAMed's two trained blocks ``lora_B_q`` and ``lora_B_v``
(``dim x r`` each, zero-initialised, so an untrained adapted encoder computes SAM's function).
Everything else is ``LoRALinear``'s: frozen shared base weight, dropout, scaling, and
:meth:`~LoRALinear.merge` / :meth:`~LoRALinear.unmerge` (as ``peft``), so
:func:`~balr_sam.networks.adapters.merge_adapters` and ``BALRSAM.fuse_for_inference`` fold these
adapters too. Trainable parameters per block: ``4 r dim`` (SAMed's count).
"""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import nn

from balr_sam.networks.adapters import LoRALinear

__all__ = ["QVLoRALinear", "inject_qv_lora"]


class QVLoRALinear(LoRALinear):
    """A frozen fused ``qkv`` :class:`nn.Linear` plus rank-``r`` updates of its q and v outputs.

    Args:
        in_features: model width ``dim``.
        out_features: ``3 * dim`` (q, k, v stacked).
        bias: as :class:`nn.Linear`.
        rank: rank ``r`` of each of the q and v updates (``> 0``).
        alpha: scaling numerator; updates are multiplied by ``alpha / r`` (default: no scaling,
            as SAMed).
        dropout: dropout on the adapters' input during training.

    Shapes: input ``(..., dim)``, output ``(..., 3 dim)``.

    Raises:
        ValueError: ``rank <= 0`` or ``out_features`` is not a multiple of 3.
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, *, rank: int, alpha: Optional[float] = None, dropout: float = 0.0, device=None, dtype=None
    ) -> None:
        if rank <= 0:
            raise ValueError(f"adapter rank must be positive, got {rank}")
        if out_features % 3:
            raise ValueError(f"a fused qkv layer has 3 x dim outputs, got {out_features}")
        # LoRALinear of rank 2r: lora_A (2r x dim) is A_q stacked over A_v
        super().__init__(in_features, out_features, bias, rank=2 * rank, alpha=None, dropout=dropout, device=device, dtype=dtype)
        del self.lora_B  # the dense (3 dim x 2r) up-projection: SAMed trains only its q and v blocks
        self.rank = int(rank)
        self.scaling = 1.0 if alpha is None else float(alpha) / self.rank
        dim = out_features // 3
        self.lora_B_q = nn.Parameter(torch.zeros(dim, self.rank, device=device, dtype=dtype))
        self.lora_B_v = nn.Parameter(torch.zeros(dim, self.rank, device=device, dtype=dtype))

    def up_projection(self) -> torch.Tensor:
        """The block up-projection ``[[B_q, 0], [0, 0], [0, B_v]]`` of shape ``(3 dim, 2r)``."""
        zeros = self.lora_B_q.new_zeros(self.lora_B_q.shape)
        return torch.cat([torch.cat([self.lora_B_q, zeros], 1), torch.cat([zeros, zeros], 1), torch.cat([zeros, self.lora_B_v], 1)], 0)

    def delta_weight(self) -> torch.Tensor:
        """The update ``(alpha / r) * [B_q A_q; 0; B_v A_v]`` of shape ``(3 dim, dim)``."""
        return (self.up_projection() @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.Linear.forward(self, x)
        if self.merged:
            return y
        return y + (self.lora_dropout(x) @ self.lora_A.t() @ self.up_projection().t()) * self.scaling


def inject_qv_lora(encoder: nn.Module, rank: int = 4, alpha: Optional[float] = None, dropout: float = 0.0) -> List[str]:
    """Replace ``attn.qkv`` of every ViT block of ``encoder`` by a :class:`QVLoRALinear` (in place).

    The frozen weights keep their names (``blocks.i.attn.qkv.weight``), so SAM checkpoints load
    into the adapted encoder unchanged; the adapters add ``lora_A``, ``lora_B_q`` and ``lora_B_v``.

    Args:
        encoder: a ``segment_anything`` :class:`ImageEncoderViT` (anything with ``.blocks``).
        rank, alpha, dropout: see :class:`QVLoRALinear` (SAMed: rank 4, no scaling, no dropout).

    Returns:
        The qualified names (relative to ``encoder``) of the replaced modules.

    Raises:
        TypeError: a block's ``attn.qkv`` is not an :class:`nn.Linear`.
    """
    replaced = []
    for index, block in enumerate(encoder.blocks):
        qkv = block.attn.qkv
        if isinstance(qkv, QVLoRALinear):
            continue
        if not isinstance(qkv, nn.Linear) or isinstance(qkv, LoRALinear):
            raise TypeError(f"blocks.{index}.attn.qkv is {type(qkv).__name__}, not a plain nn.Linear")
        block.attn.qkv = QVLoRALinear.from_linear(qkv, rank=rank, alpha=alpha, dropout=dropout)
        replaced.append(f"blocks.{index}.attn.qkv")
    return replaced
