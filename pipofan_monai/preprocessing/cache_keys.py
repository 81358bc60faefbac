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

"""What identifies a preprocessed cache entry, and whether a folder on disk still is that entry.

An entry is reused only if its settings and its source files are those of the item (the key) and its files are
complete; everything that decides this lives here: the deterministic settings (:class:`CacheSettings`), the
fingerprint of a source file or DICOM folder, the key and folder-name hashes and the check of an entry folder
(``meta.json``, array headers, sizes and checksums). It is apart from ``cache.py``, which builds, publishes and
fills entries, so that the rules for reusing an entry can be read (and changed, with :data:`CACHE_FORMAT`) in one
place without the file writing and process handling around them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from pipofan_monai.plans import DEFAULT_PREPROCESSING
from pipofan_monai.preprocessing.cache_files import NO_CHECKSUM, content_problem
from pipofan_monai.vocabulary.datasets import CLASS_NAMES, get_dataset_spec

__all__ = [
    "ARRAYS",
    "CACHE_FORMAT",
    "ROUTINE_REBUILDS",
    "CacheSettings",
    "case_stem",
    "check_entry_folder",
    "digest",
    "entry_settings",
    "source_fingerprint",
]

#: version of the on-disk layout; part of every key (bump it when the layout or the preprocessing code changes)
CACHE_FORMAT = 1
#: the arrays of an entry and their dtypes
ARRAYS = {"image": np.float16, "label": np.uint8}
#: rebuild reasons that are no fault (logged as info; any other reason is a corrupt entry, logged as a warning)
ROUTINE_REBUILDS = ("source file or settings changed", NO_CHECKSUM)

def source_fingerprint(path: str | os.PathLike) -> dict:
    """``{"path", "size", "mtime_ns"}`` of a source file (absolute path); for a folder (a DICOM series) the size
    and latest ``mtime_ns`` over its files, their count and a digest of every file's relative path, size and
    ``mtime_ns`` (so a file replaced by one of the same name and size but an older mtime changes the key too).

    Raises:
        FileNotFoundError: naming the path.
    """
    p = os.path.abspath(os.path.expanduser(os.fspath(path)))
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise FileNotFoundError(f"source file not found: {p!r}.") from None
    if not os.path.isdir(p):
        return {"path": p, "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}
    size, mtime, listing = 0, int(st.st_mtime_ns), []
    for root, _, files in os.walk(p):
        for name in files:
            f = os.path.join(root, name)
            s = os.stat(f)
            size, mtime = size + int(s.st_size), max(mtime, int(s.st_mtime_ns))
            listing.append([os.path.relpath(f, p), int(s.st_size), int(s.st_mtime_ns)])
    return {"path": p, "size": size, "mtime_ns": mtime, "files": len(listing), "listing": digest(sorted(listing))}


def digest(obj: Any) -> str:
    """SHA-256 (hex) of ``obj`` as canonical JSON (sorted keys): the same settings give the same hash in every run."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def case_stem(path: str) -> str:
    """A readable prefix for an entry folder: the file name without its imaging extension, in safe characters."""
    name = os.path.basename(os.path.normpath(path))
    for ext in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".npy"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60] or "case"


