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

"""Declarative table of the source datasets: each one's own label values mapped to organ NAMES, and the organs
it annotates (its partial label set). The global classes are configuration (the bundle's
``class_names``, background first, any K >= 2); :py:meth:`DatasetSpec.resolve` turns an entry into label ids
and a labeled-class set of one vocabulary.

Default vocabulary (the paper's multi-organ PIPO-FAN): 0 background, 1 liver, 2 kidney (left and right), 3 spleen.

Resolution rules (organ relations from :py:data:`pipofan_monai.vocabulary.organs.ORGANS`):

* a label value named ``n`` becomes the class of ``n``, else of its nearest ``parent`` listed in the
  vocabulary (BTCV's right kidney -> "kidney", LiTS's liver tumour -> "liver"), else background;
* the dataset annotates a class when it lists the class's organ in ``annotates``, or all of that organ's
  ``parts`` (BTCV annotates the right and the left kidney, so it annotates "kidney");
* a value whose class the dataset does not annotate becomes background: the target adaptive loss merges
  unannotated classes into background, so this is what the partial-label loss expects;
* a value not declared in ``labels`` is an error naming the file and the values (at mapping time).

Entries may also be written in the older form with global class ids (``label_map={0: 0, 1: 1, 4: 3}``,
``labeled_classes=[1, 3]``): ids of whatever vocabulary is used, checked against its K.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from pipofan_monai.vocabulary.organs import (
    BACKGROUND,
    DEFAULT_CLASS_NAMES,
    canonical_organ_name,
    organ_table,
    validate_class_names,
)
from pipofan_monai.vocabulary.masks import labeled_mask

__all__ = [
    "CLASS_NAMES",
    "DatasetSpec",
    "BUILTIN_DATASETS",
    "DATASET_ALIASES",
    "get_dataset_spec",
    "register_dataset",
    "labeled_mask",
    "datasets_annotating",
]

#: the default (paper's) vocabulary; the bundle's ``class_names`` replaces it.
CLASS_NAMES: tuple[str, ...] = DEFAULT_CLASS_NAMES


@dataclass(frozen=True)
class DatasetSpec:
    """One source dataset.

    Args:
        name: identifier used in datalists (the item key ``dataset``).
        labels: the dataset's own label value -> organ name (``"background"`` for background). Every value that
            may occur in the dataset's label files must be a key; value 0 is background unless given. (Older
            form: value -> global class id, ints, for a fixed vocabulary.)
        annotates: the organs this dataset annotates completely (its partial label set); default: every organ
            named in ``labels``. (Older form: global class ids 1..K-1.)
        description: free text.
    """

    name: str
    labels: Mapping[int, Any]
    annotates: tuple = ()
    description: str = ""
    extra: Mapping = field(default_factory=dict)

    def __post_init__(self) -> None:
        labels = {int(k): v for k, v in dict(self.labels).items()}
        kinds = {isinstance(v, str) for v in labels.values()}
        if len(kinds) > 1:
            raise ValueError(f"dataset {self.name!r}: labels must map to organ names or to class ids, not both.")
        by_name = kinds != {False}
        if by_name:
            labels = {k: canonical_organ_name(v) for k, v in labels.items()}
            labels.setdefault(0, BACKGROUND)
            ann = tuple(canonical_organ_name(str(a)) for a in self.annotates) or tuple(
                dict.fromkeys(v for v in labels.values() if v != BACKGROUND))
            bad = [a for a in ann if not isinstance(a, str) or a == BACKGROUND]
            if bad:
                raise ValueError(f"dataset {self.name!r}: annotates must name organs, got {list(self.annotates)}.")
        else:
            labels = {k: int(v) for k, v in labels.items()}
            ann = tuple(int(c) for c in self.annotates)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "annotates", ann)

    @property
    def by_name(self) -> bool:
        """True for entries mapping label values to organ names (False: older class-id form)."""
        return any(isinstance(v, str) for v in self.labels.values())

    def resolve(
        self, class_names: Sequence[str] | None = None, organs: Mapping[str, Any] | None = None,
        num_classes: int | None = None,
    ) -> tuple[dict[int, int], tuple[int, ...]]:
        """This dataset in one vocabulary.

        Args:
            class_names: the vocabulary (background first); default :data:`CLASS_NAMES`.
            organs: optional config-level ``organ_table`` (new organs, other relations).
            num_classes: K, for entries in the older class-id form when no ``class_names`` is given
                (default ``len(class_names)``).

        Returns:
            ``(label_map, labeled_classes)``: own label value -> class id, and the sorted class ids (1..K-1)
            the dataset annotates.

        Raises:
            ValueError: class ids outside ``0..K-1`` (older form), or an unknown organ in ``labels``.
        """
        names = validate_class_names(class_names if class_names is not None else CLASS_NAMES, organs)
        k = len(names) if num_classes is None or class_names is not None else int(num_classes)
        if not self.by_name:
            bad = sorted({v for v in self.labels.values() if not 0 <= v < k})
            if bad:
                raise ValueError(f"dataset {self.name!r} maps to classes {bad} outside 0..{k - 1} (num_classes={k}).")
            bad = sorted({c for c in self.annotates if not 0 < c < k})
            if bad:
                raise ValueError(f"dataset {self.name!r}: labeled classes {bad} are outside 1..{k - 1}.")
            return dict(self.labels), tuple(sorted(set(self.annotates)))
        table = organ_table(organs)
        unknown = sorted({n for n in list(self.labels.values()) + list(self.annotates)
                          if n != BACKGROUND and n not in table})
        if unknown:
            raise ValueError(f"dataset {self.name!r} names unknown organs {unknown}; known organs: {sorted(table)}.")
        # organs annotated: the declared ones, closed over groups whose parts are all annotated
        done = set(self.annotates)
        changed = True
        while changed:
            changed = False
            for o in table.values():
                if o.name not in done and o.parts and all(p in done for p in o.parts):
                    done.add(o.name)
                    changed = True
        index = {n: i for i, n in enumerate(names)}
        labeled = tuple(sorted(i for n, i in index.items() if i and n in done))

        def class_of(organ: str) -> int:
            seen = set()
            while organ is not None and organ not in seen:
                if organ in index:
                    return index[organ]
                seen.add(organ)
                organ = table[organ].parent if organ in table else None
            return 0

        label_map = {}
        for value, organ in self.labels.items():
            c = 0 if organ == BACKGROUND else class_of(organ)
            label_map[value] = c if c in labeled else 0
        return label_map, labeled

    @property
    def label_map(self) -> dict[int, int]:
        """Own label value -> class id in the default vocabulary :data:`CLASS_NAMES`."""
        return self.resolve()[0]

    @property
    def labeled_classes(self) -> tuple[int, ...]:
        """Class ids the dataset annotates in the default vocabulary :data:`CLASS_NAMES`."""
        return self.resolve()[1]

    def labeled_mask(self, num_classes: int | None = None, class_names: Sequence[str] | None = None,
                     organs: Mapping[str, Any] | None = None) -> np.ndarray:
        """(K,) float32 0/1 vector in ``class_names`` (default vocabulary); column 0 (background) is always 1."""
        names = class_names if class_names is not None else CLASS_NAMES
        k = len(names) if num_classes is None else int(num_classes)
        return labeled_mask(self.resolve(class_names, organs, num_classes=k)[1], k)


_BTCV_ORGANS = ("spleen", "right_kidney", "left_kidney", "gallbladder", "esophagus", "liver", "stomach", "aorta",
                "inferior_vena_cava", "portal_splenic_vein", "pancreas", "right_adrenal_gland", "left_adrenal_gland")

BUILTIN_DATASETS: dict[str, DatasetSpec] = {
    "lits": DatasetSpec(
        "lits", {0: "background", 1: "liver", 2: "liver_tumour"}, ("liver", "liver_tumour"),
        "LiTS 2017: 0 background, 1 liver, 2 liver tumour (counted as liver unless the vocabulary lists it)",
    ),
    "kits19": DatasetSpec(
        "kits19", {0: "background", 1: "kidney", 2: "kidney_tumour"}, ("kidney", "kidney_tumour"),
        "KiTS19: 0 background, 1 kidney, 2 kidney tumour (counted as kidney unless the vocabulary lists it)",
    ),
    "msd_spleen": DatasetSpec("msd_spleen", {0: "background", 1: "spleen"}, ("spleen",),
                              "MSD Task09 Spleen: 0 background, 1 spleen"),
    "msd_pancreas": DatasetSpec(
        "msd_pancreas", {0: "background", 1: "pancreas", 2: "pancreas_tumour"}, ("pancreas", "pancreas_tumour"),
        "MSD Task07 Pancreas: 0 background, 1 pancreas, 2 tumour (counted as pancreas unless the vocabulary "
        "lists pancreas_tumour)",
    ),
    "msd_liver": DatasetSpec(
        "msd_liver", {0: "background", 1: "liver", 2: "liver_tumour"}, ("liver", "liver_tumour"),
        "MSD Task03 Liver: 0 background, 1 liver, 2 tumour (counted as liver unless the vocabulary lists "
        "liver_tumour)",
    ),
    "btcv": DatasetSpec(
        "btcv", {0: "background", **{i + 1: n for i, n in enumerate(_BTCV_ORGANS)}}, _BTCV_ORGANS,
        "BTCV abdomen, all 13 organs: 1 spleen, 2 right kidney, 3 left kidney, 4 gallbladder, 5 esophagus, "
        "6 liver, 7 stomach, 8 aorta, 9 inferior vena cava, 10 portal and splenic vein, 11 pancreas, "
        "12 right adrenal gland, 13 left adrenal gland",
    ),
}

DATASET_ALIASES: dict[str, str] = {
    "kits": "kits19", "spleen": "msd_spleen", "msd09": "msd_spleen", "task09": "msd_spleen",
    "pancreas": "msd_pancreas", "msd07": "msd_pancreas", "task07": "msd_pancreas",
    "msd03": "msd_liver", "task03": "msd_liver",
}

_USER_DATASETS: dict[str, DatasetSpec] = {}


def _spec_from_entry(name: str, entry: Any) -> DatasetSpec:
    if isinstance(entry, DatasetSpec):
        return entry
    if not isinstance(entry, Mapping):
        raise ValueError(f"dataset_table entry {name!r} must be a mapping, got {type(entry).__name__}.")
    if "labels" in entry:
        return DatasetSpec(name, dict(entry["labels"]), tuple(entry.get("annotates", ())),
                           str(entry.get("description", "")))
    if "label_map" in entry:
        return DatasetSpec(name, dict(entry["label_map"]), tuple(entry.get("labeled_classes", ())),
                           str(entry.get("description", "")))
    raise ValueError(
        f"dataset_table entry {name!r} needs 'labels' ({{value: organ name}}, optional 'annotates': [organs]) "
        f"or the older 'label_map' ({{value: class id}}) with 'labeled_classes'; got keys {sorted(entry)}."
    )


def register_dataset(
    name: str, label_map: Mapping[int | str, Any], labeled_classes: Sequence[Any] = (), description: str = ""
) -> DatasetSpec:
    """Add (or replace) a user-defined dataset in the table and return its spec.

    Example::

        register_dataset("my_ct", {1: "liver", 2: "pancreas"}, ["liver", "pancreas"])
        register_dataset("my_liver", {0: 0, 1: 1}, [1])  # older form: class ids of a fixed vocabulary
    """
    spec = DatasetSpec(str(name), {int(k): v for k, v in dict(label_map).items()}, tuple(labeled_classes),
                       description)
    _USER_DATASETS[spec.name] = spec
    return spec


def get_dataset_spec(name: str | None, extra: Mapping[str, Any] | None = None) -> DatasetSpec | None:
    """Look a dataset up by name: ``extra`` (a config-level ``dataset_table``: ``{name: {"labels": {value: organ},
    "annotates": [organ, ...]}}``, or the older ``{"label_map": {...}, "labeled_classes": [...]}``) first, then
    registered user datasets, then the built-ins and their aliases.

    Returns None for ``name=None`` (fully labeled data in the global convention).

    Raises:
        KeyError: unknown name, listing the known ones.
        ValueError: a malformed ``extra`` entry.
    """
    if name is None:
        return None
    key = str(name)
    if extra and key in extra:
        return _spec_from_entry(key, extra[key])
    if key in _USER_DATASETS:
        return _USER_DATASETS[key]
    key = DATASET_ALIASES.get(key.lower(), key.lower())
    if key in BUILTIN_DATASETS:
        return BUILTIN_DATASETS[key]
    known = sorted(set(BUILTIN_DATASETS) | set(DATASET_ALIASES) | set(_USER_DATASETS) | set(extra or {}))
    raise KeyError(f"unknown dataset {name!r}; known datasets: {known}.")


def datasets_annotating(
    dataset_names: Sequence[str | None], class_names: Sequence[str], extra: Mapping[str, Any] | None = None,
    organs: Mapping[str, Any] | None = None,
) -> dict[str, list[str]]:
    """``{organ: [datasets annotating it]}`` for the classes of a vocabulary over the given datasets (None: a
    fully labeled item). Used to refuse a vocabulary listing an organ that no training dataset annotates."""
    names = validate_class_names(class_names, organs)
    out: dict[str, list[str]] = {n: [] for n in names[1:]}
    for ds in dict.fromkeys(dataset_names):
        if ds in (None, ""):
            for n in names[1:]:
                out[n].append("<fully labeled>")
            continue
        spec = get_dataset_spec(ds, extra)
        for c in spec.resolve(names, organs)[1]:  # type: ignore[union-attr]
            out[names[c]].append(str(ds))
    return out
