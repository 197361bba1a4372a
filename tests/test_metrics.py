"""Metrics agree with medpy (Dice 1e-6, HD95 1e-3) and follow the SPEC section 4 protocols."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from medpy.metric import binary as mb
from scipy import ndimage as ndi

from balr_sam import metrics as M
from balr_sam.engine import SegmentationMetrics

DICE_TOL = 1e-6
HD_TOL = 1e-3
METHODS = ("auto", "cdist", "kdtree", "edt")


def _blobs(rng: np.random.Generator, shape, density=0.02, grow=2) -> np.ndarray:
    seeds = rng.random(shape) < density
    mask = ndi.binary_dilation(seeds, iterations=int(grow)) if grow else seeds
    if not mask.any():
        mask[tuple(int(rng.integers(0, s)) for s in shape)] = True
    return mask


def _check_pair(a: np.ndarray, b: np.ndarray, spacing, methods=METHODS) -> None:
    assert abs(M.dice(a, b).item() - mb.dc(a, b)) < DICE_TOL
    ref_vox = mb.hd95(a, b)
    ref = mb.hd95(a, b, voxelspacing=spacing) if spacing is not None else ref_vox
    for method in methods:
        assert abs(M.hd95(a, b, method=method).item() - ref_vox) < HD_TOL, method
        assert abs(M.hd95(a, b, spacing=spacing, method=method).item() - ref) < HD_TOL, method


# --- agreement with medpy ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ndim", [2, 3])
def test_random_shapes_match_medpy(seed, ndim):
    rng = np.random.default_rng(1000 * ndim + seed)
    shape = tuple(int(s) for s in rng.integers(6, 28 if ndim == 3 else 60, size=ndim))
    a = _blobs(rng, shape, density=0.01 + 0.03 * rng.random(), grow=rng.integers(0, 3))
    b = _blobs(rng, shape, density=0.01 + 0.03 * rng.random(), grow=rng.integers(0, 3))
    spacing = tuple(float(s) for s in rng.uniform(0.3, 4.0, size=ndim))
    _check_pair(a, b, spacing)


@pytest.mark.parametrize("ndim", [2, 3])
def test_overlapping_shapes_match_medpy(ndim):
    """A shape against a shifted, eroded copy of itself: realistic segmentation errors."""
    rng = np.random.default_rng(7 + ndim)
    shape = (40, 36, 14)[:ndim]
    gt = ndi.binary_dilation(_blobs(rng, shape, 0.004, 0), iterations=4)
    pred = ndi.binary_erosion(np.roll(gt, 2, axis=0), iterations=1) | _blobs(rng, shape, 0.001, 1)
    _check_pair(pred, gt, (0.8, 1.1, 3.0)[:ndim])


def test_single_voxels_match_medpy():
    shape = (9, 11, 7)
    a = np.zeros(shape, bool)
    b = np.zeros(shape, bool)
    a[2, 3, 4] = True
    b[2, 3, 4] = True
    _check_pair(a, b, (0.5, 0.7, 2.5))  # identical voxels: 0
    b[:] = False
    b[7, 1, 0] = True
    _check_pair(a, b, (0.5, 0.7, 2.5))
    big = ndi.binary_dilation(b, iterations=2)
    _check_pair(a, big, (0.5, 0.7, 2.5))
    # 2D single pixels
    a2, b2 = np.zeros((5, 6), bool), np.zeros((5, 6), bool)
    a2[0, 0], b2[4, 5] = True, True
    _check_pair(a2, b2, (1.5, 0.25))


def test_masks_touching_the_borders_match_medpy():
    """Voxels on the array border are surface voxels (medpy's erosion has border_value 0)."""
    shape = (12, 10, 8)
    full = np.ones(shape, bool)
    inner = np.zeros(shape, bool)
    inner[3:9, 2:7, 2:6] = True
    _check_pair(full, inner, (1.0, 2.0, 3.5))
    slab = np.zeros(shape, bool)
    slab[:, :, :3] = True  # touches five faces
    corner = np.zeros(shape, bool)
    corner[-4:, -3:, -2:] = True
    _check_pair(slab, corner, (0.9, 0.9, 4.0))
    _check_pair(slab, full, None)
    # thin structures: every voxel is surface
    line = np.zeros(shape, bool)
    line[:, 5, 4] = True
    plane = np.zeros(shape, bool)
    plane[6] = True
    _check_pair(line, plane, (0.6, 1.0, 2.0))
    # 2D, touching all four edges
    a = np.zeros((15, 13), bool)
    a[0, :] = a[-1, :] = a[:, 0] = a[:, -1] = True
    b = np.zeros((15, 13), bool)
    b[4:11, 3:10] = True
    _check_pair(a, b, (0.4, 1.7))


@pytest.mark.parametrize("spacing", [(0.7, 1.3, 5.0), (3.0, 0.5, 0.5), (2.0, 2.0, 2.0)])
def test_anisotropic_spacing_matches_medpy(spacing):
    rng = np.random.default_rng(42)
    a = _blobs(rng, (20, 18, 10), 0.01, 2)
    b = _blobs(rng, (20, 18, 10), 0.01, 1)
    _check_pair(a, b, spacing)


def test_directed_surface_distances_match_medpy_definition():
    rng = np.random.default_rng(3)
    a = _blobs(rng, (16, 14, 9), 0.02, 1)
    b = _blobs(rng, (16, 14, 9), 0.02, 1)
    sp = (0.5, 1.5, 2.5)
    from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure

    st = generate_binary_structure(3, 1)
    sa = a ^ binary_erosion(a, structure=st)
    sb = b ^ binary_erosion(b, structure=st)
    ref_ab = np.sort(distance_transform_edt(~sb, sampling=sp)[sa])
    ref_ba = np.sort(distance_transform_edt(~sa, sampling=sp)[sb])
    for method in METHODS:
        d_ab, d_ba = M.surface_distances(a, b, spacing=sp, method=method)
        np.testing.assert_allclose(np.sort(d_ab.numpy()), ref_ab, atol=1e-9)
        np.testing.assert_allclose(np.sort(d_ba.numpy()), ref_ba, atol=1e-9)
    np.testing.assert_array_equal(M.mask_surface(a).numpy(), sa)


def test_cdist_chunking_does_not_change_the_result():
    rng = np.random.default_rng(5)
    a = _blobs(rng, (12, 12, 6), 0.02, 1)
    b = _blobs(rng, (12, 12, 6), 0.02, 1)
    ref = mb.hd95(a, b, voxelspacing=(1.0, 0.8, 2.0))
    for chunk in (1, 37, 1000, 2**24):  # 1: one row per block
        got = M.hd95(a, b, spacing=(1.0, 0.8, 2.0), method="cdist", chunk_size=chunk).item()
        assert abs(got - ref) < HD_TOL


def test_batched_surface_equals_per_mask_surface():
    rng = np.random.default_rng(9)
    masks = np.stack([_blobs(rng, (12, 10, 6), 0.03, 1) for _ in range(4)])
    batched = M.mask_surface(masks, spatial_dims=3).numpy()
    for k in range(4):
        np.testing.assert_array_equal(batched[k], M.mask_surface(masks[k]).numpy())


def test_monai_hd95_differs_from_medpy_but_ours_matches():
    """MONAI takes the max of the two directed 95th percentiles; medpy pools both sets."""
    from monai.metrics import compute_hausdorff_distance

    rng = np.random.default_rng(0)
    a = ndi.binary_dilation(rng.random((30, 40, 20)) > 0.995, iterations=3)
    b = ndi.binary_dilation(rng.random((30, 40, 20)) > 0.995, iterations=2)
    sp = (0.8, 1.2, 3.0)
    ref = mb.hd95(a, b, voxelspacing=sp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        monai_value = compute_hausdorff_distance(
            torch.tensor(a)[None, None].float(),
            torch.tensor(b)[None, None].float(),
            include_background=True,
            percentile=95,
            spacing=sp,
        ).item()
    assert abs(monai_value - ref) > 0.1
    assert abs(M.hd95(a, b, spacing=sp).item() - ref) < HD_TOL


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_medpy():
    rng = np.random.default_rng(11)
    a = _blobs(rng, (40, 30, 20), 0.01, 2)
    b = _blobs(rng, (40, 30, 20), 0.01, 2)
    sp = (0.7, 0.9, 2.5)
    ta, tb = torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()
    got = M.hd95(ta, tb, spacing=sp)
    assert got.device.type == "cuda"
    assert abs(got.item() - mb.hd95(a, b, voxelspacing=sp)) < HD_TOL
    raw = M.raw_case_metrics(ta.to(torch.uint8), tb.to(torch.uint8), [1], spacing=sp)
    assert raw.device.type == "cuda"
    assert abs(raw[0, 0].item() - mb.dc(a, b)) < DICE_TOL


# --- multi-class cases ---------------------------------------------------------------------------


def _label_pair(rng, shape, num_classes):
    gt = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    for c in range(1, num_classes):
        gt[_blobs(rng, shape, 0.004, 2)] = c
        pred[_blobs(rng, shape, 0.004, 2)] = c
    return pred, gt


@pytest.mark.parametrize("spacing", [None, (1.5, 1.5, 1.5), (0.8, 1.2, 3.0)])
def test_case_metrics_match_medpy_per_class(spacing):
    rng = np.random.default_rng(21)
    pred, gt = _label_pair(rng, (24, 22, 12), 4)
    gt[gt == 3] = 0  # class 3 absent from the ground truth
    raw = M.raw_case_metrics(pred, gt, [1, 2, 3, 4], spacing=spacing)
    assert raw.shape == (4, len(M.RAW_COLUMNS)) and raw.dtype == torch.float64
    for k, c in enumerate([1, 2]):
        p, g = pred == c, gt == c
        assert abs(raw[k, 0].item() - mb.dc(p, g)) < DICE_TOL
        assert abs(raw[k, 1].item() - mb.jc(p, g)) < DICE_TOL
        assert abs(raw[k, 3].item() - mb.hd95(p, g)) < HD_TOL
        ref_mm = mb.hd95(p, g, voxelspacing=spacing) if spacing else mb.hd95(p, g)
        assert abs(raw[k, 2].item() - ref_mm) < HD_TOL
    # class 3: prediction only; class 4: absent from both
    assert raw[2, 0].item() == 0.0 and math.isnan(raw[2, 2].item())
    assert raw[2, 4].item() == 1.0 and raw[2, 5].item() == 0.0
    assert math.isnan(raw[3, 0].item()) and raw[3, 4].item() == 0.0 and raw[3, 5].item() == 0.0


def test_confusion_counts():
    pred = np.array([[0, 1, 2], [2, 2, 0]])
    gt = np.array([[0, 1, 1], [2, 0, 0]])
    conf = M.confusion_counts(pred, gt).numpy()
    expected = np.zeros((3, 3), int)
    for p, g in zip(pred.ravel(), gt.ravel()):
        expected[g, p] += 1
    np.testing.assert_array_equal(conf, expected)
    np.testing.assert_array_equal(M.confusion_counts(pred, gt, chunk_voxels=2).numpy(), expected)
    with pytest.raises(ValueError):
        M.confusion_counts(np.array([-1, 0]), np.array([0, 0]))


# --- empty-case rules ----------------------------------------------------------------------------

_SHAPE = (10, 10, 6)


def _masks(kind: str):
    p = np.zeros(_SHAPE, np.uint8)
    g = np.zeros(_SHAPE, np.uint8)
    if kind in ("both", "pred_only"):
        p[2:6, 2:6, 1:4] = 1
    if kind in ("both", "gt_only"):
        g[3:7, 3:8, 2:5] = 1
    return p, g


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("pred_only", (1.0, 1.0, 0.0, 0.0)),  # prediction non-empty, GT empty -> Dice 1, HD95 0
        ("gt_only", (0.0, 0.0, 0.0, 0.0)),  # prediction empty -> Dice 0, HD95 0
        ("none", (0.0, 0.0, 0.0, 0.0)),  # prediction empty (GT empty too) -> Dice 0, HD95 0
    ],
)
def test_transunet_empty_rules(kind, expected):
    p, g = _masks(kind)
    got = M.compute_case_metrics(p, g, [1], spacing=(1.0, 1.0, 2.0), protocol="transunet")[1]
    assert (got["dice"], got["iou"], got["hd95_mm"], got["hd95_voxel"]) == expected
    assert got["pred_empty"] == (kind in ("gt_only", "none"))
    assert got["gt_empty"] == (kind in ("pred_only", "none"))


