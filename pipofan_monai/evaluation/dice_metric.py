# Copyright (c) pipofan-monai contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""Per-organ hard Dice during validation (the torch side of :mod:`pipofan_monai.evaluation.metrics`):
:py:class:`PartialDiceMetric`, a MONAI ``CumulativeIterationMetric`` for the bundle's ignite evaluator, and
:py:func:`partial_dice`, per-organ hard Dice that ignores organs not labeled in a sample's source dataset.

Kept apart from the per-case reports (numpy / scipy, surface distances, tables): this is what a training
imports on every validation, with label maps counted chunk by chunk (:func:`label_map_counts`) so that no
one-hot volume of a 512²×1000 CT is ever built.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from monai.data.meta_tensor import MetaTensor
from monai.metrics import CumulativeIterationMetric

from pipofan_monai.vocabulary.datasets import CLASS_NAMES
from pipofan_monai.vocabulary.masks import resolve_labeled_mask

__all__ = ["COUNT_CHUNK", "label_map_counts", "partial_dice", "PartialDiceMetric", "per_class_dice_metrics"]

#: voxels per chunk when counting label maps (:func:`label_map_counts`): 32 MiB of int64 indices
COUNT_CHUNK = 1 << 22


def label_map_counts(y_pred: Any, y: Any, num_classes: int, chunk: int = COUNT_CHUNK) -> torch.Tensor:
    """The confusion counts of two label maps, ``(B, K, K)`` int64 (``[b, true class, predicted class]``), counted
    ``chunk`` voxels at a time (no one-hot volume: a few MiB whatever the volume's size).

    Args:
        y_pred, y: ``(B, 1, spatial...)`` class indices (any integer or float type holding integers).
        num_classes: K; every value must lie in ``0 .. K-1``.

    Raises:
        ValueError: a value outside ``0 .. K-1`` or not an integer.
    """
    k = int(num_classes)
    p_all = y_pred.as_tensor() if isinstance(y_pred, MetaTensor) else torch.as_tensor(y_pred)
    g_all = y.as_tensor() if isinstance(y, MetaTensor) else torch.as_tensor(y)
    counts = torch.zeros((p_all.shape[0], k * k), dtype=torch.int64, device=p_all.device)
    for b in range(p_all.shape[0]):
        p_flat, g_flat = p_all[b].reshape(-1), g_all[b].reshape(-1)
        for i in range(0, p_flat.numel(), int(chunk)):
            pc, gc = p_flat[i:i + chunk], g_flat[i:i + chunk]
            for name, t in (("y_pred", pc), ("y", gc)):
                lo, hi = torch.aminmax(t)
                if float(lo) < 0 or float(hi) > k - 1 or (t.is_floating_point() and not bool((t == t.round()).all())):
                    raise ValueError(f"{name} must hold class indices 0..{k - 1} (a label map), got values in "
                                     f"[{float(lo):g}, {float(hi):g}]" + (" that are not all integers"
                                                                          if t.is_floating_point() else "") + ".")
            idx = gc.to(torch.int64) * k + pc.to(torch.int64)
            counts[b] += torch.bincount(idx, minlength=k * k)
    return counts.reshape(-1, k, k)


