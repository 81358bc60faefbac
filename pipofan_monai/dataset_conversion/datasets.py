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

"""Declarative table of the source datasets: how each one's own label values map to the global classes,
and which global classes it annotates (its partial label set, PIPOFAN.md §4).

Global class order (multi-organ PIPO-FAN): 0 background, 1 liver, 2 kidney (left and right), 3 spleen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from pipofan_monai.partial_labels import labeled_mask

__all__ = [
    "CLASS_NAMES",
    "DatasetSpec",
    "BUILTIN_DATASETS",
    "DATASET_ALIASES",
    "get_dataset_spec",
    "register_dataset",
    "labeled_mask",
]

CLASS_NAMES: tuple[str, ...] = ("background", "liver", "kidney", "spleen")


@dataclass(frozen=True)
class DatasetSpec:
    """One source dataset.

    Args:
        name: identifier used in datalists (the item key ``dataset``).
        label_map: the dataset's own label value -> global class id. Every value that may occur in the
            dataset's label files must be a key (values mapped to 0 are background); any other value is an error.
        labeled_classes: the global organ ids (1..K-1) this dataset annotates (its partial label set C).
        description: free text.
    """

    name: str
    label_map: Mapping[int, int]
    labeled_classes: tuple[int, ...]
    description: str = ""
    extra: Mapping = field(default_factory=dict)

    def labeled_mask(self, num_classes: int = len(CLASS_NAMES)) -> np.ndarray:
        """(num_classes,) float32 0/1 vector; column 0 (background) is always 1."""
        return labeled_mask(self.labeled_classes, num_classes)


BUILTIN_DATASETS: dict[str, DatasetSpec] = {
    "lits": DatasetSpec(
        "lits", {0: 0, 1: 1, 2: 1}, (1,), "LiTS 2017: 0 background, 1 liver, 2 tumour (tumour counted as liver)"
    ),
    "kits19": DatasetSpec(
        "kits19", {0: 0, 1: 2, 2: 2}, (2,), "KiTS19: 0 background, 1 kidney, 2 tumour (tumour counted as kidney)"
    ),
    "msd_spleen": DatasetSpec("msd_spleen", {0: 0, 1: 3}, (3,), "MSD Task09 Spleen: 0 background, 1 spleen"),
    "btcv": DatasetSpec(
        "btcv",
        {0: 0, 1: 3, 2: 2, 3: 2, 4: 0, 5: 0, 6: 1, 7: 0, 8: 0, 9: 0, 10: 0, 11: 0, 12: 0, 13: 0},
        (1, 2, 3),
        "BTCV abdomen (13 organs): 6 liver, 2/3 right/left kidney, 1 spleen; the other organs are background",
    ),
}

DATASET_ALIASES: dict[str, str] = {"kits": "kits19", "spleen": "msd_spleen", "msd09": "msd_spleen", "task09": "msd_spleen"}

_USER_DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(
    name: str, label_map: Mapping[int | str, int], labeled_classes: Sequence[int], description: str = ""
) -> DatasetSpec:
    """Add (or replace) a user-defined dataset in the table and return its spec.

    Example::

        register_dataset("my_liver", {0: 0, 1: 1}, [1])
    """
    spec = DatasetSpec(
        str(name), {int(k): int(v) for k, v in dict(label_map).items()}, tuple(int(c) for c in labeled_classes), description
    )
    _USER_DATASETS[spec.name] = spec
    return spec


def get_dataset_spec(name: str | None, extra: Mapping[str, Mapping] | None = None) -> DatasetSpec | None:
    """Look a dataset up by name: ``extra`` (a config-level table ``{name: {"label_map": {...},
    "labeled_classes": [...]}}``) first, then registered user datasets, then the built-ins and their aliases.

    Returns None for ``name=None`` (fully labeled data in the global convention).

    Raises:
        KeyError: unknown name, listing the known ones.
    """
    if name is None:
        return None
    key = str(name)
    if extra and key in extra:
        entry = extra[key]
        if isinstance(entry, DatasetSpec):
            return entry
        return DatasetSpec(
            key,
            {int(k): int(v) for k, v in dict(entry["label_map"]).items()},
            tuple(int(c) for c in entry["labeled_classes"]),
            str(entry.get("description", "")),
        )
    if key in _USER_DATASETS:
        return _USER_DATASETS[key]
    key = DATASET_ALIASES.get(key.lower(), key.lower())
    if key in BUILTIN_DATASETS:
        return BUILTIN_DATASETS[key]
    known = sorted(set(BUILTIN_DATASETS) | set(DATASET_ALIASES) | set(_USER_DATASETS) | set(extra or {}))
    raise KeyError(f"unknown dataset {name!r}; known datasets: {known}.")