@dataclass(frozen=True)
class CacheSettings:
    """The deterministic preprocessing a cache entry is built with: the plans' preprocessing (minus ``context``:
    the cache holds single slices) plus the label vocabulary, the reader and the item keys. The one object the
    cache, the cached Datasets and the bundle's ``train#dataset`` / ``validate#dataset`` pass around.

    Build it from the plans' preprocessing dict with :meth:`from_preprocessing` (what the bundle does with
    ``@preprocessing_settings``); defaults are :data:`pipofan_monai.plans.DEFAULT_PREPROCESSING`.

    Attributes:
        spatial_size: in-plane size after resizing (None: keep the original size). Default 256.
        hu_window: HU clip range ``(low, high)``. Default (-200, 200).
        intensity: ``"scale"`` or ``"zscore"`` (see ``HUWindowd``). Default "scale".
        image_mode: interpolation of the image resize. Default "trilinear".
        num_classes: K global classes (<= 256, labels are stored as uint8). Default 4.
        datasets: extra dataset table for ``MapDatasetLabelsd``.
        label_space: the model's :class:`~pipofan_monai.vocabulary.LabelSpace`; when given it defines
            ``num_classes`` and ``datasets``, and each dataset's labels are mapped into ITS classes (a vocabulary
            other than the paper's four classes, e.g. with the stomach, maps BTCV's stomach to its own class; without
            it the cache would map the labels of the default vocabulary). The mapping it resolves is part of the key.
        reader: ``LoadImaged`` reader (None: automatic); its class name is part of the key.
        image_key, label_key, dataset_key: item keys. Defaults "image", "label", "dataset".
        ct_check: the CT plausibility check when a volume is preprocessed
            (:class:`~pipofan_monai.preprocessing.CheckCTIntensityd`): ``"error"`` (default), ``"warn"`` or
            ``"off"``. Not part of the key, as it does not change the values: an entry is checked when it is built
            and not again (its source files are part of the key, so a different file is checked).

    Raises:
        ValueError: a value out of range, naming it.
    """

    spatial_size: int | None = DEFAULT_PREPROCESSING["spatial_size"]
    hu_window: tuple[float, float] = tuple(DEFAULT_PREPROCESSING["hu_window"])  # type: ignore[assignment]
    intensity: str = DEFAULT_PREPROCESSING["intensity"]
    image_mode: str = DEFAULT_PREPROCESSING["image_mode"]
    num_classes: int = len(CLASS_NAMES)
    datasets: Mapping[str, Any] | None = None
    label_space: Any = None
    reader: Any = None
    image_key: str = "image"
    label_key: str = "label"
    dataset_key: str = "dataset"
    ct_check: str = "error"

    def __post_init__(self) -> None:
        if not 2 <= int(self.num_classes) <= 256:
            raise ValueError(f"num_classes must be in 2..256 (labels are cached as uint8), got {self.num_classes}.")
        if len(self.hu_window) != 2 or not float(self.hu_window[0]) < float(self.hu_window[1]):
            raise ValueError(f"hu_window must be (low, high) with low < high, got {self.hu_window}.")
        if self.intensity not in ("scale", "zscore"):
            raise ValueError(f"intensity must be 'scale' or 'zscore', got {self.intensity!r}.")
        if self.ct_check not in ("error", "warn", "off"):
            raise ValueError(f"ct_check must be 'error', 'warn' or 'off', got {self.ct_check!r}.")
        set_ = object.__setattr__  # frozen: normalise once here
        if self.label_space is not None:
            set_(self, "num_classes", self.label_space.num_classes)
            set_(self, "datasets", dict(self.label_space.dataset_config) or None)
        set_(self, "spatial_size", None if self.spatial_size in (None, 0) else int(self.spatial_size))
        set_(self, "hu_window", (float(self.hu_window[0]), float(self.hu_window[1])))
        set_(self, "num_classes", int(self.num_classes))
        set_(self, "datasets", dict(self.datasets) if self.datasets else None)

    @classmethod
    def from_preprocessing(
        cls, preprocessing: CacheSettings | Mapping[str, Any] | None = None, **overrides: Any
    ) -> CacheSettings:
        """Settings from the plans' ``preprocessing`` dict (``spatial_size``, ``hu_window``, ``intensity``,
        ``image_mode``; ``context`` is ignored) or other settings, with ``overrides`` (any attribute) on top.

        Raises:
            TypeError: an unknown key, naming it.
        """
        if isinstance(preprocessing, CacheSettings):
            base = {f.name: getattr(preprocessing, f.name) for f in fields(cls)}  # no deep copy of the reader
        elif preprocessing is None:
            base = {}
        elif isinstance(preprocessing, Mapping):
            base = {k: v for k, v in preprocessing.items() if k != "context"}
        else:
            raise TypeError(f"preprocessing must be CacheSettings or the plans' preprocessing dict, got "
                            f"{type(preprocessing).__name__} {preprocessing!r}.")
        merged = {**base, **overrides}
        unknown = sorted(set(merged) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(f"unknown cache settings {unknown}; known: {[f.name for f in fields(cls)]}.")
        return cls(**merged)



def entry_settings(config: CacheSettings, dataset: Any) -> dict:
    """The preprocessing settings that affect the entry of an item of ``dataset`` (JSON-able): the global ones of
    ``config`` plus the dataset's label mapping and labeled classes (``dataset`` None or "": no dataset)."""
    c = config
    spec = get_dataset_spec(dataset, c.datasets) if dataset not in (None, "") else None
    reader = c.reader if isinstance(c.reader, (str, type(None))) else type(c.reader).__name__
    if spec is None:
        label_map, labeled = None, None
    elif c.label_space is not None:  # the mapping into this vocabulary's classes
        label_map, labeled = c.label_space.resolve(spec.name)
    else:
        label_map, labeled = spec.label_map, spec.labeled_classes
    return {
        "format": CACHE_FORMAT, "spatial_size": c.spatial_size, "hu_window": list(c.hu_window),
        "intensity": c.intensity, "num_classes": c.num_classes, "image_mode": c.image_mode,
        "reader": reader, "dataset": None if spec is None else spec.name,
        "label_map": None if spec is None else sorted([int(k), int(v)] for k, v in label_map.items()),
        "labeled_classes": None if spec is None else sorted(int(c) for c in labeled),
    }


def check_entry_folder(path: str | os.PathLike, key: str | None = None) -> tuple[dict | None, str]:
    """``(meta, "")`` when the entry at ``path`` is complete and (if given) has ``key``, else
    ``(None, reason)``. Checks: ``meta.json`` parses, format and key, and for both arrays: readable header,
    recorded shape and dtype, exact file size (a truncated file fails)."""
    path = Path(path)
    try:
        meta = json.loads((path / "meta.json").read_text())
    except FileNotFoundError:
        return None, "missing"
    except (OSError, ValueError) as e:
        return None, f"meta.json unreadable ({type(e).__name__}: {e})"
    if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
        return None, f"format {meta.get('format') if isinstance(meta, dict) else None!r} != {CACHE_FORMAT}"
    if key is not None and meta.get("key") != key:
        return None, "source file or settings changed"
    try:
        for name in ARRAYS:
            spec = meta["arrays"][name]
            f = path / f"{name}.npy"
            arr = np.load(f, mmap_mode="r")
            if list(arr.shape) != list(spec["shape"]) or str(arr.dtype) != spec["dtype"]:
                return None, f"{name}.npy is {arr.dtype}{list(arr.shape)}, expected {spec['dtype']}{spec['shape']}"
            size = os.path.getsize(f)
            if size != int(arr.offset) + int(arr.nbytes):
                return None, f"{name}.npy has {size} bytes, expected {int(arr.offset) + int(arr.nbytes)}"
            del arr
        problem = content_problem(path, meta, ARRAYS)
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"array unreadable ({type(e).__name__}: {e})"
    return (None, problem) if problem else (meta, "")

