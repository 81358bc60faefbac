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

"""Ensembling of fold models (the paper's Table V ensembles): majority vote of label maps or mean of
probabilities, on the original image grid.

MONAI has ``VoteEnsemble`` and ``MeanEnsemble``, and they give the same results (tests/unit/inference/test_ensembling.py
compares them). They are not used because of memory at the users' sizes: ``VoteEnsemble`` one-hot encodes all M
label maps as float32 (M x K x 4 bytes per voxel: 9.4 GB for 5 folds of a 4-class 512x512x450 CT) and
``MeanEnsemble`` stacks all M probability maps (the same 9.4 GB). :func:`majority_vote` counts votes in int16
(K x 2 bytes per voxel) and :func:`mean_probabilities` accumulates one map at a time.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from monai.data import MetaTensor
from monai.utils import convert_to_dst_type

__all__ = ["majority_vote", "mean_probabilities", "ENSEMBLE_MODES"]

#: ``"vote"``: majority vote of the label maps (the paper); ``"mean"``: mean of the probabilities, then argmax
ENSEMBLE_MODES = ("vote", "mean")


def majority_vote(label_maps: Sequence[Any], num_classes: int) -> Any:
    """Voxel-wise majority vote of label maps (the paper's fold ensemble).

    Ties are broken in favour of the LOWEST class id among the most voted (background first: e.g. two folds
    saying liver, two spleen and one background gives liver), a conservative and deterministic rule.

    Args:
        label_maps: ``M >= 1`` integer label maps of identical shape (any shape, e.g. ``(1, H, W, D)``), torch
            tensors / MetaTensors / numpy arrays, values in ``0 .. num_classes - 1``.
        num_classes: K.

    Returns:
        the voted label map, same shape, type and dtype as ``label_maps[0]`` (MetaTensor metadata kept).

    Raises:
        ValueError: no maps, shapes differ, or values outside ``0 .. num_classes - 1``.
    """
    if len(label_maps) == 0:
        raise ValueError("majority_vote needs at least one label map.")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    ref = label_maps[0]
    maps = [torch.as_tensor(m.as_tensor() if isinstance(m, MetaTensor) else m) for m in label_maps]
    shape = tuple(maps[0].shape)
    for i, m in enumerate(maps):
        if tuple(m.shape) != shape:
            raise ValueError(f"label map {i} has shape {tuple(m.shape)}, map 0 has {shape}.")
        lo, hi = float(m.min()), float(m.max())
        if lo < 0 or hi > num_classes - 1 or (m.is_floating_point() and not torch.equal(m, m.round())):
            raise ValueError(f"label map {i} holds values outside the class ids 0..{num_classes - 1} ({lo}..{hi}).")
    counts = torch.zeros((int(num_classes), *shape), dtype=torch.int16, device=maps[0].device)
    for m in maps:
        m = m.long()
        for c in range(int(num_classes)):
            counts[c] += m == c
    voted = torch.argmax(counts, dim=0)  # first (lowest) class among equal maxima
    return convert_to_dst_type(voted, ref, dtype=ref.dtype)[0]


def mean_probabilities(probabilities: Iterable[Any]) -> Any:
    """Mean of probability maps (the alternative fold ensemble), accumulated one map at a time.

    Args:
        probabilities: an iterable (a generator works, keeping memory at two maps) of ``(K, ...)`` maps of
            identical shape (torch / MetaTensor / numpy).

    Returns:
        the mean, float32, type of the first map (MetaTensor metadata kept).

    Raises:
        ValueError: empty iterable or shapes differ.
    """
    total, first, n = None, None, 0
    for p in probabilities:
        t = torch.as_tensor(p.as_tensor() if isinstance(p, MetaTensor) else p).float()
        if total is None:
            total, first = t.clone(), p
        elif tuple(t.shape) != tuple(total.shape):
            raise ValueError(f"probability map {n} has shape {tuple(t.shape)}, map 0 has {tuple(total.shape)}.")
        else:
            total += t
        n += 1
    if total is None:
        raise ValueError("mean_probabilities needs at least one probability map.")
    return convert_to_dst_type(total / n, first, dtype=torch.float32)[0]
