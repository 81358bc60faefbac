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

"""The partial-label contract, defined once.

A training or validation label carries, in its MetaTensor metadata under :data:`LABELED_MASK_KEY`, a ``(K,)``
0/1 vector: 1 for each global class the item's source dataset annotates (background always 1). It is attached by
:class:`~pipofan_monai.preprocessing.MapDatasetLabelsd` from the dataset table, survives MONAI crops, flips,
DataLoader collation (arriving as ``(B, K)``) and ``.to(device)``, and is read by the target adaptive loss, the
partial-label Dice metric, the organ-centred slab crop and the inference report through
:func:`resolve_labeled_mask` / :func:`get_labeled_mask`.

Items without a dataset id are fully labeled data in the global convention (all ones): MONAI Label's training
and users' own fully labeled datasets. The naive baseline (unannotated organs counted as background) is the
explicit choice ``partial_labels: false`` in the bundle config, which attaches all-ones masks.

A mask that goes missing on the way (a transform that drops MetaTensor, ``SupervisedTrainer(compile=True)``) would
silently turn TAL into plain cross-entropy, the naive baseline: with ``required=True`` (as the bundle's loss
sets) that is an error instead.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from monai.data import MetaTensor

__all__ = ["LABELED_MASK_KEY", "labeled_mask", "get_labeled_mask", "resolve_labeled_mask", "MissingLabeledMaskError"]

#: metadata key of the labeled-class mask in ``label.meta``
LABELED_MASK_KEY = "labeled_mask"


class MissingLabeledMaskError(ValueError):
    """A partial-label consumer that requires the mask found none."""


def labeled_mask(labeled_classes: Sequence[int], num_classes: int) -> np.ndarray:
    """``(num_classes,)`` float32 0/1 vector with ones at background (0) and at ``labeled_classes``.

    Raises:
        ValueError: a class id outside ``0..num_classes-1``.
    """
    mask = np.zeros(int(num_classes), dtype=np.float32)
    mask[0] = 1.0
    for c in labeled_classes:
        if not 0 <= int(c) < num_classes:
            raise ValueError(f"labeled class {c} is outside 0..{num_classes - 1} (num_classes={num_classes}).")
        mask[int(c)] = 1.0
    return mask


def get_labeled_mask(target: Any) -> Any:
    """The mask stored in ``target.meta[LABELED_MASK_KEY]`` when ``target`` is a MetaTensor that has one, else None."""
    if isinstance(target, MetaTensor):
        return target.meta.get(LABELED_MASK_KEY, None)
    return None


def resolve_labeled_mask(
    labeled_mask: Any,
    target: Any,
    batch_size: int,
    num_classes: int,
    device: torch.device | str | None = None,
    required: bool = False,
) -> torch.Tensor | None:
    """Turn a per-sample partial-label mask into a boolean ``(batch_size, num_classes)`` tensor.

    Args:
        labeled_mask: ``(K,)`` or ``(B, K)`` bool / 0-1 values (tensor, array or sequence; a list of ``K``
            per-class tensors of shape ``(B,)``, as collating a Python list gives, is also accepted), or None to
            read ``target.meta[LABELED_MASK_KEY]``.
        target: the label tensor (only its meta is read).
        batch_size: B.
        num_classes: K.
        device: device of the returned tensor (default: the target's, else CPU).
        required: raise :class:`MissingLabeledMaskError` instead of returning None when no mask is found.

    Returns:
        ``(B, K)`` bool tensor with column 0 (background) forced to True, or None when no mask is given nor stored
        (every class labeled) and ``required`` is False.

    Raises:
        MissingLabeledMaskError: no mask and ``required``.
        ValueError: a mask not of shape ``(K,)`` or ``(B, K)``, or with values other than 0 and 1.
    """
    if device is None:
        device = target.device if isinstance(target, torch.Tensor) else "cpu"
    if labeled_mask is None:
        labeled_mask = get_labeled_mask(target)
        if labeled_mask is None:
            if required:
                raise MissingLabeledMaskError(
                    f"the label has no {LABELED_MASK_KEY!r} in its metadata, so the organs its dataset does not "
                    "annotate cannot be told apart from background (training would silently become the naive "
                    "baseline). Map labels with MapDatasetLabelsd (the bundle's preprocessing does), keep labels as "
                    "MetaTensor (no compile=True in SupervisedTrainer), or choose the naive baseline explicitly "
                    "with partial_labels: false."
                )
            return None
    if isinstance(labeled_mask, (list, tuple)) and len(labeled_mask) > 0 and isinstance(labeled_mask[0], torch.Tensor):
        mask = torch.stack([torch.as_tensor(m, device=device) for m in labeled_mask], dim=-1)  # K x (B,) -> (B, K)
    else:
        mask = torch.as_tensor(labeled_mask, device=device)
    if isinstance(mask, MetaTensor):
        mask = mask.as_tensor()
    if mask.ndim == 1:
        mask = mask.unsqueeze(0)
    if mask.ndim != 2 or mask.shape[1] != num_classes or mask.shape[0] not in (1, batch_size):
        shape = tuple(mask.shape[1:]) if mask.ndim == 2 and mask.shape[0] == 1 else tuple(mask.shape)
        raise ValueError(
            f"labeled_mask must have shape (K,)=({num_classes},) or (B, K)=({batch_size}, {num_classes}), got {shape}."
        )
    if mask.dtype != torch.bool:
        bad = (mask != 0) & (mask != 1)
        if bool(bad.any()):
            raise ValueError(f"labeled_mask values must be 0 or 1 (or bool), got {mask[bad].unique().tolist()}.")
        mask = mask != 0
    mask = mask.expand(batch_size, num_classes).clone()
    mask[:, 0] = True
    return mask