@pytest.mark.parametrize(
    "kind, dice, hd_nan",
    [("pred_only", 0.0, True), ("gt_only", 0.0, True), ("none", None, True)],
)
def test_clinical_empty_rules(kind, dice, hd_nan):
    p, g = _masks(kind)
    got = M.compute_case_metrics(p, g, [1], spacing=(1.0, 1.0, 2.0), protocol="clinical")[1]
    if dice is None:
        assert math.isnan(got["dice"]) and math.isnan(got["iou"])
    else:
        assert got["dice"] == dice and got["iou"] == dice
    assert math.isnan(got["hd95_mm"]) == hd_nan and math.isnan(got["hd95_voxel"]) == hd_nan


@pytest.mark.parametrize("protocol", M.PROTOCOLS)
def test_both_non_empty_is_computed_in_both_protocols(protocol):
    p, g = _masks("both")
    got = M.compute_case_metrics(p, g, [1], spacing=(1.0, 1.0, 2.0), protocol=protocol)[1]
    assert abs(got["dice"] - mb.dc(p, g)) < DICE_TOL
    assert abs(got["hd95_voxel"] - mb.hd95(p, g)) < HD_TOL
    assert abs(got["hd95_mm"] - mb.hd95(p, g, voxelspacing=(1.0, 1.0, 2.0))) < HD_TOL


