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

"""Target adaptive loss (TAL) for training one segmentation network on partially labeled datasets
(Fang & Yan, IEEE TMI 2020)."""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.utils import LossReduction, look_up_option
from torch.nn.modules.loss import _Loss

from pipofan_monai.vocabulary.masks import resolve_labeled_mask

__all__ = ["TargetAdaptiveLoss", "resolve_labeled_mask"]

class TargetAdaptiveLoss(_Loss):
    """Target adaptive loss: cross-entropy in which, for each sample, the background and every organ that the
    sample's source dataset does NOT annotate are merged into one "non-target" class.

    For logits ``z`` and a sample ``b`` whose dataset labels the organs ``C_b``, with ``M_b`` = background plus
    the unlabeled organs::

        log p_k   = z_k - logsumexp_j z_j
        log p_M_b = logsumexp_{k in M_b} z_k - logsumexp_j z_j      (stable form of log(1 - sum_{c in C_b} p_c))
        loss      = -log p_y     if y in C_b
                    -log p_M_b   otherwise (background, or an organ the dataset does not annotate)

    Everything is computed in log space (two ``logsumexp`` over the class axis, the second with a ``-inf`` bias on
    each sample's labeled organs; a single ``log_softmax`` when the whole batch is fully labeled), vectorised over
    the batch (no loop over samples or classes, no clamping, finite for logits of any finite magnitude). When every class is labeled this is exactly
    ``torch.nn.functional.cross_entropy``. Gradients reach the logits of unlabeled organs only through the merged
    term: ``d loss / d z_k = p_k - p_k / p_M`` at a non-target voxel and ``p_k`` at a labeled-organ voxel.

    Two optional terms, **extensions beyond the paper** (both off by default):

    - ``dice_weight``: marginal soft Dice (Shi et al., "Marginal loss and exclusion loss for partially
      supervised multi-organ segmentation", MedIA 2021). Softmax probabilities of each sample's unlabeled organs
      are added to the background channel; soft Dice ``1 - (2 sum p g + 1e-5) / (sum p + sum g + 1e-5)`` is
      computed per sample for the merged background (if ``dice_include_background``) and the sample's labeled
      organs only, averaged over those classes, then over the batch (summed for ``reduction="sum"``).
    - ``exclusion_weight``: exclusion term, the mean over all voxels labeled with an annotated organ
      (``y in C_b``) of ``sum_{k unlabeled organ of b} p_k``: the probability mass the network puts on organs
      the dataset cannot tell about, inside an organ it does annotate (where it is known to be wrong). It is 0
      for fully labeled samples and when the batch holds no labeled-organ voxel (summed for ``reduction="sum"``).

    Args:
        class_weights: optional sequence of K non-negative floats. The reduction becomes the weighted mean
            ``sum(w * loss) / sum(w)`` where ``w`` is the weight of the class each voxel is reduced to (the
            background weight ``class_weights[0]`` for merged non-target voxels), as
            ``F.cross_entropy(weight=...)`` does. ``(0.2, 1.2)`` with K=2 is the authors' single-organ loss.
            Defaults to None (all 1).
        reduction: {``"mean"``, ``"sum"``, ``"none"``}. ``"mean"``: weighted mean over all voxels of the batch;
            ``"sum"``: weighted sum; ``"none"``: the per-voxel weighted loss ``w * loss`` of shape
            ``(B, 1, spatial...)`` (only without the Dice and exclusion terms). Defaults to ``"mean"``.
        dice_weight: weight of the marginal Dice term. Defaults to 0 (off, as in the paper).
        exclusion_weight: weight of the exclusion term. Defaults to 0 (off, as in the paper).
        dice_include_background: include the merged background class in the marginal Dice. Defaults to True.
        smooth_nr: Dice numerator smoothing. Defaults to 1e-5.
        smooth_dr: Dice denominator smoothing. Defaults to 1e-5.
        require_labeled_mask: raise when neither ``labeled_mask`` nor ``target.meta["labeled_mask"]`` is given
            instead of treating every class as labeled (the bundle sets it: a lost mask must not silently turn
            TAL into plain cross-entropy). Defaults to False.

    Raises:
        ValueError: negative or non-finite class weights, negative term weights, ``reduction="none"`` combined
            with a Dice or exclusion term.

    Example::

        loss = TargetAdaptiveLoss()
        logits = torch.randn(2, 4, 64, 64, requires_grad=True)
        label = torch.randint(0, 4, (2, 1, 64, 64))
        mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])  # sample 0 from LiTS (liver only), sample 1 from BTCV
        loss(logits, label, mask).backward()
    """

    def __init__(
        self,
        class_weights: Sequence[float] | torch.Tensor | None = None,
        reduction: LossReduction | str = LossReduction.MEAN,
        dice_weight: float = 0.0,
        exclusion_weight: float = 0.0,
        dice_include_background: bool = True,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        require_labeled_mask: bool = False,
    ) -> None:
        super().__init__(reduction=look_up_option(reduction, LossReduction).value)
        if class_weights is not None:
            cw = torch.as_tensor(class_weights, dtype=torch.float64).flatten()
            if not bool(torch.isfinite(cw).all()) or bool((cw < 0).any()):
                raise ValueError(f"class_weights must be finite and non-negative, got {cw.tolist()}.")
            self.register_buffer("class_weights", cw.float(), persistent=False)
        else:
            self.class_weights: torch.Tensor | None = None
        for name, val in (("dice_weight", dice_weight), ("exclusion_weight", exclusion_weight)):
            if not float(val) >= 0.0:
                raise ValueError(f"{name} must be a non-negative number, got {val}.")
        if self.reduction == LossReduction.NONE.value and (dice_weight > 0 or exclusion_weight > 0):
            raise ValueError(
                f"reduction='none' (per-voxel loss) cannot be combined with dice_weight={dice_weight} or "
                f"exclusion_weight={exclusion_weight}: use 'mean' or 'sum'."
            )
        self.dice_weight = float(dice_weight)
        self.exclusion_weight = float(exclusion_weight)
        self.dice_include_background = bool(dice_include_background)
        self.smooth_nr = float(smooth_nr)
        self.smooth_dr = float(smooth_dr)
        self.require_labeled_mask = bool(require_labeled_mask)

    def _validate(self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> bool:
        """Shape and value checks; the value statistics are fetched from the device with one synchronisation.

        Returns:
            True when every class of every sample is labeled (plain cross-entropy).
        """
        num_classes = input.shape[1]
        if num_classes < 2:
            raise ValueError(f"input must have at least 2 classes (channels), got K={num_classes}.")
        if self.class_weights is not None and self.class_weights.numel() != num_classes:
            raise ValueError(
                f"class_weights has {self.class_weights.numel()} values but input has K={num_classes} channels."
            )
        if target.ndim != input.ndim or target.shape[1] != 1:
            raise ValueError(
                f"target must have shape (B, 1, spatial...) = ({input.shape[0]}, 1, *{tuple(input.shape[2:])}), "
                f"got {tuple(target.shape)}."
            )
        if target.shape[0] != input.shape[0] or target.shape[2:] != input.shape[2:]:
            raise ValueError(
                f"target batch/spatial shape {tuple(target.shape)} does not match input {tuple(input.shape)}."
            )
        if not input.is_floating_point():
            raise ValueError(f"input must be floating point logits, got dtype {input.dtype}.")
        tf = target.detach()
        stats = [tf.min().to(torch.float64), tf.max().to(torch.float64)]
        if mask is not None:
            stats.append(mask.all().to(torch.float64))
            stats.append((~mask[:, 1:]).all(dim=1).any().to(torch.float64))
        if target.is_floating_point():
            stats.append((tf != tf.round()).any().to(torch.float64))
        vals = torch.stack([s.to(input.device) for s in stats]).tolist()  # one device synchronisation
        fully_labeled = mask is None or vals[2] > 0
        if not (vals[0] >= 0 and vals[1] <= num_classes - 1):
            raise ValueError(
                f"target values must be class indices in 0..{num_classes - 1} (K={num_classes}), "
                f"got min {vals[0]} and max {vals[1]}."
            )
        if target.is_floating_point() and vals[-1] > 0:
            raise ValueError("target must hold integer class indices, got non-integer values.")
        if mask is not None and vals[3] > 0:
            no_organ = (~mask[:, 1:]).all(dim=1)
            warnings.warn(
                f"samples {no_organ.nonzero().flatten().tolist()} have no labeled organ in labeled_mask: "
                "all their classes merge into one and their cross-entropy term is identically zero.",
                stacklevel=3,
            )
        return fully_labeled

    def forward(self, input: torch.Tensor, target: torch.Tensor, labeled_mask: Any = None) -> torch.Tensor:
        """
        Args:
            input: logits of shape ``(B, K, H, W[, D])``, K >= 2, global class order (0 = background).
            target: class indices of shape ``(B, 1, H, W[, D])`` with values in ``0..K-1`` (int or float tensor,
                possibly a MetaTensor).
            labeled_mask: which classes each sample's dataset annotates, ``(B, K)`` or ``(K,)`` bool / 0-1
                (column 0 is ignored and treated as labeled). If None, ``target.meta["labeled_mask"]`` is used when
                ``target`` is a MetaTensor that has it; otherwise every class is labeled (plain cross-entropy), or, with
                ``require_labeled_mask``, :class:`~pipofan_monai.vocabulary.masks.MissingLabeledMaskError`.

        Returns:
            A scalar for ``"mean"`` / ``"sum"``; the per-voxel weighted loss ``(B, 1, H, W[, D])`` for ``"none"``.

        Raises:
            ValueError: bad shapes (input, target, mask, class_weights), an empty input (no sample, or a zero
                spatial size: the loss is undefined, not zero), target values outside ``0..K-1`` or non-integer,
                non-finite logits.
        """
        if input.ndim < 3:
            raise ValueError(f"input must have shape (B, K, spatial...), got {tuple(input.shape)}.")
        if input.numel() == 0:
            raise ValueError(
                f"TargetAdaptiveLoss got an empty input of shape {tuple(input.shape)} (no sample or no voxel): the "
                "loss of an empty batch is undefined; check the data loader (batch size, sampler, crop size)."
            )
        mask = resolve_labeled_mask(labeled_mask, target, input.shape[0], input.shape[1], input.device,
                                    required=self.require_labeled_mask)
        if isinstance(input, MetaTensor):
            input = input.as_tensor()
        if isinstance(target, MetaTensor):
            target = target.as_tensor()
        fully_labeled = self._validate(input, target, mask)
        if input.dtype in (torch.float16, torch.bfloat16):
            input = input.float()
        bsz, num_classes = input.shape[:2]
        n_sp = input.ndim - 2
        y = target.to(device=input.device, dtype=torch.long)

        if fully_labeled:
            # merged class = background only, every organ voxel is a target voxel: plain cross-entropy
            is_target = y > 0
            loss = -F.log_softmax(input, dim=1).gather(1, y)
        else:
            # log p_M = logsumexp_{k in M} z_k - logsumexp_j z_j. The organs outside M get a -inf bias: they add
            # exp(-inf) = 0 to the sum and receive zero gradient; the background is always in M, so the result is
            # finite for finite logits. A sample whose M holds every class gets exactly 0 loss and 0 gradient.
            merged = ~mask
            merged[:, 0] = True
            bias = torch.zeros(merged.shape, dtype=input.dtype, device=input.device)
            bias.masked_fill_(~merged, float("-inf"))
            lse_all = torch.logsumexp(input, dim=1, keepdim=True)
            lse_merged = torch.logsumexp(input + bias.view(bsz, num_classes, *([1] * n_sp)), dim=1, keepdim=True)
            is_target = mask.gather(1, y.reshape(bsz, -1)).view_as(y) & (y > 0)
            loss = lse_all - torch.where(is_target, input.gather(1, y), lse_merged)  # (B, 1, spatial...)

        if self.class_weights is not None:
            cw = self.class_weights.to(device=input.device, dtype=input.dtype)
            w = cw[torch.where(is_target, y, torch.zeros_like(y))]
            loss = loss * w
        if self.reduction == LossReduction.NONE.value:
            self._check_finite(loss, input)
            return loss
        if self.reduction == LossReduction.SUM.value:
            total = loss.sum()
        elif self.class_weights is not None:
            sum_w = w.sum()  # a batch whose voxels all have weight 0 gives 0, not NaN
            total = loss.sum() / torch.where(sum_w > 0, sum_w, torch.ones_like(sum_w))
        else:
            total = loss.mean()

        if self.dice_weight > 0 or self.exclusion_weight > 0:
            probs = torch.softmax(input, dim=1)
            lab = mask if mask is not None else torch.ones(bsz, num_classes, dtype=torch.bool, device=input.device)
            lab_v = lab.view(bsz, num_classes, *([1] * n_sp))
            if self.dice_weight > 0:
                total = total + self.dice_weight * self._marginal_dice(probs, y, is_target, lab, lab_v)
            if self.exclusion_weight > 0:
                total = total + self.exclusion_weight * self._exclusion(probs, is_target, lab_v)
        self._check_finite(total, input)
        return total

    @staticmethod
    def _check_finite(result: torch.Tensor, input: torch.Tensor) -> None:
        """The loss is finite for finite logits: a non-finite result means corrupt logits (checked once, after
        the computation, to save a pass over the input on every step)."""
        if not bool(torch.isfinite(result.detach()).all()):
            n_nan = int(torch.isnan(input.detach()).sum())
            n_inf = int(torch.isinf(input.detach()).sum())
            raise ValueError(
                f"input logits contain {n_nan} NaN and {n_inf} infinite values (shape {tuple(input.shape)}): "
                "the network diverged or the input is corrupt."
            )

    def _marginal_dice(
        self, probs: torch.Tensor, y: torch.Tensor, is_target: torch.Tensor, lab: torch.Tensor, lab_v: torch.Tensor
    ) -> torch.Tensor:
        """Per-sample soft Dice on probabilities with unlabeled organs merged into background."""
        red = tuple(range(2, probs.ndim))
        unl_organs = (~lab_v).to(probs.dtype)
        unl_organs[:, 0] = 0
        p_merged = probs * lab_v.to(probs.dtype)
        p_merged[:, :1] = probs[:, :1] + (probs * unl_organs).sum(dim=1, keepdim=True)
        y_red = torch.where(is_target, y, torch.zeros_like(y))
        onehot = torch.zeros_like(probs).scatter_(1, y_red, 1.0)
        inter = (p_merged * onehot).sum(dim=red)
        denom = p_merged.sum(dim=red) + onehot.sum(dim=red)
        dice = 1.0 - (2.0 * inter + self.smooth_nr) / (denom + self.smooth_dr)  # (B, K)
        include = lab.to(probs.dtype).clone()
        if not self.dice_include_background:
            include[:, 0] = 0
        n_inc = include.sum(dim=1)
        per_sample = (dice * include).sum(dim=1) / n_inc.clamp_min(1)
        if self.reduction == LossReduction.SUM.value:
            return per_sample.sum()
        return per_sample.mean()

    def _exclusion(self, probs: torch.Tensor, is_target: torch.Tensor, lab_v: torch.Tensor) -> torch.Tensor:
        """Probability of each sample's unlabeled organs inside its labeled-organ voxels."""
        unl_organs = (~lab_v).to(probs.dtype)
        unl_organs[:, 0] = 0
        p_unl = (probs * unl_organs).sum(dim=1, keepdim=True)  # (B, 1, spatial...)
        sel = is_target.to(probs.dtype)
        s = (p_unl * sel).sum()
        if self.reduction == LossReduction.SUM.value:
            return s
        n = sel.sum()
        return s / torch.where(n > 0, n, torch.ones_like(n))
