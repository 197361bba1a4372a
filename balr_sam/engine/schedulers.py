"""Learning-rate schedule of BALR-SAM training: linear warm-up, then polynomial decay (SAMed's)."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["warmup_poly_lr"]


def warmup_poly_lr(optimizer: Optimizer, max_iterations: int, warmup_iterations: int = 0, power: float = 0.9, min_factor: float = 0.0) -> LambdaLR:
    """A per-iteration schedule: ``lr * (i + 1) / warmup`` during warm-up, then ``lr * (1 - t) ** power``.

    Args:
        optimizer: the optimizer whose base learning rates are scaled.
        max_iterations: total training iterations (``t`` reaches 1 there).
        warmup_iterations: iterations of linear warm-up (0: none).
        power: exponent of the polynomial decay (0.9 as in SAMed / nnU-Net).
        min_factor: lower bound of the factor, so the rate never reaches exactly 0.

    Step it once per iteration (MONAI ``LrScheduleHandler(epoch_level=False)``).
    """
    if max_iterations <= 0:
        raise ValueError(f"max_iterations must be positive, got {max_iterations}")
    warmup_iterations = max(0, min(warmup_iterations, max_iterations - 1))

    def factor(step: int) -> float:
        if step < warmup_iterations:
            return (step + 1) / warmup_iterations
        progress = (step - warmup_iterations) / max(1, max_iterations - warmup_iterations)
        return max(min_factor, (1.0 - min(progress, 1.0)) ** power)

    return LambdaLR(optimizer, factor)
