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

"""Training and validation Datasets on the memory-mapped preprocessed cache, so that RAM does not grow with the
number of volumes.

:class:`CachedSliceDataset` yields one 2.5D training sample per index by reading the ``2*context+1`` slices it
needs from the memory map (about 0.4 MB at 256², whatever the volume's size). Its transform is the random part
of every cache mode, :func:`~pipofan_monai.preprocessing.train_transforms.get_train_random_transforms`, whose
:class:`~pipofan_monai.preprocessing.train_transforms.RandSlabCropd` takes the cache entry (organ slices from the lists
stored in the cache) where the other modes give it the whole volume. With the same seed it gives the same samples
as ``CacheDataset(data, get_train_transforms(...))``: labels identical, images equal to those images rounded to
float16. Random states are those of MONAI: the transforms live in ``self.transform`` (a ``Compose``), which
``monai.data.DataLoader`` seeds per worker (``worker_init_fn`` / ``set_rnd``).

:class:`CachedVolumeDataset` streams whole preprocessed volumes for validation, one at a time from the memory map.

:func:`make_train_dataset` / :func:`make_val_dataset` choose the data path from the bundle config's ``cache``:
``"mmap"`` (this module), ``"memory"`` (MONAI ``CacheDataset``, fastest for the small demo), ``"persistent"``
(MONAI ``PersistentDataset``) or ``"none"`` (plain ``Dataset``).
"""

from __future__ import annotations

import os
from dataclasses import fields
from typing import Any, Mapping, Sequence, Union

import numpy as np
import torch
from monai.data import Dataset, MetaTensor
from monai.transforms import Compose, Randomizable

from pipofan_monai.plans import DEFAULT_PREPROCESSING
from pipofan_monai.preprocessing.cache import CacheEntry, CacheSettings, PreprocessedCache
from pipofan_monai.preprocessing.slices import stack_neighbour_slices
from pipofan_monai.preprocessing.train_transforms import ENTRY_KEY, get_train_random_transforms

__all__ = [
    "CACHE_MODES",
    "CachedSliceDataset",
    "CachedVolumeDataset",
    "make_train_dataset",
    "make_val_dataset",
]

#: Training samples per second of each mode (benchmarks/cache_modes.py: one process, one thread, 224² crops of
#: 256² slices; 2026-12-05, the 2-core AMD EPYC CPU machine of the project, shared, load 2.0 to 1.3), two
#: synthetic 512x512x450 int16 CTs: mmap 1099, memory 7.9 (``CacheDataset`` deep-copies the whole volume per
#: sample; 53.9 without the copy), persistent 0.31, none 0.17; at the demo's 128x128x40 (load 2.9): mmap 1169,
#: memory 75 (237 without the copy), persistent 32, none 28. Only "mmap" is worth training with (the default; its
#: cost does not grow with the volume, the others' do); "memory", "persistent" and "none" stay because configs
#: and command lines that pass ``--cache`` rely on them, and "none" needs no disk.
CACHE_MODES = ("mmap", "memory", "persistent", "none")

#: the deterministic preprocessing: the plans' preprocessing dict or a CacheSettings (see make_train_dataset)
Preprocessing = Union[CacheSettings, Mapping[str, Any], None]


def _context_of(preprocessing: Preprocessing, context: int | None) -> int:
    """``context`` if given, else the plans' preprocessing dict's, else the default."""
    if context is not None:
        return int(context)
    if isinstance(preprocessing, Mapping) and preprocessing.get("context") is not None:
        return int(preprocessing["context"])
    return int(DEFAULT_PREPROCESSING["context"])


def _transform_kwargs(preprocessing: Preprocessing, kwargs: Mapping[str, Any], context: bool) -> dict:
    """Arguments of ``get_train_transforms`` / ``get_val_transforms`` (``context=False``: without the plans'
    ``context``, which would stack the slices in the Dataset) from ``preprocessing`` and ``kwargs`` (on top)."""
    if isinstance(preprocessing, CacheSettings):
        base = {f.name: getattr(preprocessing, f.name) for f in fields(CacheSettings)}
    else:
        base = dict(preprocessing or {})
        if not context:
            base.pop("context", None)
    return {**base, **kwargs}