def partial_dice(
    y_pred: torch.Tensor,
    y: torch.Tensor,
    labeled_mask: torch.Tensor | None = None,
    include_background: bool = False,
    ignore_empty: bool = True,
    num_classes: int | None = None,
) -> torch.Tensor:
    """Per-sample, per-class hard Dice that is NaN for classes not labeled in the sample's source dataset.

    Args:
        y_pred: one-hot (binarized) prediction ``(B, K, H, W[, D])``; or, with ``num_classes``, a label map
            ``(B, 1, H, W[, D])`` of class indices (the classes are counted chunk by chunk,
            :func:`label_map_counts`: no one-hot volumes, the same Dice values).
        y: one-hot ground truth, same shape (a label map with ``num_classes``); when it is a MetaTensor with
            ``meta["labeled_mask"]`` (``(K,)`` or ``(B, K)`` 0/1) and ``labeled_mask`` is None, that mask is used.
        labeled_mask: ``(K,)`` or ``(B, K)`` 0/1; classes with 0 are not labeled -> NaN. None: all labeled.
        include_background: keep column 0 in the output.
        ignore_empty: NaN where the ground truth of a labeled class is empty (MONAI ``DiceMetric`` convention);
            when False such a class scores 1 if the prediction is empty too, else 0.
        num_classes: K when ``y_pred`` and ``y`` are label maps (one channel); not used for one-hot inputs.

    Returns:
        ``(B, K)`` (or ``(B, K - 1)`` without background) float32 tensor.

    Raises:
        ValueError: shapes differ or are not ``(B, K, spatial...)``, label-map values outside ``0..K-1``, or the
            mask shape is wrong.
    """
    if y_pred.shape != y.shape:
        raise ValueError(
            f"y_pred and y must have the same one-hot shape, got {tuple(y_pred.shape)} and {tuple(y.shape)}."
        )
    if y_pred.ndim < 3:
        raise ValueError(f"y_pred must be one-hot (B, K, spatial...), got shape {tuple(y_pred.shape)}.")
    batch, n_cls = y_pred.shape[:2]
    if n_cls == 1 and num_classes is not None and int(num_classes) > 1:  # label maps: counted, not one-hot
        n_cls = int(num_classes)
        counts = label_map_counts(y_pred, y, n_cls)
        # the counts are exact integers; as float32 they equal the one-hot sums below (exact below 2**24 voxels)
        inter = torch.diagonal(counts, dim1=1, dim2=2).float()
        sp, sg = counts.sum(1).float(), counts.sum(2).float()
    else:
        p = (y_pred.as_tensor() if isinstance(y_pred, MetaTensor) else torch.as_tensor(y_pred)).float().flatten(2)
        g = (y.as_tensor() if isinstance(y, MetaTensor) else torch.as_tensor(y)).float().flatten(2)
        inter = (p * g).sum(-1)
        sp, sg = p.sum(-1), g.sum(-1)
    mask = resolve_labeled_mask(labeled_mask, y, batch, n_cls, y.device)
    denom = sp + sg
    dice = torch.where(denom > 0, 2.0 * inter / denom.clamp_min(1e-12), torch.ones_like(denom))
    nan = torch.full_like(dice, float("nan"))
    if ignore_empty:
        dice = torch.where(sg > 0, dice, nan)
    if mask is not None:
        dice = torch.where(mask > 0, dice, nan)
    return dice if include_background else dice[:, 1:]