def test_summary_means_and_empty_counts():
    """Mean over cases per class, then over classes; clinical NaNs are skipped and counted."""
    p_both, g_both = _masks("both")
    cases = [
        (p_both, g_both),  # computed
        _masks("pred_only"),  # false positive
        _masks("none"),  # true negative
        _masks("gt_only"),  # missed
    ]
    raw = torch.stack([M.raw_case_metrics(p, g, [1]) for p, g in cases])
    d, h = mb.dc(p_both, g_both), mb.hd95(p_both, g_both)

    tu = M.summarize_metrics(raw, [1], "transunet", class_names={1: "Organ"})
    assert tu["per_class"]["1"]["name"] == "Organ"
    assert abs(tu["per_class"]["1"]["dice"] - (d + 1 + 0 + 0) / 4) < DICE_TOL
    assert abs(tu["per_class"]["1"]["hd95_voxel"] - h / 4) < HD_TOL
    assert tu["primary_hd95"] == "voxel" and tu["mean"]["hd95"] == tu["mean"]["hd95_voxel"]

    cl = M.summarize_metrics(raw, [1], "clinical")
    assert abs(cl["per_class"]["1"]["dice"] - (d + 0 + 0) / 3) < DICE_TOL  # NaN (both empty) skipped
    assert abs(cl["per_class"]["1"]["hd95_mm"] - h) < HD_TOL  # only the computed case is defined
    counts = cl["empty_counts"]
    assert counts == {"n_gt_empty": 2, "n_pred_empty": 2, "n_both_empty": 1, "n_dice_nan": 1, "n_hd95_nan": 3}
    assert cl["primary_hd95"] == "mm"
    # a class with no defined value at all -> None (JSON null), never a perfect score
    only_empty = M.summarize_metrics(raw[2:3], [1], "clinical")
    assert only_empty["per_class"]["1"]["dice"] is None and only_empty["mean"]["dice"] is None


