"""Loading SAM checkpoints: every variant and input size, and clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from balr_sam.errors import CheckpointError
from balr_sam.networks import VARIANTS, build_balr_sam, build_sam
from balr_sam.networks.checkpoint import read_sam_state_dict, resize_position_tables


@pytest.fixture(scope="module")
def vit_t_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "sam_vit_t.pth"
    torch.save(build_sam("vit_t").state_dict(), path)
    return path


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("img_size", [512, 256, 384])
def test_position_tables_fit_every_variant_and_size(variant: str, img_size: int) -> None:
    """The 1024-pixel position embedding and relative tables are resized to the model's shapes."""
    meta = torch.device("meta")
    source = {k: v.shape for k, v in build_sam(variant, 1024, device=meta).state_dict().items() if "pos" in k}
    target = {k: v.shape for k, v in build_sam(variant, img_size, device=meta).state_dict().items() if "pos" in k}
    weights = {k: torch.randn(s) for k, s in source.items()}
    resized = resize_position_tables(weights, target)
    assert {k: v.shape for k, v in resized.items()} == target
    changed = [k for k in source if source[k] != target[k]]
    global_blocks = len(VARIANTS[variant].encoder_global_attn_indexes)
    assert len(changed) == 1 + 2 * global_blocks  # pos_embed + (h, w) of each global block, found by shape


@pytest.mark.parametrize("img_size", [1024, 512, 256, 400])
def test_checkpoint_loads_at_any_multiple_of_16(vit_t_checkpoint: Path, img_size: int) -> None:
    model = build_balr_sam("vit_t", num_classes=3, img_size=img_size, sam_checkpoint=vit_t_checkpoint)
    grid = img_size // 16
    assert model.image_encoder.pos_embed.shape == (1, grid, grid, 96)
    with torch.no_grad():
        assert model(torch.rand(1, 1, 70, 90)).shape == (1, 3, 70, 90)


def test_img_size_must_be_multiple_of_16() -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        build_balr_sam("vit_t", img_size=500)


def test_wrong_variant_names_file_and_shapes(tmp_path: Path) -> None:
    path = tmp_path / "sam_vit_s.pth"
    torch.save(build_sam("vit_s", device=torch.device("cpu")).state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        build_balr_sam("vit_t", sam_checkpoint=path)
    message = str(err.value)
    assert str(path) in message
    assert "image_encoder.pos_embed: expected (1, 32, 32, 96), found (1, 64, 64, 384)" in message
    assert "image_encoder.patch_embed.proj.weight: expected (96, 3, 16, 16), found (384, 3, 16, 16)" in message
    assert "another SAM variant" in message


def test_truncated_file_is_a_clear_error(vit_t_checkpoint: Path, tmp_path: Path) -> None:
    broken = tmp_path / "truncated.pth"
    broken.write_bytes(vit_t_checkpoint.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r"truncated\.pth: cannot read checkpoint"):
        read_sam_state_dict(broken)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        read_sam_state_dict(tmp_path / "nope.pth")


class _Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def test_code_executing_pickle_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"image_encoder.pos_embed": torch.zeros(1), "payload": _Exploit()}, path)
    with pytest.raises(CheckpointError, match="evil.pth: cannot read checkpoint: refused"):
        read_sam_state_dict(path)
    assert "pwned" not in capsys.readouterr().out


def test_not_a_sam_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="not a SAM checkpoint"):
        read_sam_state_dict(path)
