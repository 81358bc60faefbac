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

"""Deep pyramid supervision (DPS) of PIPO-FAN's outputs and its two training stages (first the pyramid outputs,
then the fused output, as the authors' two training runs)."""

from __future__ import annotations

import inspect
import logging
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.utils import look_up_option
from torch.nn.modules.loss import _Loss

from pipofan_monai.losses.tal import TargetAdaptiveLoss, resolve_labeled_mask

__all__ = ["DeepPyramidSupervisionLoss", "STAGES", "LABEL_MODES", "SCALE_REDUCTIONS"]

logger = logging.getLogger(__name__)

STAGES = ("dps", "fused")
LABEL_MODES = ("upsample", "pool")
SCALE_REDUCTIONS = ("sum", "mean")


class DeepPyramidSupervisionLoss(_Loss):
    """Applies a base loss to the train-mode outputs of PIPO-FAN, with the two training stages of the authors.

    Mirrors :class:`monai.losses.DeepSupervisionLoss` (a list of outputs, per-level weights, a plain tensor is
    passed straight to the base loss) for PIPO-FAN's output contract: in train mode the network returns
    ``[fused, f_1, ..., f_S]`` (``has_fused=True``) or ``[f_1, ..., f_S]`` without adaptive fusion
    (``has_fused=False``), ``f_1`` the finest pyramid output, all logits at input size ``(B, K, H, W)``; in eval
    mode it returns one tensor.

    Stages (switch at run time with :meth:`set_stage`, e.g. from an epoch handler):

    - ``"dps"`` (stage 1, deep pyramid supervision): ``sum_l w_l * loss(f_l, y)`` over the pyramid outputs
      (``scale_reduction="sum"``, the authors' code) or the weighted mean ``sum_l w_l loss_l / sum_l w_l``
      (``"mean"``, Eq. 1 of the paper). The fused output is not supervised.
    - ``"fused"`` (stage 2): ``loss(F, y)`` on the fused output only; the pyramid outputs get no gradient from
      the loss (they are still trained through the fusion).

    Label modes:

    - ``"upsample"`` (default, the authors' code): every output (already at input size) against the full-size
      label.
    - ``"pool"`` (an approximation of the paper's Eq. 1, which compares each output at its native scale with
      a pooled label): output ``f_l`` is area-averaged by a factor ``2^(l-1)`` along every spatial axis and the
      label is subsampled by nearest neighbour, ``y[..., ::2^(l-1), ::2^(l-1)]``. Since the network has already
      upsampled ``f_l`` bilinearly, the area average only approximates the native-scale logits. The fused output
      (stage ``"fused"``) is always compared at full size.

    Args:
        loss: the base loss, called as ``loss(input, target)`` or, when its ``forward`` accepts it,
            ``loss(input, target, labeled_mask=...)``. Defaults to ``TargetAdaptiveLoss()``.
        stage: ``"dps"`` or ``"fused"``. Defaults to ``"dps"``.
        weights: per-pyramid-output weights ``w_1..w_S`` (finest first); at least S values are needed, extra
            values are ignored (as ``DeepSupervisionLoss`` does). Defaults to None (all 1.0).
        scale_reduction: ``"sum"`` (authors' code) or ``"mean"`` (paper Eq. 1, weighted mean). Defaults to ``"sum"``.
        label_mode: ``"upsample"`` or ``"pool"``. Defaults to ``"upsample"``.
        has_fused: whether the first element of a list input is the fused output. Defaults to True.
        num_scales: the number S of pyramid outputs the network gives (PIPO-FAN's ``num_scales_out``); a list
            input must then hold exactly ``S + 1`` tensors (``S`` with ``has_fused=False``), otherwise
            :meth:`forward` raises ``ValueError``: a wrong count means the loss and the network disagree (e.g. a
            config that changed ``num_scales_out`` but not the loss). The bundle sets it from the network
            (``"$@network_def.num_scales_out"``). Defaults to None: any number of outputs is accepted (the
            behaviour of ``monai.losses.DeepSupervisionLoss``).

    Raises:
        ValueError: unknown ``stage`` / ``scale_reduction`` / ``label_mode``, negative weights,
            ``stage="fused"`` with ``has_fused=False``, ``num_scales < 1``.

    Example::

        loss = DeepPyramidSupervisionLoss(TargetAdaptiveLoss(), stage="dps")
        outputs = net(image)  # train mode: [fused, f_1, ..., f_5]
        loss(outputs, label).backward()  # label.meta["labeled_mask"] is used if present
        loss.set_stage("fused")  # at the stage switch (authors: epoch 2000)
    """

    def __init__(
        self,
        loss: _Loss | None = None,
        stage: str = "dps",
        weights: Sequence[float] | None = None,
        scale_reduction: str = "sum",
        label_mode: str = "upsample",
        has_fused: bool = True,
        num_scales: int | None = None,
    ) -> None:
        super().__init__()
        self.loss = TargetAdaptiveLoss() if loss is None else loss
        try:
            params = inspect.signature(self.loss.forward).parameters
        except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
            params = {}
        self._accepts_mask = "labeled_mask" in params
        self.has_fused = bool(has_fused)
        if num_scales is not None and (isinstance(num_scales, bool) or int(num_scales) != num_scales
                                       or int(num_scales) < 1):
            raise ValueError(f"num_scales must be a positive integer (pyramid outputs), got {num_scales!r}.")
        self.num_scales: int | None = None if num_scales is None else int(num_scales)
        if weights is not None:
            weights = [float(w) for w in weights]
            if any(not w >= 0 for w in weights):
                raise ValueError(f"weights must be non-negative numbers, got {weights}.")
        self.weights: list[float] | None = weights
        self.scale_reduction = look_up_option(scale_reduction, SCALE_REDUCTIONS)
        self.label_mode = look_up_option(label_mode, LABEL_MODES)
        self._stage = ""
        self.set_stage(stage)

    @property
    def stage(self) -> str:
        """The current training stage, ``"dps"`` or ``"fused"`` (assigning it calls :meth:`set_stage`)."""
        return self._stage

    @stage.setter
    def stage(self, value: str) -> None:
        self.set_stage(value)

    def set_stage(self, stage: str) -> None:
        """Switch the training stage and log the switch.

        Args:
            stage: ``"dps"`` (supervise the pyramid outputs) or ``"fused"`` (supervise the fused output only).

        Raises:
            ValueError: unknown stage, or ``"fused"`` when ``has_fused=False``.
        """
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}.")
        if stage == "fused" and not self.has_fused:
            raise ValueError("stage 'fused' needs the fused output: the loss was built with has_fused=False.")
        if stage != self._stage:
            if self._stage:
                logger.info("DeepPyramidSupervisionLoss: training stage switched from %r to %r.", self._stage, stage)
            else:
                logger.info("DeepPyramidSupervisionLoss: training stage %r.", stage)
        self._stage = stage

    def get_weights(self, levels: int) -> list[float]:
        """The weights of the ``levels`` pyramid outputs (finest first).

        Raises:
            ValueError: fewer weights than outputs.
        """
        if self.weights is None:
            return [1.0] * levels
        if len(self.weights) < levels:
            raise ValueError(f"{levels} pyramid outputs but only {len(self.weights)} weights: {self.weights}.")
        return self.weights[:levels]

    def _call(self, input: torch.Tensor, target: torch.Tensor, mask: Any) -> torch.Tensor:
        if self._accepts_mask:
            return self.loss(input, target, labeled_mask=mask)  # type: ignore[no-any-return]
        return self.loss(input, target)  # type: ignore[no-any-return]

    def forward(
        self, input: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor, labeled_mask: Any = None
    ) -> torch.Tensor:
        """
        Args:
            input: a tensor ``(B, K, H, W[, D])`` (eval-mode output; the base loss is applied directly), or the
                train-mode list ``[fused, f_1, ..., f_S]`` (``[f_1, ..., f_S]`` when ``has_fused=False``), every
                element of shape ``(B, K, H, W[, D])``.
            target: labels ``(B, 1, H, W[, D])`` at input size, possibly a MetaTensor carrying ``labeled_mask``.
            labeled_mask: ``(B, K)`` / ``(K,)`` partial-label mask passed to the base loss at every scale (read
                from ``target.meta["labeled_mask"]`` when None).

        Returns:
            The loss, reduced as the base loss reduces it.

        Raises:
            ValueError: ``input`` is None or an empty list, a list whose length differs from ``num_scales``
                (+1 with ``has_fused``) when ``num_scales`` is set, no pyramid output to supervise, a mask given to
                a base loss that does not accept one, output shapes that differ from the label's in pool mode.
        """
        if input is None:
            raise ValueError("input must be a tensor or a list of tensors, got None.")
        if labeled_mask is not None and not self._accepts_mask:
            raise ValueError(
                f"labeled_mask was given but the base loss {type(self.loss).__name__} does not accept one."
            )
        if isinstance(input, torch.Tensor):
            return self._call(input, target, labeled_mask)
        outputs = list(input)
        if len(outputs) == 0:
            raise ValueError("input is an empty list of outputs.")
        if self.num_scales is not None and len(outputs) != self.num_scales + int(self.has_fused):
            expected = (f"[fused, f_1, ..., f_{self.num_scales}]" if self.has_fused
                        else f"[f_1, ..., f_{self.num_scales}]")
            raise ValueError(
                f"DeepPyramidSupervisionLoss expects {self.num_scales + int(self.has_fused)} outputs {expected} "
                f"(num_scales={self.num_scales}, has_fused={self.has_fused}), got a list of {len(outputs)}: the "
                "loss and the network disagree on the number of pyramid outputs (set num_scales to the network's "
                "num_scales_out)."
            )
        if self._stage == "fused":
            if not self.has_fused:  # pragma: no cover - prevented by set_stage
                raise ValueError("stage 'fused' needs has_fused=True.")
            return self._call(outputs[0], target, labeled_mask)
        pyramid = outputs[1:] if self.has_fused else outputs
        if len(pyramid) == 0:
            raise ValueError(
                f"stage 'dps' needs pyramid outputs, got a list of {len(outputs)} output(s) "
                f"with has_fused={self.has_fused}."
            )
        weights = self.get_weights(len(pyramid))
        if self.label_mode == "pool":
            if self._accepts_mask:
                # resolve the meta mask once, then subsample a plain tensor (meta is not needed any more)
                labeled_mask = resolve_labeled_mask(
                    labeled_mask, target, pyramid[0].shape[0], pyramid[0].shape[1], pyramid[0].device
                )
            plain_target = target.as_tensor() if isinstance(target, MetaTensor) else target
        total: torch.Tensor | None = None
        for level, (out, w) in enumerate(zip(pyramid, weights)):
            if w == 0:
                continue
            if self.label_mode == "pool" and level > 0:
                factor = 2**level
                if out.shape[2:] != plain_target.shape[2:]:
                    raise ValueError(
                        f"pool mode expects outputs at label size {tuple(plain_target.shape[2:])}, "
                        f"got {tuple(out.shape)} for pyramid output {level + 1}."
                    )
                tgt = plain_target[(slice(None), slice(None)) + (slice(None, None, factor),) * (out.ndim - 2)]
                out = F.interpolate(out, size=tgt.shape[2:], mode="area")
                term = self._call(out, tgt, labeled_mask)
            elif self.label_mode == "pool":
                term = self._call(out, plain_target, labeled_mask)
            else:
                term = self._call(out, target, labeled_mask)
            total = w * term if total is None else total + w * term
        if total is None:  # every weight is 0
            total = 0.0 * self._call(pyramid[0], target, labeled_mask)
        if self.scale_reduction == "mean":
            total = total / max(sum(weights), 1e-12)
        return total
