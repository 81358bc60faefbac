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

"""2.5D handling, as in the paper (three adjacent axial slices in, the centre slice's labels out): adjacent
slices become channels.

Training: :class:`RandSlabCropd` draws a ``(rx, ry, 2*context+1)`` slab whose centre slice contains one of the
organs annotated by the item's source dataset (or a random slice), then :class:`SlabToChannelsd` turns the
image slab into ``2*context+1`` channels (slices z-1, z, z+1) and keeps the label's centre slice.
Inference: :func:`stack_neighbour_slices` / :class:`SlicesToChannelsd` turn a volume ``(1, H, W, D)`` into
``(3, H, W, D)`` with replicated edges, so every slice can be segmented.

The axial (slice) axis is the last spatial axis, as after ``Orientationd(axcodes="RAS")``.
"""

from __future__ import annotations

import warnings
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Compose, MapTransform, RandFlipd, Randomizable
from monai.utils import convert_to_dst_type, ensure_tuple_rep

from pipofan_monai.preprocessing.pipelines import get_preprocessing_transforms
from pipofan_monai.preprocessing.slices import plain_tensor
from pipofan_monai.vocabulary.masks import LABELED_MASK_KEY
from pipofan_monai.utils import filename_of

__all__ = ["RandSlabCropd", "SlabToChannelsd", "get_train_transforms"]


