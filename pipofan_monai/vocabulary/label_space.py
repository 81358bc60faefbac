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

"""One immutable object for the label space of a model: class names, organ table, dataset table and the
partial-label rule.

Before this object existed, a component received a class list and, separately, an organ table and a dataset table,
and nothing stopped the three from disagreeing (a colour table of another vocabulary, a dataset resolved against
other class names). A :class:`LabelSpace` is validated once, when it is created from the config
(:meth:`LabelSpace.create`) or from a checkpoint's plans (:meth:`LabelSpace.from_plans`), and every consumer (the
loss's labeled masks, the metrics' names, the sampler, post-processing, the writers, MONAI Label) reads the same
instance.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import numpy as np

from pipofan_monai.vocabulary.datasets import DatasetSpec, get_dataset_spec
from pipofan_monai.vocabulary.masks import labeled_mask
from pipofan_monai.vocabulary.organs import (
    DEFAULT_CLASS_NAMES,
    OrganSpec,
    canonical_organ_name,
    metric_name,
    organ_table,
    validate_class_names,
)

_build_organ_table = organ_table  # the parameter of LabelSpace.create shadows the function's name

__all__ = ["LabelSpace"]


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True, eq=False)
class LabelSpace:
    """The classes a model predicts and how every source dataset's labels map onto them.

    Create it with :meth:`create` (from config values) or :meth:`from_plans` (from a checkpoint); the constructor
    arguments are already-validated values.

    Attributes:
        class_names: K canonical names, ``"background"`` first.
        organ_config: the config-level ``organ_table`` (user entries on top of the built-in organs), as given.
        dataset_config: the config-level ``dataset_table`` (user datasets on top of the built-ins), as given.
        partial_labels: how the model was trained: True, each dataset's unannotated organs masked out of the loss
            (TAL); False, the naive baseline (unannotated organs counted as background). Recorded with the
            model; the masks themselves (:meth:`labeled_mask`) are always the datasets' true ones, because
            validation Dice must skip the organs a volume does not annotate whichever way the model was trained.
        placeholders: class names that are not organs of the table, accepted only by ``create(strict=False)``
            (the ``class1``, ``class2`` names given to a checkpoint without plans): they get no colour, no
            connected-component rule, no DICOM code, and datasets are not resolved against them.

    Example::

        space = LabelSpace.create(["background", "liver", "kidney", "spleen"])
        space.resolve("btcv")          # ({0: 0, 1: 3, 2: 2, 3: 2, ..., 6: 1, ...}, (1, 2, 3))
        space.labeled_mask("lits")     # array([1., 1., 0., 0.], dtype=float32)
        space.num_components           # {1: 1, 2: 2, 3: 1}
    """

    class_names: tuple[str, ...]
    organ_config: Mapping[str, Any] = field(default_factory=dict)
    dataset_config: Mapping[str, Any] = field(default_factory=dict)
    partial_labels: bool = True
    placeholders: tuple[str, ...] = ()

    @classmethod
    def create(
        cls,
        class_names: Sequence[str] | None = None,
        organ_table: Mapping[str, Any] | None = None,
        dataset_table: Mapping[str, Any] | None = None,
        partial_labels: bool = True,
        strict: bool = True,
    ) -> "LabelSpace":
        """Validate config values and build the label space.

        Args:
            class_names: background first, then organs of the built-in table or of ``organ_table`` (default: the
                paper's ``background, liver, kidney, spleen``).
            organ_table: ``{organ: {num_components, color, code, parent, parts, ...}}`` entries on top of the
                built-in organs.
            dataset_table: ``{dataset: {"labels": {value: organ}, "annotates": [organ, ...]}}`` on top of the
                built-in datasets.
            partial_labels: see the class attributes.
            strict: False accepts class names that are not organs (see ``placeholders``); every other rule
                (background first, no duplicates, K >= 2) still holds.

        Raises:
            ValueError: a malformed vocabulary, organ or dataset entry (naming it).
        """
        organs = _frozen(organ_table)
        raw = list(class_names) if class_names is not None else list(DEFAULT_CLASS_NAMES)
        placeholders: tuple[str, ...] = ()
        if not strict and not isinstance(class_names, str):
            known = _build_organ_table(organs)
            placeholders = tuple(dict.fromkeys(
                n for n in (canonical_organ_name(str(r)) for r in raw[1:]) if n not in known))
        generic = {p: {"num_components": None} for p in placeholders}
        names = validate_class_names(raw, {**organs, **generic})
        space = cls(names, organs, _frozen(dataset_table), bool(partial_labels), placeholders)
        if not placeholders:  # malformed entries fail here, not at the first item of that dataset
            for name in space.dataset_config:
                space.resolve(name)
        return space

    @classmethod
    def from_plans(cls, plans: Mapping[str, Any], organ_table: Mapping[str, Any] | None = None,
                   dataset_table: Mapping[str, Any] | None = None, strict: bool = True) -> "LabelSpace":
        """The label space a checkpoint was trained with (its plans' ``class_names``, ``organ_table``,
        ``dataset_table``, ``partial_labels``). ``organ_table`` / ``dataset_table`` stand in for a checkpoint whose
        plans carry none (written before plans stored them; or datasets to evaluate on that training did not
        use). ``strict=False``: see :meth:`create` (plans made for a checkpoint without plans)."""
        organs = plans.get("organ_table") or organ_table
        datasets = plans.get("dataset_table") or dataset_table
        return cls.create(plans["class_names"], organs, datasets, plans.get("partial_labels", True), strict=strict)

    def to_config(self) -> dict[str, Any]:
        """Plain JSON-like values (the plans' keys): round-trips through :meth:`create`."""
        return {
            "class_names": list(self.class_names),
            "organ_table": dict(self.organ_config) or None,
            "dataset_table": dict(self.dataset_config) or None,
            "partial_labels": self.partial_labels,
        }

    @property
    def num_classes(self) -> int:
        """K, background included."""
        return len(self.class_names)

    @property
    def named(self) -> bool:
        """Every class is an organ of the table (no :attr:`placeholders`): labels can be mapped by organ name."""
        return not self.placeholders

    @cached_property
    def organs(self) -> Mapping[str, OrganSpec]:
        """The full organ table (built-in organs updated with :attr:`organ_config`; placeholders as entries
        without rules)."""
        generic = {p: {"num_components": None} for p in self.placeholders}
        return MappingProxyType(organ_table({**self.organ_config, **generic}))

    def organ(self, class_id: int) -> OrganSpec:
        """The organ entry of class ``class_id`` (1..K-1)."""
        if not 0 < int(class_id) < self.num_classes:
            raise ValueError(f"class id {class_id} is not an organ of {list(self.class_names)} (1..{self.num_classes - 1}).")
        return self.organs[self.class_names[int(class_id)]]

    def dataset(self, name: str) -> DatasetSpec:
        """The dataset entry (config table first, then user-registered and built-in datasets).

        Raises:
            KeyError: unknown dataset, listing the known ones.
        """
        spec = get_dataset_spec(name, self.dataset_config)
        assert spec is not None
        return spec

    def resolve(self, dataset: str | None) -> tuple[dict[int, int], tuple[int, ...]]:
        """``(label_map, labeled_classes)`` of a dataset in this space; ``None`` is a fully labeled item in the
        global convention (identity map, every organ labeled)."""
        key = None if dataset in (None, "") else str(dataset)
        cache = self.__dict__.setdefault("_resolved", {})
        if key not in cache:
            if key is None:
                cache[key] = ({i: i for i in range(self.num_classes)}, tuple(range(1, self.num_classes)))
            else:
                cache[key] = self.dataset(key).resolve(self.class_names, self.organ_config)
        label_map, labeled = cache[key]
        return dict(label_map), labeled

    def labeled_mask(self, dataset: str | None) -> np.ndarray:
        """``(K,)`` float32 0/1 vector of the classes ``dataset`` annotates (all ones for a fully labeled item);
        background is always 1."""
        return labeled_mask(self.resolve(dataset)[1], self.num_classes)

    @property
    def num_components(self) -> dict[int, int]:
        """``{class id: N}`` connected components post-processing keeps (organs without a rule are left out)."""
        return {i: self.organs[n].num_components for i, n in enumerate(self.class_names)
                if i and self.organs[n].num_components is not None}

    @property
    def colors(self) -> dict[int, tuple[float, float, float]]:
        """``{class id: (r, g, b)}`` display colours (background and placeholders not in it: drawn in tab10)."""
        return {i: self.organs[n].color for i, n in enumerate(self.class_names) if i and n not in self.placeholders}

    @property
    def metric_names(self) -> tuple[str, ...]:
        """Validation metric keys of the organs, ``val_dice_<organ>``, in class order."""
        return tuple(metric_name(n) for n in self.class_names[1:])

    def class_ids(self, organs: Sequence[str]) -> tuple[int, ...]:
        """Class ids of organ names (any spelling the vocabulary accepts).

        Raises:
            ValueError: a name that is not a class of this space, listing the classes.
        """
        index = {n: i for i, n in enumerate(self.class_names)}
        ids, unknown = [], []
        for o in organs:
            c = index.get(canonical_organ_name(str(o)))
            (unknown.append(o) if c in (None, 0) else ids.append(c))
        if unknown:
            raise ValueError(f"{unknown} are not organs of this model; its classes are {list(self.class_names[1:])}.")
        return tuple(ids)

    def __reduce__(self) -> tuple:
        # pickled by value (the cache's worker processes receive it): read-only mapping views and the cached
        # tables do not pickle
        return (_restore, (list(self.class_names), dict(self.organ_config), dict(self.dataset_config),
                           self.partial_labels, self.placeholders))

    def __eq__(self, other: object) -> bool:
        # compared as JSON: a table read back from a checkpoint has string keys ({"1": "liver"}) where the config
        # had ints ({1: "liver"}), and both mean the same label space
        def as_json(space: LabelSpace) -> str:
            return json.dumps(space.to_config(), sort_keys=True, default=list)

        return isinstance(other, LabelSpace) and as_json(self) == as_json(other)

    def __hash__(self) -> int:
        return hash(self.class_names)

    def __repr__(self) -> str:
        extra = [f"organ_table={sorted(self.organ_config)}"] if self.organ_config else []
        extra += [f"dataset_table={sorted(self.dataset_config)}"] if self.dataset_config else []
        extra += [] if self.partial_labels else ["partial_labels=False"]
        extra += [f"placeholders={list(self.placeholders)}"] if self.placeholders else []
        return f"LabelSpace({list(self.class_names)}{''.join(', ' + e for e in extra)})"


def _restore(class_names: list, organ_config: dict, dataset_config: dict, partial_labels: bool,
             placeholders: tuple) -> LabelSpace:
    """Unpickle a :class:`LabelSpace` (its values were validated when it was created)."""
    return LabelSpace(tuple(class_names), _frozen(organ_config), _frozen(dataset_config), partial_labels,
                      tuple(placeholders))
