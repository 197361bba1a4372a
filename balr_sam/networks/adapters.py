"""Low-rank (LoRA-style) adapters for the ViT blocks of SAM's image encoder.

BALR-SAM inserts adapters "post multi-head self-attention and within the MLP residual path" of
every ViT block (paper, Fig. 1). This implementation places them on the two linear layers that
write into the residual stream:

* ``attn.proj``: the output projection right after multi-head self-attention;
* ``mlp.lin2``: the MLP's last projection, i.e. the MLP residual branch.

Each becomes a :class:`LoRALinear`: ``y = W x + b + (alpha / r) * B(A(dropout(x)))`` with ``A``
(r x in) Kaiming-initialised and ``B`` (out x r) zero-initialised, so an untrained adapted block
computes exactly SAM's function. Being linear, an adapter folds into the frozen weight
(:meth:`LoRALinear.merge`) for inference at zero extra cost, and unfolds back for training.
Modules are replaced in place (as ``peft`` does) and keep the frozen weight's parameter names, so
official SAM checkpoints load into an adapted encoder unchanged.
"""

from __future__ import annotations

import math
from typing import Iterator, List, Optional, Sequence

import torch
from torch import nn

__all__ = ["LoRALinear", "DEFAULT_ADAPTER_TARGETS", "inject_adapters", "adapter_modules", "merge_adapters", "unmerge_adapters"]

DEFAULT_ADAPTER_TARGETS = ("attn.proj", "mlp.lin2")


class LoRALinear(nn.Linear):
    """A frozen :class:`nn.Linear` plus a trainable low-rank update.

    Args:
        in_features, out_features, bias: as :class:`nn.Linear` (the frozen base).
        rank: rank ``r`` of the update (``> 0``).
        alpha: scaling numerator; the update is multiplied by ``alpha / rank`` (default
            ``alpha = rank``, i.e. no scaling, as SAMed's LoRA).
        dropout: dropout on the adapter's input during training.

    Shapes: input ``(..., in_features)``, output ``(..., out_features)``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, rank: int, alpha: Optional[float] = None, dropout: float = 0.0, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if rank <= 0:
            raise ValueError(f"adapter rank must be positive, got {rank}")
        self.rank = int(rank)
        self.scaling = 1.0 if alpha is None else float(alpha) / self.rank
        self.lora_A = nn.Parameter(torch.empty(self.rank, in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(out_features, self.rank, device=device, dtype=dtype))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        if self.lora_A.device.type != "meta":
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int, alpha: Optional[float] = None, dropout: float = 0.0) -> "LoRALinear":
        """Wrap an existing linear layer, sharing its weight and bias tensors."""
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, rank=rank, alpha=alpha, dropout=dropout, device=linear.weight.device, dtype=linear.weight.dtype)
        new.weight = linear.weight
        new.bias = linear.bias
        new.weight.requires_grad_(False)
        if new.bias is not None:
            new.bias.requires_grad_(False)
        return new

    def delta_weight(self) -> torch.Tensor:
        """The update ``(alpha / r) * B @ A`` of shape ``(out_features, in_features)``."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        if self.merged:
            return y
        return y + (self.lora_dropout(x) @ self.lora_A.t() @ self.lora_B.t()) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the frozen weight (inference); no-op if already merged."""
        if not self.merged:
            self.weight.add_(self.delta_weight().to(self.weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update back out of the frozen weight (training); no-op if not merged."""
        if self.merged:
            self.weight.sub_(self.delta_weight().to(self.weight.dtype))
            self.merged = False

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, scaling={self.scaling:g}, merged={self.merged}"


def inject_adapters(encoder: nn.Module, rank: int, alpha: Optional[float] = None, dropout: float = 0.0, targets: Sequence[str] = DEFAULT_ADAPTER_TARGETS) -> List[str]:
    """Replace the target linear layers of every ViT block of ``encoder`` by :class:`LoRALinear`.

    Args:
        encoder: a ``segment_anything`` :class:`ImageEncoderViT` (anything with ``.blocks``).
        rank, alpha, dropout: adapter hyper-parameters.
        targets: dotted module paths inside each block (default: ``attn.proj`` and ``mlp.lin2``).

    Returns:
        The qualified names (relative to ``encoder``) of the replaced modules.
    """
    replaced = []
    for index, block in enumerate(encoder.blocks):
        for target in targets:
            parent_path, _, leaf = target.rpartition(".")
            parent = block.get_submodule(parent_path) if parent_path else block
            module = getattr(parent, leaf)
            if isinstance(module, LoRALinear):
                continue
            if not isinstance(module, nn.Linear):
                raise TypeError(f"blocks.{index}.{target} is {type(module).__name__}, not nn.Linear")
            setattr(parent, leaf, LoRALinear.from_linear(module, rank=rank, alpha=alpha, dropout=dropout))
            replaced.append(f"blocks.{index}.{target}")
    return replaced


def adapter_modules(model: nn.Module) -> Iterator[LoRALinear]:
    """Every :class:`LoRALinear` inside ``model``."""
    return (m for m in model.modules() if isinstance(m, LoRALinear))


def merge_adapters(model: nn.Module) -> int:
    """Merge every adapter of ``model``; returns how many were merged."""
    count = 0
    for module in adapter_modules(model):
        if not module.merged:
            module.merge()
            count += 1
    return count


def unmerge_adapters(model: nn.Module) -> int:
    """Unmerge every adapter of ``model``; returns how many were unmerged."""
    count = 0
    for module in adapter_modules(model):
        if module.merged:
            module.unmerge()
            count += 1
    return count
