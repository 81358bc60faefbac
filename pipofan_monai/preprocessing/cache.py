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

"""A persisted, memory-mapped cache of the deterministic preprocessing, so that each volume is preprocessed once
and RAM does not grow with the datasets (the idea of nnU-Net's preprocessed folder).

Every volume is preprocessed ONCE by the project's own deterministic pipeline
(:func:`~pipofan_monai.preprocessing.pipelines.get_preprocessing_transforms`: load, RAS, dataset label mapping,
HU window and scale, in-plane resize) and stored in ``cache_dir`` as one folder per volume::

    cache_dir/
        <case>-<16 hex>/            one entry; the name hashes the settings and the source paths
            image.npy               (D, S, S) float16, slice-major: one 3-slice slab is one contiguous read
            label.npy               (D, S, S) uint8, global class ids
            meta.json               key, settings, sources (path, size, mtime_ns), affine, spacing, original
                                    shape, dataset, labeled mask, per-class slice lists, array shapes/dtypes

Why float16 and not int16 HU: the pipeline windows BEFORE the (trilinear) in-plane resize, and clipping does not
commute with interpolation, so int16 HU windowed after cropping would not give today's samples. float16 of the
final values does (within float16 rounding: <= 2.5e-4 on the [-1, 1] scale), at 2 bytes per voxel like int16.

Entries are found again by their folder name and accepted only if ``meta.json`` parses, its ``key`` (settings +
source path, size and ``mtime_ns``) matches and both arrays have the recorded shape, dtype and exact file size;
otherwise that one entry is rebuilt. An entry is written in a temporary folder inside ``cache_dir`` and renamed
into place when complete, so a reader never sees half an entry and two processes (e.g. DDP ranks) may fill one
cache concurrently. They also share the work: a process builds an entry only while holding that entry's lock
(``cache_dir/.locks/<entry>.lock``, a kernel file lock through ``filelock``); an entry locked by another process is
left to it and picked up when its lock is free, so N ranks preprocess each volume once, not N times. Arrays are
opened with ``np.load(mmap_mode="r")``: a training sample reads only the slices it needs, and the OS page cache (not
the Python heap) holds what is hot.

This module holds the cache folder and its entries (find, build, publish, lock); beside it, ``cache_keys.py``
decides whether an entry on disk may be reused (settings, source fingerprints, keys, the check of an entry
folder), ``cache_fill.py`` builds many entries with a process pool shared with other filling processes, and
``cache_files.py`` writes and checksums an entry's files. The public names stay importable from here.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from filelock import FileLock, Timeout

from pipofan_monai.plans import PREPROCESSING_KEYS
from pipofan_monai.preprocessing.cache_files import write_array, write_json
from pipofan_monai.preprocessing.cache_fill import build_missing
from pipofan_monai.preprocessing.cache_keys import (
    CACHE_FORMAT,
    ROUTINE_REBUILDS,
    CacheSettings,
    case_stem,
    check_entry_folder,
    digest,
    entry_settings,
    source_fingerprint,
)
from pipofan_monai.utils import fsync_dir, pid_alive

__all__ = [
    "CACHE_FORMAT",
    "CacheSettings",
    "CacheEntry",
    "PreprocessedCache",
    "source_fingerprint",
    "preprocessed_cache_from_config",
]

logger = logging.getLogger(__name__)

_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
_LOCKS = ".locks"


class CacheEntry:
    """One preprocessed volume in the cache: its folder, its ``meta.json`` and lazily opened memory maps.

    The maps are opened on first access in the process that uses them (a DataLoader worker), never pickled:
    pickling an entry sends its folder and metadata only.

    Attributes:
        path: the entry folder.
        meta: the parsed ``meta.json``.
    """

    def __init__(self, path: str | os.PathLike, meta: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.meta = dict(meta)
        self._image: np.memmap | None = None
        self._label: np.memmap | None = None
        self._candidates: dict[tuple, torch.Tensor] = {}
        self._fixed: dict[str, Any] = {}

    def __getstate__(self) -> dict:
        return {"path": self.path, "meta": self.meta}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["meta"])

    def __repr__(self) -> str:
        return f"CacheEntry({str(self.path)!r}, shape={self.shape})"

    @property
    def image(self) -> np.memmap:
        """``(D, H, W)`` float16 memory map of the preprocessed image (slice-major)."""
        if self._image is None:
            self._image = np.load(self.path / "image.npy", mmap_mode="r")
        return self._image

    @property
    def label(self) -> np.memmap:
        """``(D, H, W)`` uint8 memory map of the label (global class ids)."""
        if self._label is None:
            self._label = np.load(self.path / "label.npy", mmap_mode="r")
        return self._label

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(D, H, W)``: slices, then the in-plane size after the resize."""
        return tuple(int(s) for s in self.meta["arrays"]["image"]["shape"])  # type: ignore[return-value]

    @property
    def filename(self) -> str:
        """The source image (as ``filename_or_obj`` in MONAI metadata)."""
        return str(self.meta["filename_or_obj"])

    @property
    def label_filename(self) -> str:
        """The source label file."""
        return str(self.meta.get("label_filename", self.filename))

    @property
    def affine(self) -> torch.Tensor:
        """4x4 float64 affine of the preprocessed ``(1, H, W, D)`` grid (as the old pipeline's ``image.affine``)."""
        if "affine" not in self._fixed:
            self._fixed["affine"] = torch.tensor(self.meta["affine"], dtype=torch.float64)
        return self._fixed["affine"]

    @property
    def original_affine(self) -> np.ndarray | None:
        """4x4 affine of the source file as loaded (MONAI's ``original_affine``), or None."""
        if "original_affine" not in self._fixed:
            oa = self.meta.get("original_affine")
            self._fixed["original_affine"] = None if oa is None else np.asarray(oa, dtype=np.float64)
        return self._fixed["original_affine"]

    @property
    def original_shape(self) -> np.ndarray:
        """Spatial shape of the source file as loaded (MONAI's ``spatial_shape``)."""
        if "original_shape" not in self._fixed:
            d, h, w = self.shape
            self._fixed["original_shape"] = np.asarray(self.meta.get("original_shape") or (h, w, d))
        return self._fixed["original_shape"]

    @property
    def labeled_mask(self) -> np.ndarray:
        """``(K,)`` float32 0/1 mask of the classes the source dataset annotates (background 1)."""
        return np.asarray(self.meta["labeled_mask"], dtype=np.float32)

    def organ_slices(self, organs: Sequence[int] | None = None) -> torch.Tensor:
        """Sorted slice indices (int64) whose slice contains at least one voxel of ``organs`` (None: any organ),
        read from ``meta.json``: the volume is never scanned. Computed once per organ set."""
        key = tuple(sorted(int(c) for c in organs)) if organs is not None else ()
        if key not in self._candidates:
            table = self.meta["organ_slices"]
            chosen = key or tuple(int(c) for c in table)
            s = set()
            for c in chosen:
                s.update(table.get(str(c), []))
            self._candidates[key] = torch.tensor(sorted(s), dtype=torch.long)
        return self._candidates[key]