def test_mean_over_cases_then_over_classes():
    rng = np.random.default_rng(4)
    cases = [_label_pair(rng, (16, 16, 8), 3) for _ in range(3)]
    raw = torch.stack([M.raw_case_metrics(p, g, [1, 2]) for p, g in cases])
    s = M.summarize_metrics(raw, [1, 2], "transunet")
    per_class = []
    for c in (1, 2):
        vals = []
        for p, g in cases:
            pc, gc = p == c, g == c
            vals.append(mb.dc(pc, gc) if pc.any() and gc.any() else (1.0 if pc.any() else 0.0))
        per_class.append(np.mean(vals))
        assert abs(s["per_class"][str(c)]["dice"] - per_class[-1]) < DICE_TOL
    assert abs(s["mean"]["dice"] - np.mean(per_class)) < DICE_TOL


# --- Ignite metric -------------------------------------------------------------------------------


def _direct_summary(pairs, classes, protocol, spacing=None):
    raw = torch.stack([M.raw_case_metrics(p, g, classes, spacing=spacing) for p, g in pairs])
    return M.summarize_metrics(raw, classes, protocol)


def test_segmentation_metrics_with_ignite_engine_one_hot_2d():
    from ignite.engine import Engine

    rng = np.random.default_rng(8)
    pairs = [_label_pair(rng, (32, 28), 3) for _ in range(5)]
    batches = [pairs[:2], pairs[2:]]

    def step(engine, batch):
        preds = torch.stack([torch.from_numpy(p).long() for p, _ in batch])
        gts = torch.stack([torch.from_numpy(g).long() for _, g in batch])
        one_hot = torch.nn.functional.one_hot(preds, 3).permute(0, 3, 1, 2).float()  # B x K x H x W
        return one_hot, gts[:, None]  # labels B x 1 x H x W

    engine = Engine(step)
    metric = SegmentationMetrics(classes=[1, 2], protocol="transunet", class_names={1: "a", 2: "b"})
    metric.attach(engine, "seg")
    engine.run(batches, max_epochs=1)
    ref = _direct_summary(pairs, [1, 2], "transunet")
    out = engine.state.metrics["seg"]
    assert abs(out["mean_dice"] - ref["mean"]["dice"]) < DICE_TOL
    assert abs(out["mean_hd95"] - ref["mean"]["hd95_voxel"]) < HD_TOL
    assert abs(out["dice/a"] - ref["per_class"]["1"]["dice"]) < DICE_TOL
    assert metric.get_buffer().shape == (5, 2, len(M.RAW_COLUMNS))
    # the same engine run again starts from scratch (reset at epoch start)
    engine.run(batches, max_epochs=1)
    assert abs(engine.state.metrics["seg"]["mean_dice"] - ref["mean"]["dice"]) < DICE_TOL


