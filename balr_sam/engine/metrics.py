"""Ignite metrics for validation in the bundle: the product's metrics, accumulated on the device.

- :class:`SegmentationMetrics`: per-case, per-class Dice/IoU/HD95 of CT label maps (``train.json``),
  stored as protocol-free rows so that either empty-case protocol can be applied afterwards.
- :class:`BinaryProtocolMetrics`: Dice and IoU of binary 2D masks by the ISIC 2017 (pooled) or
  PraNet (per image) protocol (``isic2017.json``, ``polyp.json``).

Both compute with the pure functions of :mod:`balr_sam.metrics`, so validation reports the same
numbers as the evaluators of :mod:`balr_sam.evaluation`, and both gather their rows over all
ranks before aggregating in distributed runs.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from balr_sam.metrics import (
    PROTOCOLS,
    PROTOCOLS_2D,
    RAW_COLUMNS,
    SpacingLike,
    as_label_tensor,
    as_spacing,
    confusion_summary,
    raw_case_metrics,
    summarize_metrics,
)

__all__ = ["BinaryProtocolMetrics", "SegmentationMetrics"]

try:  # pytorch-ignite is a runtime dependency; keep the module importable without it.
    from ignite.metrics import Metric as _IgniteMetric
except ImportError:  # pragma: no cover
    _IgniteMetric = object  # type: ignore[assignment,misc]


def _init_ignite_metric(metric: Any, output_transform: Callable, device: Union[str, torch.device]) -> None:
    """Ignite's ``Metric.__init__`` for ``metric`` (with ``skip_unrolling=True`` where Ignite has it:
    lists of items stay as they are); without Ignite, just ``metric._device`` and ``metric.reset()``."""
    if _IgniteMetric is not object:
        kwargs: Dict[str, Any] = {"output_transform": output_transform, "device": device}
        if "skip_unrolling" in inspect.signature(_IgniteMetric.__init__).parameters:
            kwargs["skip_unrolling"] = True
        _IgniteMetric.__init__(metric, **kwargs)
    else:  # pragma: no cover
        metric._device = torch.device(device)
        metric.reset()


def _gather_rows(rows: Sequence[torch.Tensor], row_shape: Tuple[int, ...], device: Union[str, torch.device]) -> torch.Tensor:
    """The accumulated per-case rows stacked (``0 x row_shape`` float64 on ``device`` when there
    are none), concatenated over all ranks in distributed runs."""
    if rows:
        data = torch.stack(list(rows))
    else:
        data = torch.zeros((0, *row_shape), dtype=torch.float64, device=device)
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            from monai.utils import evenly_divisible_all_gather

            data = evenly_divisible_all_gather(data, concat=True)
    except ImportError:  # pragma: no cover
        pass
    return data


def _item_labels(x: torch.Tensor) -> torch.Tensor:
    """Channel-first item ``C x *spatial`` -> label map: argmax if C > 1, else the single channel."""
    if x.shape[0] > 1:
        return x.argmax(dim=0)
    lab = x[0]
    if lab.is_floating_point():
        lab = lab.round()
    return lab.to(torch.int64)


def _affine_spacing(x: Any, index: Optional[int], spatial_dims: int) -> Optional[Tuple[float, ...]]:
    """Voxel size from a MetaTensor's affine (column norms), if it has one of the right size."""
    affine = getattr(x, "affine", None)
    if not isinstance(affine, torch.Tensor):
        return None
    aff = affine
    if aff.ndim == 3:
        if index is None or index >= aff.shape[0]:
            return None
        aff = aff[index]
    if aff.ndim != 2 or aff.shape[0] != spatial_dims + 1 or aff.shape[1] != spatial_dims + 1:
        return None
    sp = torch.linalg.norm(aff[:spatial_dims, :spatial_dims].to(torch.float64), dim=0).cpu().tolist()
    return tuple(float(s) for s in sp) if all(s > 0 for s in sp) else None


