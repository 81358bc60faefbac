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
image slab into ``2*context+1`` channels (slices z-1, z, z+1) and keeps the label's centre slice, and
:class:`RandSlabFlipd` flips both in-plane axes. These are the random part of every cache mode
(:func:`get_train_random_transforms`): ``RandSlabCropd`` takes a whole volume (``CacheDataset``, ``Dataset``) or a
volume of the memory-mapped cache (``CachedSliceDataset``, reading only the slab), with the same draws.
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
from monai.transforms import Compose, MapTransform, Randomizable, RandomizableTransform
from monai.utils import convert_to_dst_type, ensure_tuple_rep

from pipofan_monai.vocabulary.masks import LABELED_MASK_KEY
from pipofan_monai.plans import DEFAULT_PREPROCESSING
from pipofan_monai.preprocessing.pipelines import get_preprocessing_transforms
from pipofan_monai.preprocessing.slices import plain_tensor
from pipofan_monai.utils import filename_of

__all__ = ["RandSlabCropd", "SlabToChannelsd", "RandSlabFlipd", "get_train_random_transforms",
           "get_train_transforms"]

#: the item key under which a cached Dataset hands a cache entry to :class:`RandSlabCropd`
ENTRY_KEY = "cache_entry"


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
        entry_key: when the item holds a volume of the memory-mapped preprocessed cache under this key (a
            :class:`~pipofan_monai.preprocessing.cache.CacheEntry`, put there by
            :class:`~pipofan_monai.apps.training.cached_data.CachedSliceDataset`) the slab is drawn the same way from
            it (organ slices from its metadata) and only its slices are read; ``keys`` are then
            ``(image_key, label_key)`` and the outputs carry few metadata keys (file name, affine, slab index,
            labeled mask). Default ``"cache_entry"``.

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
        entry_key: str = ENTRY_KEY,
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
        self.entry_key = entry_key

    @staticmethod
    def annotated_organs(mask: Any) -> list[int] | None:
        """The organ classes (> 0) of a labeled-class mask ``(K,)``; None when there is no mask or every organ
        is annotated (then any non-zero label counts)."""
        if mask is None:
            return None
        m = torch.as_tensor(mask).reshape(-1).tolist()
        organs = [c for c, v in enumerate(m) if c > 0 and v > 0]
        return None if len(organs) == len(m) - 1 else organs

    def organ_slices(self, label: Any) -> torch.Tensor:
        """Indices of the slices of ``label`` ``(1, H, W, D)`` that contain an annotated organ (see class doc)."""
        lab = plain_tensor(label)
        flat = lab.reshape(-1, lab.shape[-1])  # (C*H*W, D), a view: the slice axis is last and contiguous
        organs = self.annotated_organs(label.meta.get(self.mask_key, None) if isinstance(label, MetaTensor) else None)
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
        rx, ry = self._window(h, w)
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

    def _window(self, h: int, w: int) -> tuple[int, int]:
        return (h if self.roi_size[0] == -1 else self.roi_size[0]), (w if self.roi_size[1] == -1 else self.roi_size[1])

    def _slab_slices(self, z: int, depth: int) -> list[int]:
        return [min(max(k, 0), depth - 1) for k in range(z - self.context, z + self.context + 1)]  # replicated edges

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any] | list[dict[Hashable, Any]]:
        d = dict(data)
        if self.entry_key in d:
            source: Any = _CachedSource(d.pop(self.entry_key), tuple(self.keys), self.label_key, self.mask_key)
        else:
            keys = list(self.key_iterator(d))
            if not keys:
                return d
            source = _VolumeSource(d, keys, self.label_key)
        shape, fname = source.shape, source.fname
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
            if not source.has_label:
                raise ValueError(
                    f"organ-centred slabs (pos_ratio={self.pos_ratio}) need the label key {self.label_key!r}."
                )
            candidates = source.organ_slices(self)
        results = []
        for _ in range(self.num_samples):
            x0, y0, z = self._draw(shape, candidates, fname)
            rx, ry = self._window(shape[0], shape[1])
            out = dict(d)
            out.update(source.crop(x0, y0, z, rx, ry, self._slab_slices(z, shape[2]), self.context))
            results.append(out)
        return results[0] if self.num_samples == 1 else results