def test_segmentation_metrics_3d_lists_and_metatensor_spacing():
    from monai.data import MetaTensor

    rng = np.random.default_rng(10)
    pairs = [_label_pair(rng, (16, 14, 8), 3) for _ in range(3)]
    spacing = (0.8, 1.2, 2.5)
    affine = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))
    metric = SegmentationMetrics(num_classes=3, protocol="clinical", spatial_dims=3)
    metric.reset()
    preds = [torch.nn.functional.one_hot(torch.from_numpy(p).long(), 3).permute(3, 0, 1, 2) for p, _ in pairs]
    gts = [MetaTensor(torch.from_numpy(g)[None].long(), affine=affine) for _, g in pairs]
    metric.update((preds[:2], gts[:2]))
    metric.update((preds[2], gts[2]))  # a single unbatched 3D item, spatial_dims=3
    summary = metric.aggregate()
    ref = _direct_summary(pairs, [1, 2], "clinical", spacing=spacing)
    assert abs(summary["mean"]["hd95_mm"] - ref["mean"]["hd95_mm"]) < HD_TOL
    assert abs(summary["mean"]["dice"] - ref["mean"]["dice"]) < DICE_TOL
    assert summary["num_cases"] == 3
    # the other protocol from the same accumulated rows
    assert metric.aggregate("transunet")["protocol"] == "transunet"
    assert abs(metric.compute()["mean_hd95"] - ref["mean"]["hd95_mm"]) < HD_TOL


