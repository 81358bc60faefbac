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

"""CT intensity handling: a finite-value check and the Hounsfield window (clip to [-200, 200] then scale to
[-1, 1], the authors' code; or z-score, the paper's text)."""

from __future__ import annotations

from typing import Any, Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type

from pipofan_monai.utils import filename_of

__all__ = ["all_finite", "check_finite", "CheckFinited", "HUWindowd"]


#: elements per chunk of :func:`all_finite` (64 MiB of float32)
FINITE_CHUNK = 1 << 24


def all_finite(t: torch.Tensor, chunk: int = FINITE_CHUNK) -> bool:
    """Whether every value of ``t`` is finite.

    First one sum: it is finite exactly when no value is NaN or infinite, unless finite values overflow it (then
    the values are checked one by one, below). One vectorised reduction without temporaries: 10 ms for the CPU
    benchmark's 4 x 256 x 256 x 200 network output, where the value-by-value check took 0.2 s alone and 0.43 s
    inside the pipeline (2-core Xeon, 2 threads, 2026-12-05, load 1.0-1.3). The value-by-value check goes ``chunk`` elements at a time (``torch.isfinite``
    on a whole float volume makes an ``abs`` copy and two boolean volumes: 1.5 GiB for a 1,000-slice network
    output)."""
    if not t.is_floating_point():
        return True
    if t.numel() == 0 or bool(torch.isfinite(t.sum())):
        return True
    flat = t.reshape(-1) if t.is_contiguous() else t.contiguous().reshape(-1)
    return all(bool(torch.isfinite(flat[i:i + chunk]).all()) for i in range(0, flat.numel(), int(chunk)))


def check_finite(img: Any, name: str | None = None) -> None:
    """Raise ``ValueError`` naming the file when ``img`` holds NaN or infinite values.

    Args:
        img: tensor or array of any shape.
        name: file name for the message (defaults to the MetaTensor's ``filename_or_obj``).
    """
    t = torch.as_tensor(img)
    if not all_finite(t):
        n_nan = int(torch.isnan(t).sum())
        n_inf = int(torch.isinf(t).sum())
        raise ValueError(f"image {name or filename_of(img)} has {n_nan} NaN and {n_inf} infinite values.")


class CheckFinited(MapTransform):
    """Check that the given keys hold only finite values; ``ValueError`` naming the file otherwise.

    Args:
        keys: keys to check. Default ``"image"``.
        allow_missing_keys: don't raise if a key is absent.
    """

    def __init__(self, keys: KeysCollection = "image", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            check_finite(d[key])
        return d


class HUWindowd(MapTransform):
    """Clip CT intensities to a Hounsfield window and normalise them.

    ``mode="scale"`` (default, authors' code): clip to ``window`` and map it linearly onto ``output_range``;
    equivalent to ``ScaleIntensityRanged(a_min=-200, a_max=200, b_min=-1, b_max=1, clip=True)``.
    ``mode="zscore"`` (the paper's text): clip to ``window``, then subtract the volume's mean and divide by its
    standard deviation (computed per item over all voxels of the clipped volume).

    Args:
        keys: image key(s). Default ``"image"``.
        window: ``(low, high)`` HU clip range. Default ``(-200, 200)``.
        mode: ``"scale"`` or ``"zscore"``.
        output_range: target range for ``mode="scale"``. Default ``(-1, 1)``.
        check_finite: raise ``ValueError`` naming the file if the image holds NaN/inf. Default True.
        allow_missing_keys: don't raise if a key is absent.

    Shapes: any; the output has the input's shape, float32 (MetaTensor metadata preserved).
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        window: Sequence[float] = (-200.0, 200.0),
        mode: str = "scale",
        output_range: Sequence[float] = (-1.0, 1.0),
        check_finite: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(window) != 2 or not float(window[0]) < float(window[1]):
            raise ValueError(f"window must be (low, high) with low < high, got {window}.")
        if mode not in ("scale", "zscore"):
            raise ValueError(f"mode must be 'scale' or 'zscore', got {mode!r}.")
        if len(output_range) != 2:
            raise ValueError(f"output_range must be (min, max), got {output_range}.")
        self.window = (float(window[0]), float(window[1]))
        self.mode = mode
        self.output_range = (float(output_range[0]), float(output_range[1]))
        self.check_finite = check_finite

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        lo, hi = self.window
        for key in self.key_iterator(d):
            img = d[key]
            if self.check_finite:
                check_finite(img)
            # one new float32 volume (an int16 input is converted into it), then in place: the same float operations
            # in the same order as ``(t - lo) * c + b0``, without its temporaries (1 MiB per 512² float32 slice each)
            t = torch.as_tensor(img.as_tensor() if hasattr(img, "as_tensor") else img)
            t = t.to(torch.float32, copy=True).clamp_(lo, hi)
            if self.mode == "scale":
                b0, b1 = self.output_range
                t.sub_(lo).mul_((b1 - b0) / (hi - lo)).add_(b0)
            else:
                std = t.std()
                t.sub_(t.mean()).div_(std if float(std) > 0 else 1.0)
            out, *_ = convert_to_dst_type(t, img, dtype=torch.float32)
            d[key] = out
        return d
