"""A BALR-SAM wrapper for MONAI's ``ckpt_export`` (TorchScript with adapters merged).

``monai.bundle ckpt_export`` builds the network from the config, loads ``models/model.pt`` into
it with ``load_state_dict`` and converts it. A trained BALR-SAM checkpoint holds only the
trainable part, and for deployment the adapters should be folded into the frozen weights; this
wrapper's ``load_state_dict`` does both, so the bundle exports with MONAI's own command::

    python -m monai.bundle ckpt_export network_export --filepath bundle/models/model.ts \\
        --ckpt_file bundle/models/model.pt --key_in_ckpt model --use_trace True \\
        --input_shape "[1, 1, 512, 512]" --meta_file bundle/configs/metadata.json \\
        --config_file bundle/configs/inference.json

A traced export is specialised to ``input_shape``'s height and width.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from balr_sam.networks.balr_sam import BALRSAM
from balr_sam.networks.trainable import load_trainable_state_dict

__all__ = ["MergedForExport"]


class MergedForExport(nn.Module):
    """Wraps a :class:`BALRSAM`; loading a trainable-only state dict also merges the adapters.

    Shapes: as :meth:`BALRSAM.forward` (``B x 1|3 x H x W`` -> ``B x K x H x W``).
    """

    def __init__(self, network: BALRSAM) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:  # type: ignore[override]
        """Load trainable-only weights (adapters, CDEN, decoder; keys as in ``BALRSAM``), then merge adapters."""
        self.network.unmerge_adapters()
        load_trainable_state_dict(self.network, state_dict, source="<exported checkpoint>")
        self.network.merge_adapters()
        return nn.modules.module._IncompatibleKeys([], [])