def _split_transform(transform: Any) -> tuple[list, list]:
    """``(deterministic head, random tail)`` of a ``Compose``: split before its first ``Randomizable`` transform,
    the rule by which ``CacheDataset`` caches (so every cache mode stores the same head and applies the same
    tail)."""
    xforms = list(getattr(transform, "transforms", None) or [])
    at = next((i for i, t in enumerate(xforms) if isinstance(t, Randomizable)), len(xforms))
    return xforms[:at], xforms[at:]


def _label_settings(head: Sequence[Any]) -> dict:
    """The cache's label settings from the deterministic head's ``MapDatasetLabelsd``: its ``label_space`` (else
    ``num_classes`` and ``datasets``, the dataset table), ``partial_labels``, ``allow_missing_label``.

    Raises:
        ValueError: the head maps no labels (not a training / validation pipeline).
    """
    from pipofan_monai.preprocessing.labels import MapDatasetLabelsd

    for t in head:
        if isinstance(t, MapDatasetLabelsd):
            vocabulary = ({"label_space": t.label_space} if t.label_space is not None
                          else {"num_classes": t.num_classes, "datasets": t.datasets})
            return {**vocabulary, "partial_labels": t.partial_labels, "allow_missing_label": t.allow_missing_keys}
    raise ValueError("cache='mmap' with a transform needs its deterministic part to map the labels "
                     "(MapDatasetLabelsd), as get_train_transforms / get_val_transforms do.")


class _CachedVolumes(Dataset):
    """Base of the cached Datasets: ``data``, ``transform``, then the filled cache (``self.cache``,
    ``self.entries``, one :class:`~pipofan_monai.preprocessing.cache.CacheEntry` per item)."""

    def __init__(self, data: Sequence[Mapping[str, Any]], transform: Any, cache_dir: str | os.PathLike,
                 preprocessing: Preprocessing, settings: Mapping[str, Any], num_workers: int, progress: bool) -> None:
        # ``data`` then ``transform`` first in __dict__: MONAI's set_rnd seeds ``transform`` as it does for
        # CacheDataset, which is what makes the samples equal to the old path's
        super().__init__(list(data), transform)
        self.cache = PreprocessedCache(cache_dir, preprocessing, **settings)
        self.image_key, self.label_key = self.cache.image_key, self.cache.label_key
        self.entries: list[CacheEntry] = self.cache.fill(self.data, num_workers=num_workers, progress=progress)


class _AllClassesLabeled:
    """A cache entry seen with an all-ones labeled mask (``partial_labels=False``, the naive baseline: the cache
    always holds the dataset's true mask)."""

    def __init__(self, entry: CacheEntry) -> None:
        self._entry = entry

    def __getattr__(self, name: str) -> Any:
        return getattr(self._entry, name)

    @property
    def labeled_mask(self) -> np.ndarray:
        return np.ones_like(self._entry.labeled_mask)