def _slab_affine(affine: torch.Tensor, x0: int, y0: int, z0: int) -> torch.Tensor:
    """The affine of a crop starting at voxel ``(x0, y0, z0)``."""
    shift = torch.eye(4, dtype=torch.float64)
    shift[:3, 3] = torch.tensor([x0, y0, z0], dtype=torch.float64)
    return affine.to(torch.float64) @ shift


def _read_slab(arr: np.ndarray, x0: int, y0: int, rx: int, ry: int, zi: list[int]) -> torch.Tensor:
    """``arr[..., x0:x0+rx, y0:y0+ry, zi]`` of a ``(C, H, W, D)`` array as a contiguous tensor (numpy copies this
    strided slab ~50x faster than torch's copy kernel: the slice axis is the fastest axis)."""
    sub = arr[:, x0 : x0 + rx, y0 : y0 + ry]
    contiguous_z = zi == list(range(zi[0], zi[0] + len(zi)))
    sub = sub[..., zi[0] : zi[0] + len(zi)] if contiguous_z else sub[..., zi]
    return torch.from_numpy(np.ascontiguousarray(sub))


class _VolumeSource:
    """Whole volumes in the item dict (``(C, H, W, D)`` tensors, the in-memory and on-the-fly paths)."""

    def __init__(self, d: Mapping[Hashable, Any], keys: Sequence[Hashable], label_key: Hashable) -> None:
        self.d, self.keys, self.label_key = d, keys, label_key
        self.has_label = label_key in d
        ref = d[label_key] if self.has_label else d[keys[0]]
        self.fname = ", ".join(dict.fromkeys(filename_of(d[k]) for k in keys))  # every file involved, for messages
        full = tuple(plain_tensor(ref).shape)
        shape = full[1:]
        if len(shape) != 3:
            raise ValueError(f"{self.fname}: expected a (C, H, W, D) volume, got shape {full}.")
        for key in keys:
            s = tuple(plain_tensor(d[key]).shape[1:])
            if s != shape:
                raise ValueError(
                    f"{filename_of(d[key])}: spatial shape {s} of {key!r} differs from {shape} of the reference."
                )
        self.shape: tuple[int, int, int] = shape  # type: ignore[assignment]

    def organ_slices(self, crop: RandSlabCropd) -> torch.Tensor:
        return crop.organ_slices(self.d[self.label_key])

    def crop(self, x0: int, y0: int, z: int, rx: int, ry: int, zi: list[int], context: int) -> dict:
        out = {}
        for key in self.keys:
            img = self.d[key]
            t = plain_tensor(img)
            if t.device.type == "cpu" and t.dtype != torch.bfloat16:
                crop = _read_slab(t.detach().numpy(), x0, y0, rx, ry, zi)
            else:
                crop = t[:, x0 : x0 + rx, y0 : y0 + ry][..., torch.tensor(zi, device=t.device)]
            res = convert_to_dst_type(crop, img)[0]
            if isinstance(res, MetaTensor):
                res.affine = _slab_affine(res.affine, x0, y0, z - context)
                res.meta["slab_index"] = torch.tensor([x0, y0, z], dtype=torch.long)
            out[key] = res
        return out