class PreprocessedCache:
    """The cache folder: find, validate, build and fill entries for datalist items.

    Args:
        cache_dir: the cache folder (created when needed). Several settings can share one folder: an entry's
            name hashes its settings.
        settings: the deterministic preprocessing, a :class:`CacheSettings` or the plans' preprocessing dict
            (None: the defaults).
        overrides: :class:`CacheSettings` attributes on top of ``settings`` (``spatial_size=40``, ...).

    Attributes:
        config: the :class:`CacheSettings` in use.
        last_fill: what the last :meth:`fill` did: ``{"built": n, "by_others": m}`` (entries this process built,
            entries it found locked and then took from the process that built them).

    Example::

        cache = PreprocessedCache("runs/cache", spatial_size=256)
        entries = cache.fill(datalist["training"], num_workers=4)   # builds what is missing, with a progress bar
        entries[0].image[10:13, 16:240, 16:240]                      # three slices, read from the memory map
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        settings: CacheSettings | Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> None:
        if cache_dir in (None, ""):
            raise ValueError("cache_dir must be a folder path, got None.")
        self.cache_dir = Path(os.path.abspath(os.path.expanduser(os.fspath(cache_dir))))
        self.config = CacheSettings.from_preprocessing(settings, **overrides)
        self.image_key, self.label_key, self.dataset_key = (self.config.image_key, self.config.label_key,
                                                            self.config.dataset_key)
        self.last_fill = {"built": 0, "by_others": 0}

    # ----------------------------------------------------------------------------------------------- keys
    def settings(self, item: Mapping[str, Any]) -> dict:
        """The preprocessing settings that affect ``item``'s entry (JSON-able): the global ones plus the item's
        dataset label mapping and labeled classes."""
        return entry_settings(self.config, item.get(self.dataset_key))

    def _sources(self, item: Mapping[str, Any]) -> dict:
        for k in (self.image_key, self.label_key):
            if not isinstance(item.get(k), (str, os.PathLike)):
                raise ValueError(f"cache items need a file path under {k!r}, got {item.get(k)!r} in {dict(item)}.")
        return {"image": source_fingerprint(item[self.image_key]), "label": source_fingerprint(item[self.label_key])}

    def entry_path(self, item: Mapping[str, Any]) -> Path:
        """The entry folder of ``item``: ``<case>-<hash of the settings and the source paths>``."""
        paths = [os.path.abspath(os.path.expanduser(os.fspath(item[k]))) for k in (self.image_key, self.label_key)]
        return self.cache_dir / f"{case_stem(paths[0])}-{digest([self.settings(item), paths])[:16]}"

    def entry_key(self, item: Mapping[str, Any]) -> str:
        """Full key of ``item``'s entry: hash of its settings and its sources' path, size and ``mtime_ns``."""
        return digest([self.settings(item), self._sources(item)])

    # ----------------------------------------------------------------------------------------- validation
    @staticmethod
    def check_entry(path: str | os.PathLike, key: str | None = None) -> tuple[dict | None, str]:
        """``(meta, "")`` when the entry at ``path`` is complete and (if given) has ``key``, else
        ``(None, reason)``. Checks: ``meta.json`` parses, format and key, and for both arrays: readable header,
        recorded shape and dtype, exact file size (a truncated file fails)."""
        return check_entry_folder(path, key)

    def lookup(self, item: Mapping[str, Any]) -> tuple[CacheEntry | None, str]:
        """``(entry, "")`` if ``item`` has a valid, up-to-date entry, else ``(None, reason)``."""
        path = self.entry_path(item)
        meta, reason = self.check_entry(path, self.entry_key(item))
        return (CacheEntry(path, meta) if meta is not None else None), reason

    # ----------------------------------------------------------------------------------------------- build
    def _transforms(self) -> Any:
        from monai.transforms import Compose

        from pipofan_monai.preprocessing.pipelines import get_preprocessing_transforms

        c = self.config
        return Compose(get_preprocessing_transforms(
            "image", "label", c.spatial_size, hu_window=c.hu_window, intensity=c.intensity,
            dataset_key="dataset", image_mode=c.image_mode,
            **({"label_space": c.label_space} if c.label_space is not None else
               {"num_classes": c.num_classes, "datasets": c.datasets}),
            reader=c.reader, partial_labels=True, ct_check=c.ct_check))

    def preprocess(self, item: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, dict]:
        """Run the deterministic pipeline on one item: ``(image (D, S, S) float16, label (D, S, S) uint8, meta)``.

        The values are those of ``get_preprocessing_transforms`` (image rounded to float16); ``meta`` holds
        everything of ``meta.json`` except the key and the sources.

        Raises:
            ValueError: non-finite values after the float16 cast, or labels outside 0..255; naming the file.
        """
        d = self._transforms()({"image": item[self.image_key], "label": item[self.label_key],
                                "dataset": item.get(self.dataset_key)})
        img, lab = d["image"], d["label"]
        fname = str(img.meta.get("filename_or_obj", item[self.image_key]))
        t = img.as_tensor()[0]  # (H, W, D) float32
        h, w, depth = (int(s) for s in t.shape)
        image = np.empty((depth, h, w), dtype=np.float16)
        image[...] = t.permute(2, 0, 1).numpy()  # one pass: transpose to slice-major and round to float16
        if not np.isfinite(image).all():
            raise ValueError(f"image {fname}: values overflow float16 after preprocessing (intensity={self.config.intensity}).")
        lt = lab.as_tensor()[0]
        lmin, lmax = float(lt.min()), float(lt.max())
        if lmin < 0 or lmax > 255:
            raise ValueError(f"label {lab.meta.get('filename_or_obj')}: values {lmin}..{lmax} do not fit uint8.")
        label = np.empty((depth, h, w), dtype=np.uint8)
        label[...] = lt.permute(2, 0, 1).numpy()
        per_slice = {str(c): np.flatnonzero((label == c).any(axis=(1, 2))).tolist() for c in range(1, self.config.num_classes)}
        affine = np.asarray(img.affine, dtype=np.float64)
        orig = img.meta.get("original_affine")
        meta = {
            "format": CACHE_FORMAT, "settings": self.settings(item), "dataset": item.get(self.dataset_key),
            "filename_or_obj": fname, "label_filename": str(lab.meta.get("filename_or_obj", item[self.label_key])),
            "affine": affine.tolist(), "spacing": np.linalg.norm(affine[:3, :3], axis=0).tolist(),
            "original_affine": None if orig is None else np.asarray(orig, dtype=np.float64).tolist(),
            "original_shape": [int(s) for s in np.asarray(img.meta.get("spatial_shape", ())).reshape(-1)],
            "labeled_mask": np.asarray(lab.meta["labeled_mask"], dtype=np.float32).tolist(),
            "organ_slices": per_slice,
            "arrays": {"image": {"dtype": "float16", "shape": [depth, h, w]},
                       "label": {"dtype": "uint8", "shape": [depth, h, w]}},
        }
        return image, label, meta

    def _writable(self) -> None:
        """Raise ``PermissionError`` naming the cache folder if entries cannot be written there."""
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            probe = self.cache_dir / f"{_TMP_PREFIX}probe-{uuid.uuid4().hex[:8]}"
            probe.mkdir()
            probe.rmdir()
        except OSError as e:
            raise PermissionError(
                f"cache folder {str(self.cache_dir)!r} is not writable ({type(e).__name__}: {e.strerror or e}); "
                "pass a writable cache_dir, or fill this cache first where it is writable "
                "(python -m pipofan_monai preprocess ...)."
            ) from e

    def build(self, item: Mapping[str, Any]) -> CacheEntry:
        """Preprocess ``item`` and publish its entry atomically (temporary folder, fsync, rename).

        If another process published a valid entry with the same key meanwhile, ours is discarded and theirs
        returned; a stale or corrupt entry in the way is replaced.
        """
        self._writable()
        final = self.entry_path(item)
        key = self.entry_key(item)
        image, label, meta = self.preprocess(item)
        if self.entry_key(item) != key:  # a source changed while we read it: the entry would lie about its source
            raise RuntimeError(f"{item[self.image_key]} or its label changed during preprocessing; run again.")
        meta = {**meta, "key": key, "sources": self._sources(item)}
        tmp = self.cache_dir / f"{_TMP_PREFIX}{final.name}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir()
            for name, arr in (("image", image), ("label", label)):  # a full disk: ENOSPC naming the folder
                meta["arrays"][name]["checksum"] = write_array(tmp / f"{name}.npy", arr, name=final / f"{name}.npy")
            write_json(tmp / "meta.json", meta, name=final / "meta.json")
            fsync_dir(tmp)
            self._publish(tmp, final, key)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        got, reason = self.check_entry(final, key)
        if got is None:
            raise RuntimeError(f"cache entry {final} is not valid right after writing it: {reason}.")
        return CacheEntry(final, got)

    def _publish(self, tmp: Path, final: Path, key: str) -> None:
        for _ in range(3):
            try:
                os.rename(tmp, final)  # atomic; fails if ``final`` exists (a non-empty folder)
                fsync_dir(self.cache_dir)
                return
            except OSError:
                if not final.exists():
                    raise
            if self.check_entry(final, key)[0] is not None:
                return  # another process won the race with an identical entry: ours is discarded by the caller
            trash = self.cache_dir / f"{_TRASH_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(final, trash)  # move the stale / corrupt entry aside (open memory maps stay valid)
            except FileNotFoundError:
                pass  # someone else moved it
            shutil.rmtree(trash, ignore_errors=True)
        raise RuntimeError(f"could not publish cache entry {final} (other processes keep replacing it).")

    def clean_stale(self, max_age_s: float = 24 * 3600.0) -> int:
        """Remove temporary and trash folders left by interrupted fills: those of dead processes on this host,
        and any older than ``max_age_s``. Returns how many were removed."""
        host, removed = socket.gethostname(), 0
        if not self.cache_dir.is_dir():
            return 0
        for p in self.cache_dir.iterdir():
            if not p.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)):
                continue
            stale = p.name.startswith(_TRASH_PREFIX)
            m = re.match(rf"{re.escape(_TMP_PREFIX)}.*-(.+)-(\d+)-[0-9a-f]{{8}}$", p.name)
            if m and m.group(1) == host:
                stale = stale or not pid_alive(int(m.group(2)))
            try:
                stale = stale or time.time() - p.stat().st_mtime > max_age_s
            except FileNotFoundError:
                continue
            if stale:
                shutil.rmtree(p, ignore_errors=True)
                removed += 1
        return removed

    # ------------------------------------------------------------------------------------------------ fill
    def entry_lock(self, item: Mapping[str, Any]) -> FileLock:
        """The lock a process holds while it builds ``item``'s entry (``cache_dir/.locks/<entry>.lock``)."""
        # A kernel file lock (filelock, which torch itself depends on) rather than a marker file of our own: the
        # kernel releases it when its holder dies, also by SIGKILL, so no stale claim can block a later fill; on a
        # file system without locks filelock falls back to a marker file with its own stale-owner check.
        folder = self.cache_dir / _LOCKS
        folder.mkdir(parents=True, exist_ok=True)
        return FileLock(str(folder / f"{self.entry_path(item).name}.lock"))

    def build_unless_locked(self, item: Mapping[str, Any], wait: bool = False) -> tuple[CacheEntry | None, bool]:
        """Build ``item``'s entry while holding its lock, so that concurrent fills build it once.

        Args:
            item: a datalist item.
            wait: when another process holds the lock: False: return at once; True: wait until it is free.

        Returns:
            ``(entry, built_here)``; ``(None, False)`` when the entry is locked and ``wait`` is False;
            ``(entry, False)`` when the process that held the lock had built it.
        """
        lock = self.entry_lock(item)
        try:
            lock.acquire(timeout=-1 if wait else 0)
        except Timeout:
            return None, False
        except (NotImplementedError, OSError) as e:  # no file locks here (older filelock on e.g. Lustre)
            logger.warning(f"cache: no file lock in {self.cache_dir} ({type(e).__name__}: {e}); building "
                           f"{self.entry_path(item).name} without one (safe: entries are published atomically, "
                           "but concurrent fills may preprocess a volume twice)")
            return self._lookup_or_build(item)
        try:
            return self._lookup_or_build(item)
        finally:
            lock.release()

    def _lookup_or_build(self, item: Mapping[str, Any]) -> tuple[CacheEntry, bool]:
        """``(entry, False)`` if another process built ``item``'s entry meanwhile, else ``(built entry, True)``."""
        entry, _ = self.lookup(item)
        return (entry, False) if entry is not None else (self.build(item), True)

    def fill(self, items: Sequence[Mapping[str, Any]], num_workers: int = 0, progress: bool = True) -> list[CacheEntry]:
        """The entries of ``items``, building the missing, stale and corrupt ones first.

        Processes that fill one cache at the same time (DDP ranks, ``pipofan preprocess`` beside a training run)
        share the work: each builds the entries nobody else is building, then waits for the others' entries (and
        builds any whose builder failed or died).

        Args:
            items: datalist items with image and label file paths (and the dataset name).
            num_workers: processes building entries in parallel (0 or 1: in this process).
            progress: show a tqdm bar with ETA while building.

        Returns:
            one :class:`CacheEntry` per item, in order.

        Raises:
            PermissionError: entries must be built and the cache folder is not writable (named).
            RuntimeError: some items could not be preprocessed (all others are built and kept first); the message
                names each file and its error.
        """
        entries: list[CacheEntry | None] = []
        todo: list[int] = []
        self.last_fill = {"built": 0, "by_others": 0}
        for i, item in enumerate(items):
            entry, reason = self.lookup(item)
            entries.append(entry)
            if entry is None:
                todo.append(i)
                if reason != "missing":
                    log = logger.info if reason in ROUTINE_REBUILDS else logger.warning  # corrupt: a warning
                    log(f"cache: rebuilding {self.entry_path(item)} (source {item.get(self.image_key)}): {reason}")
        if not todo:
            return entries  # type: ignore[return-value]
        self._writable()
        self.clean_stale()
        failures = build_missing(self, items, todo, entries, num_workers, progress)
        if failures:
            raise RuntimeError(f"could not preprocess {len(failures)} of {len(todo)} volumes into {self.cache_dir} "
                               "(the others are cached):\n" + "\n".join(failures))
        if self.last_fill["by_others"]:
            logger.info(f"cache: built {self.last_fill['built']} volumes here, {self.last_fill['by_others']} were "
                        "built by other processes")
        return entries  # type: ignore[return-value]

    def __getstate__(self) -> dict:
        return dict(self.__dict__)