class CachedSliceDataset(_CachedVolumes):
    """Training Dataset of 2.5D samples read from the memory-mapped preprocessed cache.

    Each index gives one sample (or ``num_samples``, as a list): image ``(2*context+1, rx, ry)`` float32 (slices
    z-1, z, z+1 as channels), label ``(1, rx, ry)`` float32 global class ids with ``label.meta["labeled_mask"]``
    ``(K,)``, other item keys passed through; the samples of ``CacheDataset(data, get_train_transforms(...))``
    for the same random state, images rounded to float16. Use it with any sampler (e.g. ``PartialLabelSampler``)
    and ``monai.data.DataLoader`` workers (seeded per worker as MONAI does). Memory does not grow with the volumes:
    workers share the OS page cache of the memory-mapped files.

    Args:
        data: datalist items with image and label file paths and a ``dataset`` name.
        cache_dir: the preprocessed cache folder (filled at construction where entries are missing or stale).
        preprocessing: the deterministic preprocessing: the plans' preprocessing dict (``spatial_size``,
            ``hu_window``, ``intensity``, ``context``, ``image_mode``) or a
            :class:`~pipofan_monai.preprocessing.cache.CacheSettings`; None: the defaults.
        roi_size, pos_ratio, num_samples, flip_prob, organ_free, partial_labels: the random part, as
            :func:`~pipofan_monai.preprocessing.train_transforms.get_train_transforms`.
        context: neighbour slices each side (None: the ``preprocessing`` dict's, else 1).
        num_workers: processes filling the cache (not the DataLoader's). Default 0.
        progress: progress bar while filling. Default True.
        random_transforms: the random part given whole (the random tail of ``get_train_transforms``, as
            :func:`make_train_dataset` passes it); then ``roi_size`` ... ``organ_free`` are not used.
        settings: :class:`~pipofan_monai.preprocessing.cache.CacheSettings` attributes on top of
            ``preprocessing`` (``num_classes``, ``datasets``, ``reader``, item keys, or ``spatial_size=40``, ...).
    """

    def __init__(
        self,
        data: Sequence[Mapping[str, Any]],
        cache_dir: str | os.PathLike,
        preprocessing: Preprocessing = None,
        roi_size: int | Sequence[int] = 224,
        context: int | None = None,
        pos_ratio: float = 1.0,
        num_samples: int = 1,
        flip_prob: float = 0.5,
        organ_free: str = "warn",
        partial_labels: bool = True,
        num_workers: int = 0,
        progress: bool = True,
        random_transforms: Sequence[Any] | None = None,
        **settings: Any,
    ) -> None:
        if random_transforms is None:
            random_transforms = get_train_random_transforms(
                settings.get("image_key", "image"), settings.get("label_key", "label"), roi_size=roi_size,
                context=_context_of(preprocessing, context), pos_ratio=pos_ratio, num_samples=num_samples,
                flip_prob=flip_prob, organ_free=organ_free)
        transform = Compose(list(random_transforms))
        self.partial_labels = bool(partial_labels)
        super().__init__(data, transform, cache_dir, preprocessing, settings, num_workers, progress)

    def _transform(self, index: int) -> Any:
        from monai.transforms import apply_transform

        d = dict(self.data[index])
        entry = self.entries[index]
        d[ENTRY_KEY] = entry if self.partial_labels else _AllClassesLabeled(entry)
        return apply_transform(self.transform, d)


class CachedVolumeDataset(_CachedVolumes):
    """Validation Dataset streaming whole preprocessed volumes from the cache, one per index.

    Each index gives image ``(1, S, S, D)`` float32 (or ``(2*context+1, S, S, D)`` with ``context``) and label
    ``(1, S, S, D)`` float32 global ids with ``meta["labeled_mask"]`` (the dataset's true mask), on the grid and
    with the affine of :func:`~pipofan_monai.preprocessing.pipelines.get_val_transforms`' output; only the volume
    being evaluated is in memory.

    Args:
        data: datalist items (image, label, dataset).
        cache_dir: the preprocessed cache folder.
        preprocessing: the deterministic preprocessing, as :class:`CachedSliceDataset` (its ``context`` is not
            used here: the 2.5D inferer stacks the slices).
        context: if not None, stack neighbour slices as channels here (otherwise the 2.5D inferer does it).
        transform: optional extra transform applied to each volume dict.
        num_workers, progress: cache filling, as :class:`CachedSliceDataset`.
        settings: :class:`~pipofan_monai.preprocessing.cache.CacheSettings` attributes, as :class:`CachedSliceDataset`.
    """

    def __init__(
        self,
        data: Sequence[Mapping[str, Any]],
        cache_dir: str | os.PathLike,
        preprocessing: Preprocessing = None,
        context: int | None = None,
        transform: Any = None,
        num_workers: int = 0,
        progress: bool = True,
        **settings: Any,
    ) -> None:
        self.context = context
        super().__init__(data, transform, cache_dir, preprocessing, settings, num_workers, progress)

    def _transform(self, index: int) -> Any:
        from monai.transforms import apply_transform

        entry = self.entries[index]
        depth, h, w = entry.shape
        common = {"filename_or_obj": entry.filename, "space": "RAS",
                  "spatial_shape": np.asarray(entry.meta.get("original_shape") or (h, w, depth))}
        if entry.meta.get("original_affine") is not None:
            common["original_affine"] = np.asarray(entry.meta["original_affine"], dtype=np.float64)
        image = np.empty((h, w, depth), dtype=np.float32)
        image[...] = np.moveaxis(entry.image, 0, -1)  # one pass over the memory map: (D, H, W) -> (H, W, D)
        label = np.empty((h, w, depth), dtype=np.float32)
        label[...] = np.moveaxis(entry.label, 0, -1)
        img = MetaTensor(torch.from_numpy(image)[None], affine=entry.affine, meta=dict(common))
        if self.context is not None:
            img = stack_neighbour_slices(img, int(self.context))
        lab_meta = {**common, "filename_or_obj": entry.meta.get("label_filename", entry.filename),
                    "labeled_mask": torch.from_numpy(entry.labeled_mask)}
        d = dict(self.data[index])
        d[self.image_key] = img
        d[self.label_key] = MetaTensor(torch.from_numpy(label)[None], affine=entry.affine, meta=lab_meta)
        return apply_transform(self.transform, d) if self.transform is not None else d