class _CachedSource:
    """A volume of the memory-mapped preprocessed cache: a
    :class:`~pipofan_monai.preprocessing.cache.CacheEntry` (or anything with its ``shape`` ``(D, H, W)``,
    ``image`` / ``label`` slice-major arrays, ``affine``, ``labeled_mask``, ``organ_slices`` and file names).
    Organ slices come from the entry's metadata and only the slab's slices are read."""

    def __init__(self, entry: Any, keys: tuple, label_key: Hashable, mask_key: str) -> None:
        if len(keys) != 2 or keys[1] != label_key:
            raise ValueError(f"a cache entry needs keys (image_key, label_key), got {keys}.")
        self.entry, self.keys, self.mask_key, self.has_label = entry, keys, mask_key, True
        depth, h, w = entry.shape
        self.shape, self.fname = (h, w, depth), entry.filename

    def organ_slices(self, crop: RandSlabCropd) -> torch.Tensor:
        return self.entry.organ_slices(crop.annotated_organs(self.entry.labeled_mask))

    def crop(self, x0: int, y0: int, z: int, rx: int, ry: int, zi: list[int], context: int) -> dict:
        e = self.entry
        contiguous = zi == list(range(zi[0], zi[0] + len(zi)))
        # the only reads from the memory maps, (S, rx, ry) slice-major; torch converts float16 -> float32 ~7x
        # faster than numpy here. np.array copies (a writable array, not a read-only view of the map).
        img_rows = e.image[zi[0] : zi[0] + len(zi)] if contiguous else e.image[zi]
        lab_rows = e.label[zi[0] : zi[0] + len(zi)] if contiguous else e.label[zi]
        slab = torch.from_numpy(np.array(img_rows[:, x0 : x0 + rx, y0 : y0 + ry], order="C")).float()
        lab = torch.from_numpy(np.array(lab_rows[:, x0 : x0 + rx, y0 : y0 + ry], order="C")).float()
        affine = _slab_affine(e.affine, x0, y0, z - context)
        index = torch.tensor([x0, y0, z], dtype=torch.long)
        # few metadata keys: each one costs collation time in the workers (the mask is what the loss needs)
        image = MetaTensor(slab.permute(1, 2, 0)[None], affine=affine,
                           meta={"filename_or_obj": e.filename, "slab_index": index})
        label = MetaTensor(lab.permute(1, 2, 0)[None], affine=affine.clone(),
                           meta={"filename_or_obj": e.label_filename, "slab_index": index,
                                 self.mask_key: torch.from_numpy(np.asarray(e.labeled_mask, dtype=np.float32))})
        return {self.keys[0]: image, self.keys[1]: label}