class SegmentationMetrics(_IgniteMetric):  # type: ignore[misc,valid-type]
    """Per-case, per-class Dice/IoU/HD95 (mm and voxel) accumulated on the device; an Ignite ``Metric``.

    ``update((y_pred, y))`` accepts batch-first tensors ``B x K x *spatial`` (one-hot, logits or
    probabilities: argmax over K) or ``B x 1 x *spatial`` (label maps), or lists of channel-first
    items ``K x *spatial`` (MONAI's decollated batches). ``spatial_dims`` (2 or 3) removes the
    ambiguity of a 4-D tensor (a 2D batch, or a single 3D item); without it a 4-D tensor is a 2D
    batch. Every case is computed at once on the tensors' device and stored as a ``K x 6`` row
    block (:data:`~balr_sam.metrics.RAW_COLUMNS`) on ``device``; ``aggregate()`` applies the protocol.

    Spacing for ``hd95_mm``: ``spacing`` if given, else the affine of a MetaTensor ``y`` (or
    ``y_pred``), else unit spacing (then mm equals voxels).

    ``compute()`` returns a flat dict of floats for ``engine.state.metrics``: ``mean_dice``,
    ``mean_iou``, ``mean_hd95`` (primary convention of the protocol), ``mean_hd95_mm``,
    ``mean_hd95_voxel`` and ``dice/<name>``, ``hd95/<name>`` per class (NaN where undefined).
    In distributed runs the rows of all ranks are gathered before aggregation.

    Args:
        classes: class ids to evaluate (default: 1..num_classes-1 if ``num_classes`` is given).
        num_classes: alternative to ``classes``.
        protocol: ``transunet`` or ``clinical``.
        spacing: fixed voxel size for ``hd95_mm``.
        spatial_dims: 2 or 3, see above.
        class_names: id -> name used in the ``compute()`` keys.
        method: surface-distance method (:func:`balr_sam.metrics.surface_distances`).
        output_transform: Ignite's transform of ``engine.state.output`` into ``(y_pred, y)``.
        device: where the accumulated rows live.
    """

    def __init__(
        self,
        classes: Optional[Sequence[int]] = None,
        num_classes: Optional[int] = None,
        protocol: str = "transunet",
        spacing: SpacingLike = None,
        spatial_dims: Optional[int] = None,
        class_names: Optional[Mapping[int, str]] = None,
        method: str = "auto",
        output_transform: Callable = lambda x: x,
        device: Union[str, torch.device] = "cpu",
    ) -> None:
        if classes is None:
            if num_classes is None:
                raise ValueError("give classes or num_classes")
            classes = list(range(1, int(num_classes)))
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
        self.classes = [int(c) for c in classes]
        self.protocol = protocol
        self.spacing = spacing
        self.spatial_dims = spatial_dims
        self.class_names = dict(class_names) if class_names else {c: str(c) for c in self.classes}
        self.method = method
        self._rows: List[torch.Tensor] = []
        _init_ignite_metric(self, output_transform, device)

    # Ignite API -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every accumulated case."""
        self._rows = []

    def _items(self, x: Any) -> List[Tuple[torch.Tensor, Any, Optional[int]]]:
        if isinstance(x, (list, tuple)):
            return [(as_label_tensor(t), t, None) for t in x]
        t = as_label_tensor(x)
        batched = t.ndim == 5 or (t.ndim == 4 and self.spatial_dims != 3)
        if self.spatial_dims is not None:
            batched = t.ndim == self.spatial_dims + 2
        if batched:
            return [(t[b], x, b) for b in range(t.shape[0])]
        return [(t, x, None)]

    def update(self, output: Sequence[Any]) -> None:
        """Add the cases of one batch: ``output = (y_pred, y)``."""
        y_pred, y = output[0], output[1]
        preds, gts = self._items(y_pred), self._items(y)
        if len(preds) != len(gts):
            raise ValueError(f"y_pred has {len(preds)} items but y has {len(gts)}")
        for (p, p_src, pi), (g, g_src, gi) in zip(preds, gts):
            sd = p.ndim - 1
            spacing = as_spacing(self.spacing, sd) if self.spacing is not None else None
            if spacing is None:
                spacing = _affine_spacing(g_src, gi, sd) or _affine_spacing(p_src, pi, sd)
            p_lab = _item_labels(p)
            g_lab = _item_labels(g.to(p.device))
            raw = raw_case_metrics(p_lab, g_lab, self.classes, spacing=spacing, method=self.method)
            self._rows.append(raw.to(self._device))

    def _gathered(self) -> torch.Tensor:
        return _gather_rows(self._rows, (len(self.classes), len(RAW_COLUMNS)), self._device)

    def aggregate(self, protocol: Optional[str] = None) -> Dict[str, Any]:
        """Summary of all accumulated cases (:func:`balr_sam.metrics.summarize_metrics`) under ``protocol``."""
        return summarize_metrics(self._gathered(), self.classes, protocol or self.protocol, class_names=self.class_names)

    def get_buffer(self) -> torch.Tensor:
        """The accumulated ``N x K x 6`` raw rows (:data:`~balr_sam.metrics.RAW_COLUMNS`)."""
        return self._gathered()

    def compute(self) -> Dict[str, float]:
        """Flat dict of floats (see the class docstring) for ``engine.state.metrics``."""
        summary = self.aggregate()

        def f(v: Optional[float]) -> float:
            return float("nan") if v is None else float(v)

        out = {
            "mean_dice": f(summary["mean"]["dice"]),
            "mean_iou": f(summary["mean"]["iou"]),
            "mean_hd95": f(summary["mean"]["hd95"]),
            "mean_hd95_mm": f(summary["mean"]["hd95_mm"]),
            "mean_hd95_voxel": f(summary["mean"]["hd95_voxel"]),
        }
        primary = summary["primary_hd95"]
        for c in self.classes:
            entry = summary["per_class"][str(c)]
            name = self.class_names.get(c, str(c))
            out[f"dice/{name}"] = f(entry["dice"])
            out[f"hd95/{name}"] = f(entry[f"hd95_{primary}"])
        return out


