"""The BALR-SAM model: input contract, freezing, gradients, merging, trainable checkpoints, summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from balr_sam.cli import main
from balr_sam.errors import CheckpointError
from balr_sam.inference import load_balr_sam
from balr_sam.networks import build_balr_sam, build_sam
from balr_sam.networks.adapters import adapter_modules
from balr_sam.networks.trainable import load_trainable_state_dict, save_trainable_checkpoint, trainable_state_dict


@pytest.fixture(scope="module")
def sam_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sam") / "sam_vit_t.pth"
    torch.save(build_sam("vit_t").state_dict(), path)
    return path


def _perturb_trainable(model: torch.nn.Module, seed: int = 0) -> None:
    """Move the trainable parameters off their (zero) initialisation, as training would."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.02)


@pytest.mark.parametrize("shape", [(2, 1, 64, 64), (1, 3, 100, 72), (3, 1, 31, 257)])
def test_forward_contract_any_size_one_or_three_channels(shape: tuple) -> None:
    model = build_balr_sam("vit_t", num_classes=5, img_size=128).eval()
    with torch.no_grad():
        out = model(torch.rand(shape))
    assert out.shape == (shape[0], 5, shape[2], shape[3])


def test_one_channel_input_is_the_grey_three_channel_image() -> None:
    model = build_balr_sam("vit_t", num_classes=3, img_size=64).eval()
    _perturb_trainable(model)
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x.repeat(1, 3, 1, 1)))


def test_bad_channel_count_is_rejected() -> None:
    model = build_balr_sam("vit_t", num_classes=2, img_size=64)
    with pytest.raises(ValueError, match="1 or 3 input channels"):
        model(torch.rand(1, 4, 64, 64))


def test_only_trainable_parameters_receive_gradients() -> None:
    model = build_balr_sam("vit_t", num_classes=3, img_size=64)
    _perturb_trainable(model)
    loss = model(torch.rand(2, 1, 64, 64)).logsumexp(1).mean()
    loss.backward()
    for name, p in model.named_parameters():
        frozen = name.startswith(("image_encoder.", "prompt_encoder.")) and ".lora_" not in name
        assert p.requires_grad is not frozen, name
        if frozen:
            assert p.grad is None, name
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if ".lora_A" in n)


def test_components_can_be_switched_off_for_ablations() -> None:
    from segment_anything.modeling.transformer import Attention

    model = build_balr_sam("vit_t", num_classes=2, img_size=64, use_adapters=False, use_cden=False, use_lowrank_attention=False)
    assert model.cden is None and not list(adapter_modules(model))
    assert any(isinstance(m, Attention) for m in model.mask_decoder.modules())
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 2, 64, 64)


def test_merged_adapters_give_the_same_output() -> None:
    model = build_balr_sam("vit_t", num_classes=3, img_size=64).eval()
    _perturb_trainable(model)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        assert model.merge_adapters() == 2 * len(model.image_encoder.blocks)
        merged = model(x)
        model.unmerge_adapters()
        after = model(x)
    torch.testing.assert_close(merged, before, atol=1e-4, rtol=0)
    torch.testing.assert_close(after, before, atol=1e-4, rtol=0)


def test_inference_form_folds_cden_batch_norms_and_keeps_the_output() -> None:
    """``fuse_for_inference``: adapters merged and CDEN's 23 Conv+BN pairs folded, same logits."""
    model = build_balr_sam("vit_t", num_classes=3, img_size=64)
    _perturb_trainable(model)
    model.train()
    with torch.no_grad():  # BN running statistics away from their initial 0/1
        for _ in range(3):
            model.cden(torch.randn(2, 3, 64, 64) * 2 + 0.5)
    model.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        model.fuse_for_inference()
        after = model(x)
    assert model.adapters_merged
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.cden.modules())
    assert before.abs().max() > 0
    torch.testing.assert_close(after, before, atol=1e-4, rtol=0)
    with pytest.raises(RuntimeError, match="eval"):
        build_balr_sam("vit_t", num_classes=3, img_size=64).cden.fuse_batch_norms()