def _check_mode(cache: str, cache_rate: float, cache_dir: Any) -> str:
    mode = str(cache).lower()
    if mode not in CACHE_MODES:
        raise ValueError(f"cache must be one of {', '.join(CACHE_MODES)}, got {cache!r}.")
    if mode != "memory" and float(cache_rate) != 1.0:
        raise ValueError(f"cache_rate={cache_rate} applies to cache='memory' (MONAI CacheDataset) only; with "
                         f"cache={mode!r} every volume is read from disk. Use cache='mmap' to bound memory.")
    if mode in ("mmap", "persistent") and cache_dir in (None, ""):
        raise ValueError(f"cache={mode!r} needs a cache_dir.")
    return mode


def _monai_dataset(mode: str, data: Sequence[Mapping[str, Any]], transform: Any, cache_dir: Any, cache_rate: float,
                   num_workers: int, progress: bool, **cache_kwargs: Any) -> Dataset:
    """MONAI's Dataset of the modes other than ``"mmap"``: ``CacheDataset`` (``"memory"``), ``PersistentDataset``
    under ``cache_dir/persistent`` or a plain ``Dataset``."""
    from monai.data import CacheDataset, PersistentDataset

    if mode == "memory":
        return CacheDataset(data, transform, cache_rate=cache_rate, num_workers=max(1, int(num_workers)),
                            progress=progress, **cache_kwargs)
    if mode == "persistent":
        # track_meta: MONAI's default stores plain tensors, which drops the labeled-class masks (and affines) of
        # every sample read back from the files; keeping MetaTensors needs pickle loading (the user's own folder)
        return PersistentDataset(data, transform, cache_dir=os.path.join(os.fspath(cache_dir), "persistent"),
                                 track_meta=True, weights_only=False)
    return Dataset(data, transform)


