"""Transforms: label maps, HU window, slice sampling, training pipelines and invertible inference preprocessing."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd, LoadImaged, SaveImaged

from _data_factories import affine_for, make_transunet_tree, write_nifti, write_png
from balr_sam.data.datalist import slices_as_volumes
from balr_sam.data.io import VolumeReader
from balr_sam.data.pipelines import (
    AXCODES,
    ct_inference_preprocessing,
    ct_train_transforms,
    image2d_inference_preprocessing,
    image2d_train_transforms,
    synapse_h5_preprocessing,
    synapse_npz_train_transforms,
    transforms_for_datalist,
)
from balr_sam.data.transforms import AlignToReferenced, LoadArrayd, LoadVolumed, MapLabelsd, RandSampleSlicesd
from balr_sam.errors import DataError
from balr_sam.labels import get_label_set, remap_labels

# --------------------------------------------------------------------------------------------
# label maps (data in resources/label_maps.json, checked here against the spec's tables)
# --------------------------------------------------------------------------------------------

BTCV_TO_SYNAPSE = {1: 1, 2: 2, 3: 3, 4: 4, 6: 5, 7: 6, 8: 7, 11: 8}
TOTALSEG_TO_SYNAPSE = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 52: 7, 7: 8}


@pytest.mark.parametrize("source,table,max_value", [("btcv", BTCV_TO_SYNAPSE, 13), ("totalseg", TOTALSEG_TO_SYNAPSE, 117)])
def test_label_map_tables(source, table, max_value):
    values = np.arange(max_value + 1)
    mapped = remap_labels(values, "synapse", source)
    for v in values:
        assert mapped[v] == table.get(int(v), 0), (source, v)
    # every product organ is reached exactly once
    assert sorted(table.values()) == get_label_set("synapse").foreground


def test_map_labelsd_uses_per_case_source_and_keeps_meta():
    arr = np.array([0, 1, 6, 7, 8, 11, 5, 13], dtype=np.float32).reshape(1, 2, 2, 2)
    img = MetaTensor(torch.from_numpy(arr), affine=torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0])))
    out = MapLabelsd("label", strict=True)({"label": img, "label_map": "btcv"})["label"]
    assert out.flatten().tolist() == [0, 1, 5, 6, 7, 8, 0, 0]
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, img.affine)
    out = MapLabelsd("label", source="identity")({"label": torch.tensor([[0.0, 3.0, 9.0]])})["label"]
    assert out.tolist() == [[0, 3, 0]]  # non-strict: unknown values become background


# --------------------------------------------------------------------------------------------
# CT pipelines
# --------------------------------------------------------------------------------------------


def _ct_case(tmp_path, codes="LPS", shape=(24, 20, 10), spacing=(0.8, 0.9, 3.0)):
    hu = np.full(shape, -1000, np.int16)
    hu[2:-2, 2:-2, :] = 40
    label = np.zeros(shape, np.uint8)
    label[4:10, 4:10, 2:5] = 6  # BTCV liver -> 5
    label[12:16, 12:16, 6:8] = 11  # BTCV pancreas -> 8
    aff = affine_for(spacing, codes, (10.0, -20.0, 30.0))
    img_path = write_nifti(tmp_path / f"img_{codes}.nii.gz", hu, aff)
    lab_path = write_nifti(tmp_path / f"lab_{codes}.nii.gz", label, aff)
    return {"image": str(img_path), "label": str(lab_path), "label_map": "btcv"}, hu, label, aff


def test_hu_window_scaling(tmp_path):
    hu = np.array([-1000, -125, -25, 75, 275, 1000], np.int16)
    path = write_nifti(tmp_path / "w.nii.gz", np.broadcast_to(hu, (2, 2, 6)).copy(), np.eye(4))
    out = ct_inference_preprocessing(img_size=2)({"image": str(path)})["image"]
    assert out.shape == (1, 2, 2, 6)
    assert np.allclose(out[0, 0, 0].numpy(), [0.0, 0.0, 0.25, 0.5, 1.0, 1.0])


def test_ct_train_transforms_output(tmp_path):
    item, _, _, _ = _ct_case(tmp_path)
    tr = ct_train_transforms(img_size=32, num_slices=5, foreground_fraction=1.0)
    tr.set_random_state(0)
    out = tr(item)
    assert isinstance(out, list) and len(out) == 5
    for s in out:
        assert s["image"].shape == (3, 32, 32) and s["image"].dtype == torch.float32
        assert s["label"].shape == (1, 32, 32) and s["label"].dtype == torch.int64
        assert 0.0 <= float(s["image"].min()) and float(s["image"].max()) <= 1.0
        assert torch.equal(s["image"][0], s["image"][1])  # channel repeat
        assert set(s["label"].unique().tolist()) <= {0, 5, 8}
        assert int((s["label"] > 0).sum()) > 0  # foreground_fraction 1: every slice has an organ


def test_rand_sample_slices_foreground_fraction():
    label = torch.zeros(1, 4, 4, 100)
    label[0, 1, 1, 10:20] = 1  # foreground in 10 of 100 slices
    label[0, 2, 2, 90] = 2  # a small class in a single slice
    image = torch.arange(100, dtype=torch.float32).expand(1, 4, 4, 100).clone()
    sampler = RandSampleSlicesd(["image", "label"], num_samples=400, foreground_fraction=0.5)
    sampler.set_random_state(1)
    out = sampler({"image": image, "label": label, "case_id": "x"})
    idx = np.array([int(o["image"][0, 0, 0]) for o in out])
    assert all(o["image"].shape == (1, 4, 4) and o["case_id"] == "x" for o in out)
    assert all(int(o["image"].meta["slice_index"]) == i for o, i in zip(out, idx))
    fg = np.isin(idx, list(range(10, 20)) + [90]).mean()
    assert 0.45 < fg < 0.65  # 50 % forced foreground + ~5.5 % of the uniform draws
    balanced = RandSampleSlicesd(["image", "label"], num_samples=400, foreground_fraction=1.0, class_balanced=True)
    balanced.set_random_state(1)
    idx = np.array([int(o["image"][0, 0, 0]) for o in balanced({"image": image, "label": label})])
    assert 0.4 < (idx == 90).mean() < 0.6  # class 2 drawn half of the time despite 1 slice


def test_align_to_reference_reorders_flipped_label(tmp_path):
    shape, spacing = (6, 5, 4), (0.9, 0.9, 2.0)
    aff_lps = affine_for(spacing, "LPS", (30.0, 40.0, 0.0))
    label = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape)
    # the same grid stored LAS (rows flipped), as TotalSegmentator writes the shared DICOM's label
    aff_las = aff_lps.copy()
    aff_las[:3, 1] *= -1
    aff_las[:3, 3] = aff_lps[:3, :3] @ [0, shape[1] - 1, 0] + aff_lps[:3, 3]
    write_nifti(tmp_path / "img.nii.gz", np.zeros(shape, np.int16), aff_lps)
    write_nifti(tmp_path / "lab.nii.gz", label[:, ::-1, :], aff_las)
    d = LoadVolumed(["image", "label"])({"image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "lab.nii.gz")})
    out = AlignToReferenced("label")(d)["label"]
    assert np.array_equal(out[0].numpy(), label) and np.allclose(out.affine.numpy(), aff_lps)


def test_volume_reader_works_in_monai_loadimaged(tmp_path):
    item, hu, _, aff = _ct_case(tmp_path)
    d = LoadImaged("image", reader=VolumeReader(), ensure_channel_first=True)(item)
    assert d["image"].shape == (1, *hu.shape) and np.allclose(d["image"].affine.numpy(), aff)
    assert np.array_equal(d["image"][0].numpy(), hu)


# --------------------------------------------------------------------------------------------
# Acceptance 3: inverting the inference preprocessing restores shape and affine
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("codes", ["RAS", "LPS"])
def test_inference_preprocessing_inverts_to_input_geometry(tmp_path, codes):
    item, hu, label, aff = _ct_case(tmp_path, codes=codes, shape=(24, 20, 10), spacing=(0.7, 0.9, 3.0))
    pre = ct_inference_preprocessing(img_size=48)
    d = pre({"image": item["image"]})
    assert d["image"].shape == (1, 48, 48, 10)  # in-plane resized, depth (axial slices) last
    assert "".join(nib.aff2axcodes(d["image"].affine.numpy())) == AXCODES
    pred = torch.rand(9, 48, 48, 10)
    d["pred"] = MetaTensor(pred, meta=dict(d["image"].meta))
    out = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False)(d)["pred"]
    assert tuple(out.shape) == (9, *hu.shape)
    assert np.allclose(out.affine.numpy(), aff, atol=1e-6)
    # written to disk in the original geometry
    SaveImaged("pred", output_dir=str(tmp_path / "out"), output_postfix="seg", separate_folder=False, print_log=False)({"pred": out.argmax(0, keepdim=True)})
    written = nib.load(str(tmp_path / "out" / f"img_{codes}_seg.nii.gz"))
    assert written.shape[:3] == hu.shape and np.allclose(written.affine, aff, atol=1e-5)


@pytest.mark.parametrize("codes", ["RAS", "LPS"])
def test_inverted_label_round_trip_is_exact(tmp_path, codes):
    """A label moved into model space like the image and inverted with nearest comes back identical."""
    from monai.transforms import Orientationd, Resized

    item, _, label, aff = _ct_case(tmp_path, codes=codes, shape=(24, 16, 10))  # integer zoom factors
    pre = ct_inference_preprocessing(img_size=48, label_key="label")
    d = pre(dict(item))
    assert d["label"].shape == (1, 24, 16, 10)  # kept in the original geometry for metrics
    expected = remap_labels(label, "synapse", "btcv")
    assert np.array_equal(d["label"][0].numpy(), expected)
    model_space = Compose([Orientationd("x", axcodes=AXCODES, labels=None), Resized("x", spatial_size=(48, 48, -1), mode="nearest")])(
        {"x": d["label"].clone()}
    )["x"]
    d["pred"] = MetaTensor(model_space.as_tensor(), meta=dict(d["image"].meta))
    out = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=True)(d)["pred"]
    assert np.array_equal(out[0].numpy(), expected) and np.allclose(out.affine.numpy(), aff)


# --------------------------------------------------------------------------------------------
# 2D and TransUNet pipelines
# --------------------------------------------------------------------------------------------


def test_image2d_pipelines(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (30, 40, 3)).astype(np.uint8)
    mask = np.zeros((30, 40), np.uint8)
    mask[5:20, 10:30] = 200
    mask[0, 0] = 100  # below the threshold
    write_png(tmp_path / "i.png", image)
    write_png(tmp_path / "m.png", mask)
    item = {"image": str(tmp_path / "i.png"), "label": str(tmp_path / "m.png")}
    tr = image2d_train_transforms(img_size=32, rotate_prob=0, flip_prob=0)
    out = tr(item)
    assert out["image"].shape == (3, 32, 32) and out["image"].dtype == torch.float32
    assert 0 <= float(out["image"].min()) and float(out["image"].max()) <= 1
    assert out["label"].shape == (1, 32, 32) and set(out["label"].unique().tolist()) == {0, 1}
    pre = image2d_inference_preprocessing(img_size=32, label_key="label")
    d = pre(item)
    assert d["image"].shape == (3, 32, 32) and d["label"].shape == (1, 30, 40)
    assert int(d["label"].sum()) == 15 * 20
    d["pred"] = MetaTensor(torch.rand(2, 32, 32), meta=dict(d["image"].meta))
    inv = Invertd("pred", transform=pre, orig_keys="image")(d)["pred"]
    assert inv.shape == (2, 30, 40)
    aug = image2d_train_transforms(img_size=32)
    aug.set_random_state(3)
    assert aug(item)["label"].shape == (1, 32, 32)


def test_transunet_pipelines(tmp_path):
    root = make_transunet_tree(tmp_path, {5: 1}, test_cases=[1], size=16, depth=4)
    npz = str(root / "train_npz" / "case0005_slice000.npz")
    out = synapse_npz_train_transforms(img_size=32)({"image": npz, "label": npz})
    assert out["image"].shape == (3, 32, 32) and out["label"].shape == (1, 32, 32)
    assert set(out["label"].unique().tolist()) <= {0, 5, 8}
    h5 = str(root / "test_vol_h5" / "case0001.npy.h5")
    pre = synapse_h5_preprocessing(img_size=32)
    d = pre({"image": h5, "label": h5})
    assert d["image"].shape == (1, 32, 32, 4) and d["label"].shape == (1, 16, 16, 4)
    d["pred"] = MetaTensor(torch.rand(9, 32, 32, 4), meta=dict(d["image"].meta))
    assert Invertd("pred", transform=pre, orig_keys="image")(d)["pred"].shape == (9, 16, 16, 4)


def test_transunet_validation_case_stacks_its_slices_into_a_volume(tmp_path):
    # TransUNet ships training cases as slices only: a validation case is its slices stacked in slice order
    root = make_transunet_tree(tmp_path, {5: 3, 6: 2}, test_cases=[], size=16)
    items = [
        {"case_id": f"{c:04d}", "slice": k, "image": str(root / "train_npz" / f"case{c:04d}_slice{k:03d}.npz")}
        for c, k in [(5, 2), (6, 0), (5, 0), (6, 1), (5, 1)]
    ]
    for item in items:
        item["label"] = item["image"]
    volumes = slices_as_volumes(items)
    assert [v["case_id"] for v in volumes] == ["0005", "0006"] and [v["slices"] for v in volumes] == [[0, 1, 2], [0, 1]]
    pre = synapse_h5_preprocessing(img_size=32)
    d = pre(volumes[0])
    assert d["image"].shape == (1, 32, 32, 3) and d["label"].shape == (1, 16, 16, 3)
    for k in range(3):
        with np.load(root / "train_npz" / f"case0005_slice{k:03d}.npz") as npz:
            np.testing.assert_array_equal(d["label"][0, ..., k].numpy(), npz["label"])
    d["pred"] = MetaTensor(torch.rand(9, 32, 32, 3), meta=dict(d["image"].meta))
    assert Invertd("pred", transform=pre, orig_keys="image")(d)["pred"].shape == (9, 16, 16, 3)
    with pytest.raises(DataError, match="a list of 3 slice files"):
        LoadArrayd(keys="image", ndim=2)({"image": volumes[0]["image"]})


def test_transforms_for_datalist_takes_slices_per_volume_for_every_format():
    # train.json passes num_slices whatever the format; only the volume pipeline samples slices
    for fmt in ("volume", "transunet", "image2d"):
        assert isinstance(transforms_for_datalist({"format": fmt}, "training", img_size=32, num_slices=3), Compose)
    samplers = [t for t in transforms_for_datalist({"format": "volume"}, "training", num_slices=3).transforms if isinstance(t, RandSampleSlicesd)]
    assert len(samplers) == 1 and samplers[0].num_samples == 3


def test_transforms_for_datalist_picks_pipeline():
    assert isinstance(transforms_for_datalist({"format": "volume"}, "training", img_size=32), Compose)
    names = [type(t).__name__ for t in transforms_for_datalist({"format": "image2d", "mask_threshold": 0}, "test").transforms]
    assert names[:2] == ["LoadImage2Dd", "LoadMask2Dd"]
    names = [type(t).__name__ for t in transforms_for_datalist({"format": "transunet"}, "training").transforms]
    assert names[0] == "LoadArrayd"
    with pytest.raises(ValueError):
        transforms_for_datalist({"format": "nope"}, "training")