class PartialDiceMetric(CumulativeIterationMetric):
    """Per-organ hard Dice for validation on partially labeled data (a MONAI ``CumulativeIterationMetric``).

    Each call takes one-hot ``y_pred`` and ``y`` (``(B, K, spatial...)`` batch-first tensors or lists of
    channel-first tensors, e.g. after ``AsDiscreted(argmax=True, to_onehot=K)``), or label maps ``(B, 1,
    spatial...)`` with ``K = len(class_names)`` classes (e.g. ``SlidingSliceInferer(argmax=True)``'s output and the
    label: counted chunk by chunk, no one-hot volumes, the same values; the bundle's validation), and buffers a
    ``(B, K-1)``
    per-sample Dice where organs not labeled in the sample's dataset (``y.meta["labeled_mask"] == 0``) -- and,
    with ``ignore_empty``, organs with an empty ground truth -- are NaN. :py:meth:`aggregate` averages each organ
    over the samples where it is defined (nanmean), then over organs, so unlabeled organs never count as 0.
    Works with MONAI's ignite ``IgniteMetricHandler`` as the key metric (``aggregate()`` returns a scalar) and in
    DDP (buffers are gathered across ranks by MONAI's ``Cumulative``).

    Args:
        include_background: also score class 0.
        ignore_empty: NaN (excluded) where a labeled organ's ground truth is empty (default), else 1/0.
        class_index: when given, ``aggregate()`` returns this class's Dice only (e.g. 1 for a
            ``val_dice_liver`` metric).
        class_names: class names, for :py:meth:`aggregate_dict` (K is their count).
        label_space: the model's :class:`~pipofan_monai.vocabulary.LabelSpace`, instead of ``class_names`` (the
            bundle's validation: one vocabulary object for the metrics, the loss's masks and the writers).

    Example::

        metric = PartialDiceMetric()
        metric(y_pred=onehot_pred, y=onehot_label)  # label.meta["labeled_mask"]: (B, K)
        mean_dice = metric.aggregate()               # scalar tensor
        per_organ = metric.aggregate(per_class=True)  # (K - 1,) tensor
    """

    def __init__(
        self,
        include_background: bool = False,
        ignore_empty: bool = True,
        class_index: int | None = None,
        class_names: Sequence[str] | None = None,
        label_space: Any = None,
    ) -> None:
        super().__init__()
        self.include_background = bool(include_background)
        self.ignore_empty = bool(ignore_empty)
        if label_space is not None:
            if class_names is not None:
                raise ValueError("PartialDiceMetric takes class_names or label_space, not both (they could disagree).")
            class_names = label_space.class_names
        self.class_names = tuple(str(n) for n in (CLASS_NAMES if class_names is None else class_names))
        if class_index is not None:
            low = 0 if self.include_background else 1
            if not low <= int(class_index) < len(self.class_names):
                raise ValueError(f"class_index must be in {low}..{len(self.class_names) - 1}, got {class_index}.")
            class_index = int(class_index)
        self.class_index = class_index

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        if y is None:
            raise ValueError("PartialDiceMetric needs the ground truth y.")
        return partial_dice(y_pred, y, kwargs.get("labeled_mask"), self.include_background, self.ignore_empty,
                            num_classes=len(self.class_names))

    def aggregate(self, per_class: bool = False) -> torch.Tensor:  # type: ignore[override]
        """Aggregate the buffered Dice values.

        Args:
            per_class: return the per-class nanmean ``(K-1,)`` (``(K,)`` with background) instead of a scalar.

        Returns:
            scalar: the mean over classes of the per-class nanmean (classes never defined are skipped; NaN when
            nothing is defined), or the chosen ``class_index``'s value; or the per-class vector.
        """
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError(f"the buffered data is not a tensor: {type(data).__name__}; call the metric first.")
        per_cls = torch.nanmean(data.float(), dim=0)
        if per_class:
            return per_cls
        if self.class_index is not None:
            return per_cls[self.class_index - (0 if self.include_background else 1)]
        return torch.nanmean(per_cls)

    def aggregate_dict(self) -> dict[str, float]:
        """``{class name: Dice, ..., "mean": mean over classes}`` (NaN where undefined), for logging."""
        per_cls = self.aggregate(per_class=True)
        names = self.class_names if self.include_background else self.class_names[1:]
        out = {str(n): float(v) for n, v in zip(names, per_cls)}
        out["mean"] = float(torch.nanmean(per_cls))
        return out


def per_class_dice_metrics(class_names: Sequence[str] | Any, output_transform: Any = None) -> dict[str, Any]:
    """One ignite metric handler per organ of a vocabulary, for a MONAI evaluator's ``additional_metrics``:
    ``{"val_dice_liver": IgniteMetricHandler(PartialDiceMetric(class_index=1)), ...}`` (keys from
    :py:func:`pipofan_monai.vocabulary.organs.metric_name`), so the validation Dice per organ follows ``class_names``.

    Args:
        class_names: the vocabulary, background first, or a :class:`~pipofan_monai.vocabulary.LabelSpace`.
        output_transform: engine output -> ``(y_pred, y)``; default ``from_engine(["pred", "label"])``.

    Example (bundle config)::

        "additional_metrics": "$pipofan_monai.evaluation.per_class_dice_metrics(@label_space)"
    """
    from monai.handlers import IgniteMetricHandler, from_engine

    from pipofan_monai.vocabulary.organs import metric_name

    if output_transform is None:
        output_transform = from_engine(["pred", "label"])
    names = [str(n) for n in getattr(class_names, "class_names", class_names)]
    out: dict[str, Any] = {}
    for cid in range(1, len(names)):
        key = metric_name(names[cid])
        if key in out:
            raise ValueError(f"class_names {names} give the metric name {key!r} twice.")
        out[key] = IgniteMetricHandler(PartialDiceMetric(class_index=cid, class_names=names),
                                       output_transform=output_transform)
    return out