# --------------------------------------------------------------------------------------------
# 2D protocols
# --------------------------------------------------------------------------------------------


def _foreground(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """Channel-first item ``C x H x W`` -> boolean foreground: argmax == 1 if C > 1, else ``>= threshold``."""
    if x.shape[0] > 1:
        return x.argmax(dim=0) == 1
    return x[0].to(torch.float64) >= threshold


class BinaryProtocolMetrics(_IgniteMetric):  # type: ignore[misc,valid-type]
    """Dice and IoU of binary 2D segmentation by the ISIC 2017 or PraNet protocol; an Ignite ``Metric``.

    ``update((y_pred, y))`` takes batch-first tensors ``B x C x H x W`` or lists of channel-first
    items ``C x H x W`` (MONAI's decollated batches; images of different sizes). ``C > 1``: the
    foreground is where the argmax is class 1 (logits, probabilities, one-hot); ``C == 1``: a
    label map or probability, foreground ``>= threshold``. The per-image confusion counts (TP,
    FP, FN, TN) are kept on ``device``; ``compute()`` returns ``{"dice", "iou"}`` pooled over
    all pixels (``isic2017``) or averaged over images (``pranet``), the same numbers as
    :func:`balr_sam.metrics.pooled_confusion_dice_iou` / :func:`~balr_sam.metrics.per_image_dice_iou`.
    In distributed runs the counts of all ranks are gathered first.

    Args:
        protocol: ``"isic2017"`` or ``"pranet"``.
        threshold: for single-channel predictions.
        output_transform: Ignite's transform of ``engine.state.output`` into ``(y_pred, y)``.
        device: where the counts live.
    """

    def __init__(
        self, protocol: str = "pranet", threshold: float = 0.5, output_transform: Callable = lambda x: x, device: Union[str, torch.device] = "cpu"
    ) -> None:
        if protocol not in PROTOCOLS_2D:
            raise ValueError(f"unknown 2D protocol {protocol!r}; choose one of {sorted(PROTOCOLS_2D)}")
        self.protocol = protocol
        self.threshold = threshold
        self._counts: List[torch.Tensor] = []
        _init_ignite_metric(self, output_transform, device)

    def reset(self) -> None:
        """Forget every accumulated image."""
        self._counts = []

    @staticmethod
    def _items(x: Any) -> List[torch.Tensor]:
        if isinstance(x, (list, tuple)):
            return [as_label_tensor(t) for t in x]
        t = as_label_tensor(x)
        return [t[b] for b in range(t.shape[0])] if t.ndim == 4 else [t]

    def update(self, output: Sequence[Any]) -> None:
        """Add the images of one batch: ``output = (y_pred, y)``."""
        preds, gts = self._items(output[0]), self._items(output[1])
        if len(preds) != len(gts):
            raise ValueError(f"y_pred has {len(preds)} items but y has {len(gts)}")
        for p, g in zip(preds, gts):
            pb = _foreground(p, self.threshold)
            gb = _foreground(g.to(pb.device), 0.5)
            if pb.shape != gb.shape:
                raise ValueError(f"prediction {tuple(pb.shape)} and ground truth {tuple(gb.shape)} differ in size")
            counts = torch.stack([(pb & gb).sum(), (pb & ~gb).sum(), (~pb & gb).sum(), (~pb & ~gb).sum()])
            self._counts.append(counts.to(torch.float64).to(self._device))

    def compute(self) -> Dict[str, float]:
        """``{"dice", "iou"}`` by the protocol (NaN before any update)."""
        data = _gather_rows(self._counts, (4,), self._device)
        if data.shape[0] == 0:
            return {"dice": float("nan"), "iou": float("nan")}
        if self.protocol == "isic2017":
            s = confusion_summary(*data.sum(dim=0).tolist())
            return {"dice": s["dice"], "iou": s["miou"]}
        # agreement on an empty image scores 1, as per_image_dice_iou
        scores = [confusion_summary(*row, empty_score=1.0) for row in data.tolist()]
        dice, iou = (torch.tensor([s[k] for s in scores], dtype=torch.float64, device=data.device) for k in ("dice", "miou"))
        return {"dice": float(dice.mean()), "iou": float(iou.mean())}