# --- 2D protocols ------------------------------------------------------------------------------


def test_pooled_confusion_dice_iou_matches_manual_confusion():
    rng = np.random.default_rng(12)
    probs = [rng.random((20, 24)) for _ in range(4)]
    gts = [(rng.random((20, 24)) > 0.6).astype(np.uint8) * 255 for _ in range(4)]  # 0/255 masks
    out = M.pooled_confusion_dice_iou(probs, gts, threshold=0.5)
    y_pre = np.concatenate([(p >= 0.5).ravel() for p in probs])
    y_true = np.concatenate([(g >= 0.5).ravel() for g in gts])
    tp = int(np.sum(y_pre & y_true))
    fp = int(np.sum(y_pre & ~y_true))
    fn = int(np.sum(~y_pre & y_true))
    tn = int(np.sum(~y_pre & ~y_true))
    assert (out["tp"], out["fp"], out["fn"], out["tn"]) == (tp, fp, fn, tn)
    assert abs(out["dice"] - 2 * tp / (2 * tp + fp + fn)) < 1e-12
    assert abs(out["miou"] - tp / (tp + fp + fn)) < 1e-12
    assert abs(out["dice"] - mb.dc(y_pre, y_true)) < DICE_TOL
    assert abs(out["specificity"] - tn / (tn + fp)) < 1e-12
    # a stacked array is one image set as well
    same = M.pooled_confusion_dice_iou(np.stack(probs), np.stack(gts))
    assert same["dice"] == out["dice"]


def test_per_image_dice_iou_matches_medpy():
    rng = np.random.default_rng(13)
    preds = [rng.random((18, 22)) for _ in range(5)]
    gts = [_blobs(rng, (18, 22), 0.03, 2) for _ in range(5)]
    out = M.per_image_dice_iou(preds, gts)
    ref_d = [mb.dc(p >= 0.5, g) for p, g in zip(preds, gts)]
    ref_j = [mb.jc(p >= 0.5, g) for p, g in zip(preds, gts)]
    assert abs(out["mean_dice"] - np.mean(ref_d)) < DICE_TOL
    assert abs(out["mean_iou"] - np.mean(ref_j)) < DICE_TOL
    assert out["num_images"] == 5
    empty = M.per_image_dice_iou([np.zeros((4, 4))], [np.zeros((4, 4))])
    assert empty["mean_dice"] == 1.0 and empty["n_gt_empty"] == 1


def test_bad_arguments():
    a = np.ones((4, 4), bool)
    with pytest.raises(ValueError):
        M.hd95(a, a, spacing=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError):
        M.hd95(a, a, spacing=(1.0, -1.0))
    with pytest.raises(ValueError):
        M.surface_distances(a, np.zeros((4, 4), bool))
    with pytest.raises(ValueError):
        M.hd95(a, a, method="nope")
    with pytest.raises(ValueError):
        M.apply_protocol(torch.zeros(1, 6), "nope")
    assert math.isnan(M.hd95(a, np.zeros((4, 4), bool)).item())
    assert math.isnan(M.dice(np.zeros(3), np.zeros(3)).item())


# --- property test -----------------------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402


@st.composite
def _mask_pairs(draw):
    ndim = draw(st.sampled_from([2, 3]))
    shape = tuple(draw(st.lists(st.integers(1, 9), min_size=ndim, max_size=ndim)))
    a = draw(arrays(np.bool_, shape))
    b = draw(arrays(np.bool_, shape))
    spacing = tuple(draw(st.lists(st.floats(0.1, 5.0), min_size=ndim, max_size=ndim)))
    return a, b, spacing


@settings(max_examples=40, deadline=None, database=None)
@given(_mask_pairs())
def test_property_matches_medpy(pair):
    a, b, spacing = pair
    if not a.any() or not b.any():
        assert math.isnan(M.hd95(a, b).item())
        return
    _check_pair(a, b, spacing, methods=("auto", "edt"))
