"""Reading Meta's official SAM checkpoints safely and fitting them to any input size.

Official checkpoints are plain state dicts of :class:`segment_anything.modeling.Sam`
(``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``) for 1024 x 1024 inputs; LiteMedSAM's
``lite_medsam.pth`` has the same format (with its TinyViT encoder, for 256 x 256 inputs). They are
read with ``torch.load(..., weights_only=True)``, so a file that would execute code is refused.
For another input size, the absolute position embedding ``(1, 64, 64, C)`` is resized
bilinearly (as SAMed does for 512 inputs) and every relative-position table whose length differs
from the model's is resized linearly, exactly as ``segment_anything``'s ``get_rel_pos`` does on
the fly; tables are found by shape, not by block index, so every variant is handled.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Dict, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from balr_sam.errors import CheckpointError
from balr_sam.types import PathLike

__all__ = [
    "safe_torch_load",
    "read_sam_state_dict",
    "resize_position_tables",
    "load_sam_weights",
    "official_state_dict",
]


def safe_torch_load(path: PathLike, map_location: object = "cpu") -> object:
    """``torch.load`` with ``weights_only=True`` (on CPU by default); every failure becomes a :class:`CheckpointError`.

    Raises:
        CheckpointError: the file is missing, truncated/corrupt, or holds objects that only an
            unsafe (code-executing) unpickling could load.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            reason = f"refused: it holds objects that can only be loaded by executing code ({reason})"
        raise CheckpointError(f"{path}: cannot read checkpoint: {reason}") from err


def read_sam_state_dict(path: PathLike) -> Dict[str, torch.Tensor]:
    """Read an official-format SAM checkpoint (a flat ``{name: tensor}`` dict).

    A dict wrapping the weights under ``"model"`` or ``"state_dict"`` (as training frameworks
    save) is unwrapped.
    """
    obj = safe_torch_load(path)
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], Mapping) and "image_encoder.pos_embed" not in obj:
                obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a SAM state dict (expected a mapping of parameter names to tensors)")
    if not any(str(k).startswith("image_encoder.") for k in obj):
        raise CheckpointError(f"{path}: not a SAM checkpoint (no 'image_encoder.*' weights)")
    return dict(obj)


def _resize_pos_embed(pos: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """``(1, h, w, C)`` -> ``(1, H, W, C)`` by bilinear interpolation."""
    out = F.interpolate(pos.permute(0, 3, 1, 2).float(), size=(size[1], size[2]), mode="bilinear", align_corners=False)
    return out.permute(0, 2, 3, 1).to(pos.dtype)


def _resize_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    """``(L, C)`` -> ``(length, C)`` by linear interpolation, as ``segment_anything.get_rel_pos``."""
    out = F.interpolate(table.float().reshape(1, table.shape[0], -1).permute(0, 2, 1), size=length, mode="linear")
    return out.reshape(-1, length).permute(1, 0).to(table.dtype)


def resize_position_tables(state_dict: Mapping[str, torch.Tensor], target_shapes: Mapping[str, torch.Size]) -> Dict[str, torch.Tensor]:
    """Resize position embeddings and relative-position tables to the shapes of a model.

    Args:
        state_dict: SAM weights (any input size).
        target_shapes: parameter name -> shape in the model that will receive them.

    Returns:
        A new dict; ``*pos_embed`` of shape ``(1, h, w, C)`` and ``*rel_pos_h``/``*rel_pos_w`` of
        shape ``(L, C)`` are resized where their spatial size differs from the target's (channel
        counts must already agree). All other tensors are passed through unchanged.
    """
    out = dict(state_dict)
    for key, value in state_dict.items():
        target = target_shapes.get(key)
        if target is None or tuple(value.shape) == tuple(target):
            continue
        if key.endswith("pos_embed") and value.ndim == 4 and len(target) == 4 and value.shape[-1] == target[-1]:
            out[key] = _resize_pos_embed(value, target)
        elif key.endswith(("rel_pos_h", "rel_pos_w")) and value.ndim == 2 and value.shape[1] == target[1]:
            out[key] = _resize_rel_pos(value, target[0])
    return out


def load_sam_weights(module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: PathLike = "<state dict>") -> None:
    """Load SAM weights into a :class:`Sam` built at any input size, checking every shape.

    Args:
        module: a ``segment_anything`` :class:`Sam` (from :meth:`balr_sam.networks.bases.SamBase.build`);
            tensors on the ``meta`` device are checked but not filled.
        state_dict: official-format weights, e.g. from :func:`read_sam_state_dict`.
        source: name of the file they came from, for error messages.

    Raises:
        CheckpointError: a key is missing or unexpected, or a shape differs in a way that
            position-table resizing cannot explain (wrong variant), naming the file, the first
            offending parameters, and the expected and found shapes.
    """
    target = {k: v.shape for k, v in module.state_dict().items()}
    weights = resize_position_tables(state_dict, target)
    missing = sorted(set(target) - set(weights))
    unexpected = sorted(set(weights) - set(target))
    mismatched = [(k, tuple(target[k]), tuple(weights[k].shape)) for k in target if k in weights and weights[k].shape != target[k]]
    problems = []
    if mismatched:
        shown = "; ".join(f"{k}: expected {e}, found {f}" for k, e, f in mismatched[:3])
        problems.append(f"{len(mismatched)} tensors have the wrong shape ({shown})")
    if missing:
        problems.append(f"{len(missing)} weights missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected weights (e.g. {', '.join(unexpected[:3])})")
    if problems:
        raise CheckpointError(f"{source}: does not match the model: " + "; ".join(problems) + " - is it the checkpoint of another SAM variant?")
    meta = {k for k, v in module.state_dict().items() if v.is_meta}  # shapes-only parts: checked above, not filled
    with warnings.catch_warnings():  # BatchNorm supplies a num_batches_tracked of its own for them
        warnings.filterwarnings("ignore", message=".*non-meta parameter in the checkpoint to a meta parameter", category=UserWarning)
        module.load_state_dict({k: v for k, v in weights.items() if k not in meta}, strict=not meta)
    _refresh_mode_caches(module)


def _refresh_mode_caches(module: nn.Module) -> None:
    """Re-apply their own mode to modules whose class overrides ``train``, so that what they cache
    from their weights follows the loaded ones (TinyViT's attention caches its position biases)."""
    for child in module.modules():
        if type(child).train is not nn.Module.train:
            child.train(child.training)


def official_state_dict(sam: nn.Module) -> Dict[str, torch.Tensor]:
    """The state dict of a :class:`Sam` in the official checkpoint format (what ``torch.save`` writes)."""
    return {k: v.detach().clone() for k, v in sam.state_dict().items()}