def preprocessed_cache_from_config(
    config_file: str | os.PathLike | Sequence[str | os.PathLike] = "bundle/configs/train.json",
    datalist: Any = None,
    dataset_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    **override: Any,
) -> tuple[PreprocessedCache, list[dict]]:
    """The cache a bundle training run would use, and the labeled items of its datalist (all folds).

    Args:
        config_file: training config(s), merged in order.
        datalist: datalist JSON (None: the config's, else the demo dataset).
        dataset_dir: folder the datalist's relative paths are resolved against.
        cache_dir: the cache folder (None: the config's ``cache_dir``).
        override: other top-level config keys (``spatial_size``, ``hu_window``, ``output_dir``, ...).
    """
    from monai.bundle import ConfigParser

    files = [config_file] if isinstance(config_file, (str, os.PathLike)) else list(config_file)
    parser = ConfigParser()
    parser.read_config([os.fspath(f) for f in files])
    parser.update(override)
    if datalist is not None:
        parser["datalist"] = datalist
    if dataset_dir is not None:
        parser["dataset_dir"] = dataset_dir
    # what training builds its cache with: the plans' preprocessing dict (as train#dataset / validate#dataset)
    if "preprocessing_settings" in parser:
        settings = parser.get_parsed_content("preprocessing_settings")
    else:
        settings = {k: parser.get_parsed_content(k) for k in PREPROCESSING_KEYS if k in parser}
    vocabulary = {arg: parser.get_parsed_content(key) for key, arg in (("label_space", "label_space"),
                                                                       ("ct_check", "ct_check")) if key in parser}
    if cache_dir is None:
        if "cache_dir" not in parser:
            raise ValueError(f"no --cache_dir given and {files} define no cache_dir.")
        cache_dir = parser.get_parsed_content("cache_dir")
    data = parser.get_parsed_content("data")  # the config's own datalist loading (the demo without a datalist)
    items = [dict(d) for d in data.get("training", []) if d.get("label")]
    if not items:
        raise ValueError("the datalist has no labeled training items to preprocess.")
    return PreprocessedCache(cache_dir, settings, **vocabulary), items