def test_trainable_checkpoint_round_trip_is_exact(sam_checkpoint: Path, tmp_path: Path) -> None:
    model = build_balr_sam("vit_t", num_classes=4, img_size=64, sam_checkpoint=sam_checkpoint)
    _perturb_trainable(model)
    model.train()
    model(torch.rand(2, 3, 64, 64))  # update CDEN batch-norm statistics, which must be saved too
    model.eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        expected = model(x)
    path = tmp_path / "balr_sam_trainable.pt"
    size = save_trainable_checkpoint(model, path)
    assert size == path.stat().st_size
    full = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    assert size < 0.7 * full
    assert set(trainable_state_dict(model)) == {k for k in model.state_dict() if not model.is_base_key(k)}
    reloaded = load_balr_sam(path, sam_checkpoint=sam_checkpoint).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(x), expected)


def test_loading_on_other_base_weights_fails_loudly(sam_checkpoint: Path, tmp_path: Path) -> None:
    model = build_balr_sam("vit_t", num_classes=2, img_size=64, sam_checkpoint=sam_checkpoint)
    path = tmp_path / "trained.pt"
    save_trainable_checkpoint(model, path)
    torch.manual_seed(123)
    other = tmp_path / "other_sam.pth"
    torch.save(build_sam("vit_t").state_dict(), other)
    with pytest.raises(CheckpointError, match=r"trained\.pt: was trained on other SAM base weights than .*other_sam\.pth"):
        load_balr_sam(path, sam_checkpoint=other)
    with pytest.raises(CheckpointError, match="random"):
        load_balr_sam(path, sam_checkpoint=None)


def test_trainable_weights_of_another_configuration_are_refused(sam_checkpoint: Path) -> None:
    model = build_balr_sam("vit_t", num_classes=2, img_size=64)
    other = build_balr_sam("vit_t", num_classes=5, img_size=64)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_trainable_state_dict(model, trainable_state_dict(other), source="other.pt")


def test_loading_into_a_merged_model_keeps_outputs_consistent(sam_checkpoint: Path) -> None:
    trained = build_balr_sam("vit_t", num_classes=2, img_size=64, sam_checkpoint=sam_checkpoint).eval()
    _perturb_trainable(trained, seed=5)
    target = build_balr_sam("vit_t", num_classes=2, img_size=64, sam_checkpoint=sam_checkpoint).eval()
    target.merge_adapters()
    load_trainable_state_dict(target, trainable_state_dict(trained))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(target(x), trained(x), atol=1e-4, rtol=0)


def test_summary_vit_h_trainable_share_and_memory_cut(capsys: pytest.CaptureFixture) -> None:
    assert main(["summary", "--variant", "vit_h", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    share = summary["parameters"]["trainable_percent"]
    assert 1.5 <= share <= 2.0, share
    assert 11.0e6 <= summary["parameters"]["trainable"] <= 12.5e6
    assert summary["decoder_attention_memory"]["ratio_saved"] <= 0.25


@pytest.mark.parametrize("img_size", [1024, 512])
def test_decoder_attention_memory_is_at_most_a_quarter_of_sams(img_size: int, capsys: pytest.CaptureFixture) -> None:
    assert main(["summary", "--variant", "vit_b", "--img-size", str(img_size), "--json"]) == 0
    memory = json.loads(capsys.readouterr().out)["decoder_attention_memory"]
    assert memory["ratio_saved"] <= 0.25 and memory["ratio_qkv"] <= 0.25
    assert memory["sam"]["calls"] == memory["balr_sam"]["calls"] == 7
    # full rank keeps all Q/K/V channels: the cut comes from the rank
    assert main(["summary", "--variant", "vit_b", "--img-size", str(img_size), "--decoder-rank-ratio", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["decoder_attention_memory"]["ratio_qkv"] == 1.0


def test_summary_markdown_lists_components(capsys: pytest.CaptureFixture) -> None:
    assert main(["summary", "--variant", "vit_t", "--img-size", "256"]) == 0
    out = capsys.readouterr().out
    for word in ("adapters", "cden", "mask_decoder", "**total**", "saved for backward"):
        assert word in out