def make_train_dataset(
    data: Sequence[Mapping[str, Any]],
    cache: str = "mmap",
    cache_dir: str | os.PathLike | None = None,
    cache_rate: float = 1.0,
    copy_cache: bool = True,
    num_workers: int = 0,
    progress: bool = True,
    transform: Any = None,
    preprocessing: Preprocessing = None,
    **kwargs: Any,
) -> Dataset:
    """The training Dataset of the bundle for ``cache`` mode.

    Args:
        data: training items.
        cache: ``"mmap"`` (default: :class:`CachedSliceDataset`, the real-size path), ``"memory"``
            (``CacheDataset`` of ``get_train_transforms``: whole float32 volumes in RAM, fastest for the demo),
            ``"persistent"`` (``PersistentDataset`` under ``cache_dir/persistent``: whole volumes reloaded per
            sample, slow at real size) or ``"none"`` (everything recomputed per sample).
        cache_dir: folder of the ``"mmap"`` / ``"persistent"`` caches.
        cache_rate: fraction cached in RAM, ``"memory"`` only (a clear error otherwise).
        copy_cache: ``CacheDataset``'s deep copy per sample (``"memory"``). Default True (MONAI's default).
        num_workers: processes (threads for ``CacheDataset``) filling the cache.
        progress: progress bar while filling.
        transform: the whole training transform (the bundle's ``train#preprocessing``, from
            ``get_train_transforms``); None: ``get_train_transforms`` of ``preprocessing`` and ``kwargs``. Every
            mode splits it as ``CacheDataset`` does, before its first random transform: the other modes cache or
            recompute the deterministic head, ``"mmap"`` stores it in the cache (its label settings,
            ``num_classes``, ``datasets``, ``partial_labels``, are read from the head's ``MapDatasetLabelsd``) and
            applies the random tail to the cached volumes.
        preprocessing: the deterministic preprocessing, one object: the plans' preprocessing dict (the bundle's
            ``@preprocessing_settings``: ``spatial_size``, ``hu_window``, ``intensity``, ``context``,
            ``image_mode``) or a :class:`~pipofan_monai.preprocessing.cache.CacheSettings`. None: the defaults.
        kwargs: the rest, as :class:`CachedSliceDataset` / ``get_train_transforms`` take them (roi_size,
            pos_ratio, num_classes, datasets, partial_labels, ...); a preprocessing setting given here
            (``spatial_size=...``, the older calling style) overrides ``preprocessing``'s.
    """
    mode = _check_mode(cache, cache_rate, cache_dir)
    if mode == "mmap":
        if transform is not None:  # its head is what the cache stores, its tail the random part
            head, tail = _split_transform(transform)
            settings = _label_settings(head)
            settings.pop("allow_missing_label")
            kwargs = {**settings, **kwargs, "random_transforms": tail}
        return CachedSliceDataset(data, cache_dir, preprocessing, num_workers=num_workers,  # type: ignore[arg-type]
                                  progress=progress, **kwargs)
    from pipofan_monai.preprocessing.train_transforms import get_train_transforms

    if transform is None:
        transform = get_train_transforms(**_transform_kwargs(preprocessing, kwargs, context=True))
    return _monai_dataset(mode, data, transform, cache_dir, cache_rate, num_workers, progress, copy_cache=copy_cache)


def make_val_dataset(
    data: Sequence[Mapping[str, Any]],
    cache: str = "mmap",
    cache_dir: str | os.PathLike | None = None,
    cache_rate: float = 1.0,
    num_workers: int = 0,
    progress: bool = True,
    transform: Any = None,
    preprocessing: Preprocessing = None,
    **kwargs: Any,
) -> Dataset:
    """The validation Dataset for ``cache`` mode (see :func:`make_train_dataset`; ``transform``: the bundle's
    ``validate#preprocessing``, whose label settings ``"mmap"`` reads; ``preprocessing``: as there, its
    ``context`` is not used: the 2.5D inferer stacks the slices); ``kwargs`` are
    :func:`~pipofan_monai.preprocessing.pipelines.get_val_transforms` arguments (``"mmap"``: ``num_classes``,
    ``datasets``, ``context``; ``allow_missing_label`` must stay False there)."""
    mode = _check_mode(cache, cache_rate, cache_dir)
    if mode == "mmap":
        if transform is not None:  # the deterministic pipeline, stored by the cache: its label settings
            kwargs = {**_label_settings(_split_transform(transform)[0]), **kwargs}
        if kwargs.pop("allow_missing_label", False):
            raise ValueError("cache='mmap' validation needs a label for every item (allow_missing_label=False).")
        kwargs.pop("partial_labels", None)  # validation always uses the true masks
        return CachedVolumeDataset(data, cache_dir, preprocessing, num_workers=num_workers,  # type: ignore[arg-type]
                                   progress=progress, **kwargs)
    from pipofan_monai.preprocessing.pipelines import get_val_transforms

    if transform is None:
        transform = get_val_transforms(**_transform_kwargs(preprocessing, kwargs, context=False))
    return _monai_dataset(mode, data, transform, cache_dir, cache_rate, num_workers, progress)
