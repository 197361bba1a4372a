"""BALR-SAM at initialisation (zero adapters, zero CDEN, full-rank decoder attention, 4 classes)
must compute exactly what ``segment_anything``'s own SAM computes from the same weights."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import pytest
import torch
import torch.nn.functional as F
from segment_anything import sam_model_registry
from segment_anything.modeling import Sam
from segment_anything.modeling.image_encoder import get_rel_pos

from balr_sam.networks import build_balr_sam, build_sam
from balr_sam.networks.checkpoint import load_sam_weights, resize_position_tables

TOL = 1e-4


def _randomise(sam: Sam, seed: int) -> Sam:
    """Give the zero-initialised parameters (relative positions) random values too."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sam.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return sam


def _official_checkpoint(tmp_path: Path, variant: str, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    sam = _randomise(build_sam(variant, img_size=1024), seed)
    path = tmp_path / f"sam_{variant}_random.pth"
    torch.save(sam.state_dict(), path)  # the official checkpoint format: a flat state dict
    return path


def _sam_low_res(sam: Sam, x01: torch.Tensor) -> torch.Tensor:
    """SAM's own prompt-free decoder output (no points, boxes or mask), all mask tokens, per image."""
    image = (x01 * 255.0 - sam.pixel_mean) / sam.pixel_std
    embeddings = sam.image_encoder(image)
    sparse, dense = sam.prompt_encoder(points=None, boxes=None, masks=None)
    masks = [sam.mask_decoder.predict_masks(embeddings[i : i + 1], sam.prompt_encoder.get_dense_pe(), sparse, dense)[0] for i in range(len(x01))]
    return torch.cat(masks)


def _independent_resize(weights: Dict[str, torch.Tensor], target: Dict[str, torch.Size]) -> Dict[str, torch.Tensor]:
    """The position tables resized without the project's code, as SAMed does: the absolute embedding by
    ``F.interpolate(bilinear, align_corners=False)`` on the ``(C, h, w)`` grid, the relative tables by
    ``segment_anything``'s own run-time interpolation (``get_rel_pos`` at the new grid size)."""
    out = dict(weights)
    for key, value in weights.items():
        if tuple(value.shape) == tuple(target[key]):
            continue
        if key.endswith("pos_embed"):
            out[key] = F.interpolate(value.permute(0, 3, 1, 2), size=tuple(target[key][1:3]), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
        else:
            out[key] = _rel_pos_table(value, (target[key][0] + 1) // 2)
    return out


def _rel_pos_table(table: torch.Tensor, grid: int) -> torch.Tensor:
    """The ``(2 * grid - 1, C)`` table that ``segment_anything``'s ``get_rel_pos(grid, grid, table)`` uses,
    read back from its ``(grid, grid, C)`` output: row 0 holds offsets ``grid - 1 .. 0``, column 0 the rest."""
    rows = get_rel_pos(grid, grid, table)
    return torch.cat([rows[0].flip(0), rows[1:, 0]])


def _reference_at(variant: str, img_size: int, weights: Dict[str, torch.Tensor]) -> Sam:
    ref = build_sam(variant, img_size=img_size)
    ref.load_state_dict(_independent_resize(weights, {k: v.shape for k, v in ref.state_dict().items()}))
    return ref.eval()


def test_pos_embed_resize_matches_bilinear() -> None:
    """Random values on a non-square grid: a nearest-neighbour or height/width-transposed resize differs."""
    gen = torch.Generator().manual_seed(0)
    weights = {"image_encoder.pos_embed": torch.randn(1, 6, 10, 8, generator=gen), "image_encoder.blocks.0.attn.rel_pos_h": torch.randn(11, 8, generator=gen)}
    target = {"image_encoder.pos_embed": torch.Size([1, 9, 4, 8]), "image_encoder.blocks.0.attn.rel_pos_h": torch.Size([17, 8])}
    resized = resize_position_tables(weights, target)
    expected = F.interpolate(weights["image_encoder.pos_embed"].permute(0, 3, 1, 2), size=(9, 4), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    torch.testing.assert_close(resized["image_encoder.pos_embed"], expected)
    torch.testing.assert_close(resized["image_encoder.blocks.0.attn.rel_pos_h"], _rel_pos_table(weights["image_encoder.blocks.0.attn.rel_pos_h"], 9))


@pytest.mark.parametrize("img_size", [1024, 512, 320])
def test_matches_segment_anything_prompt_free_output(tmp_path: Path, img_size: int) -> None:
    ckpt = _official_checkpoint(tmp_path, "vit_t")
    model = build_balr_sam("vit_t", num_classes=4, img_size=img_size, sam_checkpoint=ckpt, decoder_rank_ratio=1.0).eval()
    reference = _reference_at("vit_t", img_size, torch.load(ckpt, weights_only=True))
    x = torch.rand(2, 3, img_size, img_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model.forward_low_res(x)
        theirs = _sam_low_res(reference, x)
        multimask, _ = reference.mask_decoder(
            reference.image_encoder((x[:1] * 255 - reference.pixel_mean) / reference.pixel_std),
            reference.prompt_encoder.get_dense_pe(),
            *reference.prompt_encoder(points=None, boxes=None, masks=None),
            multimask_output=True,
        )
    assert ours.shape == (2, 4, img_size // 4, img_size // 4)
    assert theirs.abs().max() > 0.05  # a non-trivial function is being compared
    torch.testing.assert_close(ours, theirs, atol=TOL, rtol=0)
    # SAM's public multimask output is mask tokens 1..3
    torch.testing.assert_close(ours[:1, 1:], multimask, atol=TOL, rtol=0)


def test_official_vit_b_checkpoint_through_segment_anything_registry(tmp_path: Path) -> None:
    """The checkpoint written in the official format is what segment_anything's own builder loads."""
    ckpt = _official_checkpoint(tmp_path, "vit_b", seed=3)
    reference = sam_model_registry["vit_b"](checkpoint=str(ckpt)).eval()
    model = build_balr_sam("vit_b", num_classes=4, img_size=1024, sam_checkpoint=ckpt, decoder_rank_ratio=1.0).eval()
    x = torch.rand(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model.forward_low_res(x), _sam_low_res(reference, x), atol=TOL, rtol=0)


def test_relative_position_resizing_equals_segment_anything_on_the_fly(tmp_path: Path) -> None:
    """Resized relative-position tables equal what SAM's get_rel_pos interpolates at run time."""
    weights = torch.load(_official_checkpoint(tmp_path, "vit_t"), weights_only=True)
    model = build_sam("vit_t", img_size=512)
    load_sam_weights(model, weights)
    resized = dict(model.named_parameters())
    checked = 0
    for key, table in weights.items():
        if key.endswith(("rel_pos_h", "rel_pos_w")) and table.shape != resized[key].shape:
            q = (resized[key].shape[0] + 1) // 2
            torch.testing.assert_close(get_rel_pos(q, q, resized[key].data), get_rel_pos(q, q, table))
            checked += 1
    assert checked == 4  # the two global-attention blocks of vit_t, h and w tables