class RandSlabCropd(Randomizable, MapTransform):
    """Random 2.5D training slab: ``(C, H, W, D)`` -> ``(C, rx, ry, 2*context+1)``.

    With probability ``pos_ratio`` the centre slice is drawn uniformly from the slices that contain at least one
    voxel of an organ annotated by the item's source dataset ("organ-centred"); otherwise uniformly from all
    slices. The annotated organs are the classes with a 1 in ``label.meta[mask_key]`` (set by
    :class:`~pipofan_monai.preprocessing.MapDatasetLabelsd`), excluding background; without a mask every non-zero
    label counts. The in-plane window is drawn uniformly (the paper's random 224x224 crop). Slices beyond the
    volume are replicated from the edge slice (as at inference), so every organ slice can be a centre slice.

    The label must already hold global class ids (place after ``MapDatasetLabelsd``). Metadata are kept; the
    affine is shifted to the crop origin; ``meta["slab_index"]`` = ``tensor([x0, y0, z])`` records the crop
    start in-plane and the centre slice (indices in the input volume).

    Organ-free volumes (no annotated organ voxel) when an organ-centred slab is drawn: ``organ_free="warn"``
    (default) falls back to a random slice with a ``UserWarning`` naming the file; ``"error"`` raises ``ValueError``.

    Args:
        keys: keys to crop (image and label), all with the same spatial shape.
        label_key: key of the (mapped) label used to find organ slices. Default ``"label"``.
        roi_size: in-plane crop size ``(rx, ry)``; ``-1`` keeps the full size on that axis. Default (224, 224).
        context: neighbour slices on each side; the slab has ``2*context+1`` slices. Default 1.
        pos_ratio: probability of an organ-centred slab, in [0, 1]. Default 1.0 (paper).
        num_samples: slabs per volume; > 1 returns a list of dicts (MONAI convention). Default 1.
        mask_key: label metadata key of the labeled-class mask. Default ``"labeled_mask"``.
        organ_free: ``"warn"`` or ``"error"``, see above.
        allow_missing_keys: don't raise if a key is absent.

    Raises:
        ValueError: volume thinner than ``2*context+1`` slices or smaller than ``roi_size`` in-plane, keys with
            different spatial shapes, or an organ-free volume with ``organ_free="error"``; all name the file.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        label_key: str = "label",
        roi_size: Sequence[int] = (224, 224),
        context: int = 1,
        pos_ratio: float = 1.0,
        num_samples: int = 1,
        mask_key: str = LABELED_MASK_KEY,
        organ_free: str = "warn",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        roi = ensure_tuple_rep(roi_size, 2)
        if any(int(r) == 0 or int(r) < -1 for r in roi):
            raise ValueError(f"roi_size must be positive or -1, got {roi_size}.")
        if int(context) < 0:
            raise ValueError(f"context must be >= 0, got {context}.")
        if not 0.0 <= float(pos_ratio) <= 1.0:
            raise ValueError(f"pos_ratio must be in [0, 1], got {pos_ratio}.")
        if int(num_samples) < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
        if organ_free not in ("warn", "error"):
            raise ValueError(f"organ_free must be 'warn' or 'error', got {organ_free!r}.")
        self.label_key = label_key
        self.roi_size = tuple(int(r) for r in roi)
        self.context = int(context)
        self.pos_ratio = float(pos_ratio)
        self.num_samples = int(num_samples)
        self.mask_key = mask_key
        self.organ_free = organ_free

    def organ_slices(self, label: Any) -> torch.Tensor:
        """Indices of the slices of ``label`` ``(1, H, W, D)`` that contain an annotated organ (see class doc)."""
        lab = plain_tensor(label)
        flat = lab.reshape(-1, lab.shape[-1])  # (C*H*W, D), a view: the slice axis is last and contiguous
        mask = label.meta.get(self.mask_key, None) if isinstance(label, MetaTensor) else None
        organs = None
        if mask is not None:
            m = torch.as_tensor(mask).reshape(-1).tolist()
            organs = [c for c, v in enumerate(m) if c > 0 and v > 0]
            if len(organs) == len(m) - 1:
                organs = None  # all organs annotated: any non-zero voxel counts
        # numpy is several times faster than torch for these compare+reduce passes on CPU
        arr = flat.detach().numpy() if flat.device.type == "cpu" and flat.dtype != torch.bfloat16 else None
        if organs is None:
            present = torch.as_tensor((arr != 0).any(0)) if arr is not None else (flat != 0).any(0)
        else:
            present = torch.zeros(flat.shape[-1], dtype=torch.bool)
            for c in organs:
                present |= torch.as_tensor((arr == c).any(0)) if arr is not None else (flat == c).any(0).cpu()
        return torch.nonzero(present).reshape(-1)

    def randomize(self, data: Any = None) -> None:  # the draws happen in __call__ (need the volume shape)
        pass

    def _draw(self, shape: Sequence[int], candidates: torch.Tensor | None, fname: str) -> tuple[int, int, int]:
        """Draw ``(x0, y0, z)`` for an in-plane ``shape = (H, W, D)``."""
        h, w, depth = (int(s) for s in shape)
        rx = h if self.roi_size[0] == -1 else self.roi_size[0]
        ry = w if self.roi_size[1] == -1 else self.roi_size[1]
        x0 = int(self.R.randint(0, h - rx + 1))
        y0 = int(self.R.randint(0, w - ry + 1))
        positive = self.pos_ratio > 0 and self.R.random_sample() < self.pos_ratio
        if positive and candidates is not None and candidates.numel() == 0:
            msg = f"label of {fname} contains none of its dataset's annotated organs: cannot draw an organ-centred slab"
            if self.organ_free == "error":
                raise ValueError(msg + ".")
            warnings.warn(msg + "; using a random slice instead.", stacklevel=2)
            positive = False
        if positive and candidates is not None:
            z = int(candidates[self.R.randint(0, candidates.numel())])
        else:
            z = int(self.R.randint(0, depth))
        return x0, y0, z

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any] | list[dict[Hashable, Any]]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        ref = d[self.label_key] if self.label_key in d else d[keys[0]]
        fname = ", ".join(dict.fromkeys(filename_of(d[k]) for k in keys))  # every file involved, for messages
        shape = tuple(plain_tensor(ref).shape[1:])
        if len(shape) != 3:
            raise ValueError(f"{fname}: expected a (C, H, W, D) volume, got shape {tuple(plain_tensor(ref).shape)}.")
        for key in keys:
            s = tuple(plain_tensor(d[key]).shape[1:])
            if s != shape:
                raise ValueError(
                    f"{filename_of(d[key])}: spatial shape {s} of {key!r} differs from {shape} of the reference."
                )
        n_slab = 2 * self.context + 1
        if shape[2] < n_slab:
            raise ValueError(
                f"{fname}: volume has {shape[2]} slices, thinner than the {n_slab}-slice slab (shape {shape})."
            )
        for r, s in zip(self.roi_size, shape[:2]):
            if r > s:
                raise ValueError(
                    f"{fname}: in-plane size {shape[:2]} is smaller than roi_size {self.roi_size}; resize first."
                )
        candidates = None
        if self.pos_ratio > 0:
            if self.label_key not in d:
                raise ValueError(
                    f"organ-centred slabs (pos_ratio={self.pos_ratio}) need the label key {self.label_key!r}."
                )
            candidates = self.organ_slices(d[self.label_key])
        results = []
        for _ in range(self.num_samples):
            x0, y0, z = self._draw(shape, candidates, fname)
            out = dict(d)
            for key in keys:
                out[key] = self._crop(d[key], x0, y0, z, shape)
            results.append(out)
        return results[0] if self.num_samples == 1 else results

    def _crop(self, img: Any, x0: int, y0: int, z: int, shape: Sequence[int]) -> Any:
        h, w, depth = shape
        rx = h if self.roi_size[0] == -1 else self.roi_size[0]
        ry = w if self.roi_size[1] == -1 else self.roi_size[1]
        t = plain_tensor(img)
        zi = [min(max(k, 0), depth - 1) for k in range(z - self.context, z + self.context + 1)]  # replicated edges
        if t.device.type == "cpu" and t.dtype != torch.bfloat16:
            # numpy copies this strided slab ~50x faster than torch's copy kernel (slice axis is the fastest axis)
            arr = t.detach().numpy()[:, x0 : x0 + rx, y0 : y0 + ry]
            contiguous_z = zi == list(range(zi[0], zi[0] + len(zi)))
            arr = arr[..., zi[0] : zi[0] + len(zi)] if contiguous_z else arr[..., zi]
            crop = torch.from_numpy(np.ascontiguousarray(arr))
        else:
            crop = t[:, x0 : x0 + rx, y0 : y0 + ry][..., torch.tensor(zi, device=t.device)]
        out = convert_to_dst_type(crop, img)[0]
        if isinstance(out, MetaTensor):
            shift = torch.eye(4, dtype=torch.float64)
            shift[:3, 3] = torch.tensor([x0, y0, z - self.context], dtype=torch.float64)
            out.affine = out.affine.to(torch.float64) @ shift
            out.meta["slab_index"] = torch.tensor([x0, y0, z], dtype=torch.long)
        return out


class SlabToChannelsd(MapTransform):
    """Turn 2.5D slabs into 2D samples: ``(C, H, W, S)`` -> ``(C*S, H, W)`` (slices as channels, in slice order
    z-k .. z+k) or, with ``center_only``, ``(C, H, W)`` (the centre slice, for labels).

    Metadata (e.g. ``labeled_mask``) are kept; the 4x4 affine is moved to the centre slice, so it maps
    ``(i, j, 0)`` to the world position of pixel (i, j) of that slice. Follow with
    ``RandFlipd(keys, prob=0.5, spatial_axis=0)`` and ``RandFlipd(keys, prob=0.5, spatial_axis=1)`` for the
    paper's in-plane flips.

    Args:
        keys: keys to convert. Default ``("image", "label")``.
        center_only: per key, keep only the centre slice (True for labels). Default ``(False, True)``.
        allow_missing_keys: don't raise if a key is absent.

    Raises:
        ValueError: input not 4D or with an even number of slices.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        center_only: Sequence[bool] | bool = (False, True),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not isinstance(center_only, bool) and len(tuple(center_only)) != len(self.keys):
            raise ValueError(f"center_only needs one flag per key {self.keys}, got {center_only}.")
        self.center_only = ensure_tuple_rep(center_only, len(self.keys))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, center in self.key_iterator(d, self.center_only):
            img = d[key]
            t = plain_tensor(img)
            if t.ndim != 4 or t.shape[-1] % 2 == 0:
                raise ValueError(
                    f"{filename_of(img)}: {key!r} must be a (C, H, W, S) slab with an odd number S of slices, "
                    f"got shape {tuple(t.shape)}."
                )
            c, h, w, s = t.shape
            out = t[..., s // 2] if center else t.permute(0, 3, 1, 2).reshape(c * s, h, w)
            res = convert_to_dst_type(out, img)[0]
            if isinstance(res, MetaTensor):
                shift = torch.eye(4, dtype=torch.float64)
                shift[2, 3] = float(s // 2)
                res.affine = res.affine.to(torch.float64) @ shift
            d[key] = res
        return d


def get_train_transforms(
    image_key: str = "image",
    label_key: str = "label",
    spatial_size: int | None = 256,
    roi_size: int | Sequence[int] = 224,
    context: int = 1,
    pos_ratio: float = 1.0,
    num_samples: int = 1,
    flip_prob: float = 0.5,
    organ_free: str = "warn",
    **kwargs: Any,
) -> Compose:
    """Training pipeline giving 2D samples: image ``(2*context+1, roi, roi)`` (slices z-1, z, z+1 as channels),
    label ``(1, roi, roi)`` (centre slice, global class ids) carrying ``meta["labeled_mask"]`` ``(K,)``.

    Args:
        image_key, label_key: item keys.
        spatial_size: in-plane resize (None: keep). Default 256.
        roi_size: in-plane crop size. Default 224.
        context: neighbour slices each side. Default 1.
        pos_ratio: probability of an organ-centred slab (see :class:`RandSlabCropd`). Default 1.0.
        num_samples: slabs per loaded volume. Default 1.
        flip_prob: probability of each in-plane flip. Default 0.5.
        organ_free: behaviour for organ-free volumes, ``"warn"`` (random slab) or ``"error"``.
        kwargs: passed to :func:`get_preprocessing_transforms` (hu_window, intensity, num_classes, datasets, ...).
    """
    keys = [image_key, label_key]
    xforms = get_preprocessing_transforms(image_key, label_key, spatial_size, **kwargs)
    xforms += [
        RandSlabCropd(keys, label_key=label_key, roi_size=roi_size, context=context, pos_ratio=pos_ratio,
                      num_samples=num_samples, organ_free=organ_free),
        SlabToChannelsd(keys, center_only=(False, True)),
        RandFlipd(keys, prob=flip_prob, spatial_axis=0),
        RandFlipd(keys, prob=flip_prob, spatial_axis=1),
    ]
    return Compose(xforms)
