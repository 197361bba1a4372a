"""Low-rank (LoRA-style) adapters for the transformer blocks of SAM's image encoder.

BALR-SAM inserts adapters "post multi-head self-attention and within the MLP residual path" of
every ViT block (paper, Fig. 1). This implementation places them on the two linear layers that
write into the residual stream, named per base by ``SamBase.adapter_targets``:

* ``attn.proj``: the output projection right after multi-head self-attention;
* ``mlp.lin2`` (SAM's ViT) or ``mlp.fc2`` (LiteMedSAM's TinyViT): the MLP's last projection,
  i.e. the MLP residual branch.

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

__all__ = ["LoRALinear", "inject_adapters", "adapter_modules", "merge_adapters", "unmerge_adapters"]


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

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, *, rank: int, alpha: Optional[float] = None, dropout: float = 0.0, device=None, dtype=None
    ) -> None:
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
        new = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            rank=rank,
            alpha=alpha,
            dropout=dropout,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )
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


def _matches(name: str, pattern: str) -> bool:
    parts, wanted = name.split("."), pattern.split(".")
    return len(parts) == len(wanted) and all(w == "*" or w == p for p, w in zip(parts, wanted))


def inject_adapters(encoder: nn.Module, *, targets: Sequence[str], rank: int, alpha: Optional[float] = None, dropout: float = 0.0) -> List[str]:
    """Replace the target linear layers of ``encoder`` by :class:`LoRALinear`, in module order.

    Args:
        encoder: an image encoder (``ImageEncoderViT``, TinyViT, ...).
        targets: module names relative to ``encoder``, ``*`` standing for one name component
            (``"blocks.*.attn.proj"``); each must match at least one module.
        rank, alpha, dropout: adapter hyper-parameters.

    Returns:
        The qualified names (relative to ``encoder``) of the replaced modules.

    Raises:
        TypeError: a matched module is not an ``nn.Linear``.
        ValueError: a pattern matches nothing.
    """
    named = [(name, module) for name, module in encoder.named_modules() if any(_matches(name, t) for t in targets)]
    unmatched = [t for t in targets if not any(_matches(name, t) for name, _ in named)]
    if unmatched:
        raise ValueError(f"adapter targets {unmatched} match no module of {type(encoder).__name__}")
    replaced = []
    for name, module in named:
        if isinstance(module, LoRALinear):
            continue
        if not isinstance(module, nn.Linear):
            raise TypeError(f"{name} is {type(module).__name__}, not nn.Linear")
        parent_path, _, leaf = name.rpartition(".")
        setattr(encoder.get_submodule(parent_path), leaf, LoRALinear.from_linear(module, rank=rank, alpha=alpha, dropout=dropout))
        replaced.append(name)
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