class SlabToChannelsd(MapTransform):
    """Turn 2.5D slabs into 2D samples: ``(C, H, W, S)`` -> ``(C*S, H, W)`` (slices as channels, in slice order
    z-k .. z+k) or, with ``center_only``, ``(C, H, W)`` (the centre slice, for labels).

    Metadata (e.g. ``labeled_mask``) are kept; the 4x4 affine is moved to the centre slice, so it maps
    ``(i, j, 0)`` to the world position of pixel (i, j) of that slice. Follow with
    ``RandSlabFlipd(keys, prob=0.5, spatial_axis=0)`` and ``RandSlabFlipd(keys, prob=0.5, spatial_axis=1)`` for the
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


class RandSlabFlipd(RandomizableTransform, MapTransform):
    """The in-plane flip of the training samples: ``monai.transforms.RandFlipd`` without its bookkeeping.

    Same draw as ``RandFlipd`` (one ``R.rand() < prob`` per call, so a ``Compose`` seeds it identically) and
    same result (``torch.flip`` of the spatial axis, the affine updated as MONAI's ``Flip`` does: the axis
    reversed about its last index), without the applied-operation tracking, which costs ~5 ms per 224² sample on
    a CPU core (the whole per-sample budget of the real-size data path); training samples are never inverted.

    Args:
        keys: keys of ``(C, H, W[, D])`` tensors (MetaTensors get the flipped affine).
        prob: flip probability. Default 0.5.
        spatial_axis: spatial axis to flip (0 = H). Default 0.
        allow_missing_keys: don't raise if a key is absent.
    """

    def __init__(self, keys: KeysCollection, prob: float = 0.5, spatial_axis: int = 0,
                 allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.spatial_axis = int(spatial_axis)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        ax = self.spatial_axis
        for key in self.key_iterator(d):
            img = d[key]
            t = torch.flip(plain_tensor(img), dims=(ax + 1,))
            if isinstance(img, MetaTensor):
                flip = torch.eye(4, dtype=torch.float64)
                flip[ax, ax], flip[ax, 3] = -1.0, float(t.shape[ax + 1] - 1)
                t = MetaTensor(t, affine=img.affine.to(torch.float64) @ flip,
                               meta={k: v for k, v in img.meta.items() if k != "affine"})
            d[key] = t
        return d


def get_train_random_transforms(
    image_key: str = "image",
    label_key: str = "label",
    roi_size: int | Sequence[int] = 224,
    context: int = 1,
    pos_ratio: float = 1.0,
    num_samples: int = 1,
    flip_prob: float = 0.5,
    organ_free: str = "warn",
) -> list:
    """The random part of training, the same for every cache mode: :class:`RandSlabCropd` (a whole
    ``(C, H, W, D)`` volume or a cache entry in, a ``(C, rx, ry, 2*context+1)`` slab out),
    :class:`SlabToChannelsd` and the two in-plane :class:`RandSlabFlipd`. Arguments as
    :func:`get_train_transforms`."""
    keys = [image_key, label_key]
    return [
        RandSlabCropd(keys, label_key=label_key, roi_size=roi_size, context=context, pos_ratio=pos_ratio,
                      num_samples=num_samples, organ_free=organ_free),
        SlabToChannelsd(keys, center_only=(False, True)),
        RandSlabFlipd(keys, prob=flip_prob, spatial_axis=0),
        RandSlabFlipd(keys, prob=flip_prob, spatial_axis=1),
    ]


def get_train_transforms(
    image_key: str = "image",
    label_key: str = "label",
    roi_size: int | Sequence[int] = 224,
    context: int | None = None,
    pos_ratio: float = 1.0,
    num_samples: int = 1,
    flip_prob: float = 0.5,
    organ_free: str = "warn",
    preprocessing: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> Compose:
    """Training pipeline giving 2D samples: image ``(2*context+1, roi, roi)`` (slices z-1, z, z+1 as channels),
    label ``(1, roi, roi)`` (centre slice, global class ids) carrying ``meta["labeled_mask"]`` ``(K,)``:
    the deterministic :func:`~pipofan_monai.preprocessing.pipelines.get_preprocessing_transforms` (what
    ``CacheDataset`` and the memory-mapped cache keep) followed by :func:`get_train_random_transforms`.

    Args:
        image_key, label_key: item keys.
        roi_size: in-plane crop size. Default 224.
        context: neighbour slices each side (None: ``preprocessing``'s, else 1).
        pos_ratio: probability of an organ-centred slab (see :class:`RandSlabCropd`). Default 1.0.
        num_samples: slabs per loaded volume. Default 1.
        flip_prob: probability of each in-plane flip. Default 0.5.
        organ_free: behaviour for organ-free volumes, ``"warn"`` (random slab) or ``"error"``.
        preprocessing: the plans' preprocessing dict (``spatial_size``, ``hu_window``, ``intensity``,
            ``context``, ``image_mode``; the bundle's ``@preprocessing_settings``); None: the defaults.
        kwargs: passed to :func:`get_preprocessing_transforms` on top of ``preprocessing`` (``spatial_size``:
            in-plane resize, None keeps the size; hu_window, intensity, label_space, ct_check, ...). With a
            ``label_space`` and no ``partial_labels``, the training follows the label space's ``partial_labels``
            (False: the naive baseline's all-ones masks; validation pipelines keep the true masks).
    """
    space = kwargs.get("label_space")
    if space is not None and "partial_labels" not in kwargs:
        kwargs["partial_labels"] = space.partial_labels
    prep = {**DEFAULT_PREPROCESSING, **(preprocessing or {}), **kwargs}
    planned_context = prep.pop("context")
    context = int(planned_context if context is None else context)
    xforms = get_preprocessing_transforms(image_key, label_key, **prep)
    xforms += get_train_random_transforms(image_key, label_key, roi_size, context, pos_ratio, num_samples,
                                          flip_prob, organ_free)
    return Compose(xforms)
