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

"""2.5D slice handling shared by validation, inference and training: which slices form the slab around a centre
slice (:func:`make_slab_indices`, the one definition of the replicated-edge rule), and stacking each slice with
its neighbours as channels (:func:`stack_neighbour_slices`, :class:`SlicesToChannelsd`).

The axial (slice) axis is the last spatial axis, as after ``Orientationd(axcodes="RAS")``.
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type

__all__ = ["make_slab_indices", "stack_neighbour_slices", "SlicesToChannelsd", "plain_tensor"]


def make_slab_indices(start: int, stop: int, depth: int, context: int = 1, device: torch.device | str | None = None):
    """Slice indices of the slabs centred on slices ``start .. stop - 1`` of a volume with ``depth`` slices.

    Row ``i`` holds ``z - context, ..., z, ..., z + context`` for ``z = start + i``, clamped to ``[0, depth - 1]``
    (replicated edges): with ``context=1``, slice 0 uses ``(0, 0, 1)`` and slice ``depth - 1`` uses
    ``(depth - 2, depth - 1, depth - 1)``; a single-slice volume uses ``(0, 0, 0)``.

    Args:
        start: first centre slice (inclusive).
        stop: last centre slice (exclusive).
        depth: number of slices of the volume (>= 1).
        context: number of neighbours on each side (>= 0); the slab has ``2 * context + 1`` slices.
        device: device of the returned tensor.

    Returns:
        ``(stop - start, 2 * context + 1)`` int64 tensor.

    Raises:
        ValueError: when ``depth < 1``, ``context < 0`` or the range is not inside ``[0, depth]``.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}.")
    if context < 0:
        raise ValueError(f"context must be >= 0, got {context}.")
    if not 0 <= start < stop <= depth:
        raise ValueError(f"need 0 <= start < stop <= depth, got start={start}, stop={stop}, depth={depth}.")
    centres = torch.arange(start, stop, device=device)
    offsets = torch.arange(-context, context + 1, device=device)
    return (centres[:, None] + offsets[None, :]).clamp_(0, depth - 1)


def plain_tensor(x: Any) -> torch.Tensor:
    """A plain torch tensor view of a MetaTensor / tensor / array."""
    if isinstance(x, MetaTensor):
        return x.as_tensor()
    return torch.as_tensor(x)


def stack_neighbour_slices(x: torch.Tensor | np.ndarray, context: int = 1) -> torch.Tensor | np.ndarray:
    """Stack each axial slice with its ``context`` neighbours on either side as channels.

    Args:
        x: ``(B, C, H, W, D)`` or ``(C, H, W, D)``; the slice axis is last.
        context: number of neighbours on each side (1 gives the paper's 3 slices).

    Returns:
        ``(B, C*(2*context+1), H, W, D)`` or ``(C*(2*context+1), H, W, D)``, same type (MetaTensor metadata kept),
        dtype and device as ``x``. For input channel c, output channels ``c*(2k+1) .. c*(2k+1)+2k`` hold slices
        ``z-k .. z+k`` (for C=1, k=1: channels 0, 1, 2 = slices z-1, z, z+1). Slices beyond the volume are
        replaced by the nearest edge slice (replicate padding), so output slice z exists for every z.

    Raises:
        ValueError: wrong number of dimensions or negative ``context``.
    """
    if int(context) < 0:
        raise ValueError(f"context must be >= 0, got {context}.")
    t = plain_tensor(x)
    if t.ndim not in (4, 5):
        raise ValueError(f"expected (C, H, W, D) or (B, C, H, W, D), got shape {tuple(t.shape)}.")
    k = int(context)
    idx = make_slab_indices(0, t.shape[-1], t.shape[-1], k, t.device).T  # (S, D)
    out = t[..., idx]  # (..., C, H, W, S, D)
    out = out.movedim(-2, -4).flatten(-5, -4)  # (..., C*S, H, W, D)
    return convert_to_dst_type(out, x)[0]


class SlicesToChannelsd(MapTransform):
    """Dictionary wrapper of :func:`stack_neighbour_slices` (inference side): ``(C, H, W, D)`` ->
    ``(C*(2*context+1), H, W, D)`` with replicated edges.

    Args:
        keys: image key(s). Default ``"image"``.
        context: neighbours on each side. Default 1.
        allow_missing_keys: don't raise if a key is absent.
    """

    def __init__(self, keys: KeysCollection = "image", context: int = 1, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if int(context) < 0:
            raise ValueError(f"context must be >= 0, got {context}.")
        self.context = int(context)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = stack_neighbour_slices(d[key], self.context)
        return d
