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

"""Partial-label plumbing: map a source dataset's own label values to the global classes and attach the
dataset's labeled-class mask, which the loss
needs to tell "not labeled by this dataset" from "background"."""

from __future__ import annotations

from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type

from pipofan_monai.vocabulary.masks import LABELED_MASK_KEY
from pipofan_monai.utils import filename_of
from pipofan_monai.vocabulary.datasets import CLASS_NAMES, DatasetSpec, get_dataset_spec, labeled_mask
from pipofan_monai.vocabulary.organs import validate_class_names
from pipofan_monai.vocabulary.label_space import LabelSpace

__all__ = ["map_dataset_labels", "MapDatasetLabelsd"]


def _num_classes(num_classes: int | None, class_names: Sequence[str] | None) -> int:
    """K from ``num_classes`` and/or ``class_names`` (they must agree); default the paper's 4 classes."""
    if class_names is not None:
        if num_classes is not None and int(num_classes) != len(class_names):
            raise ValueError(
                f"num_classes={num_classes} does not match class_names {list(class_names)} (K={len(class_names)})."
            )
        return len(class_names)
    return len(CLASS_NAMES) if num_classes is None else int(num_classes)


def map_dataset_labels(
    label: torch.Tensor | np.ndarray,
    spec: DatasetSpec | None,
    num_classes: int | None = None,
    filename: str | None = None,
    class_names: Sequence[str] | None = None,
    organs: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """Map label values of one source dataset to global class ids with a lookup table.

    Args:
        label: label map of any shape (typically ``(1, H, W[, D])``), integer-valued (float dtypes allowed).
        spec: the source dataset's entry; ``None`` means already in the global convention (identity
            mapping; values must then lie in ``0..num_classes-1``).
        num_classes: K, number of global classes including background (default ``len(class_names)``).
        filename: used in error messages (defaults to the MetaTensor's ``filename_or_obj``).
        class_names: the global vocabulary (background first); default the paper's four classes.
        organs: optional config-level ``organ_table``.

    Returns:
        a tensor (a MetaTensor with the input's metadata when the input is one) of the same shape and dtype
        as ``label`` holding global class ids.

    Raises:
        ValueError: non-integer label values, values outside the dataset's mapping (the message names the
            file and the offending values), or a mapping target outside ``0..num_classes-1``.
    """
    fname = filename or filename_of(label)
    num_classes = _num_classes(num_classes, class_names)
    lab = torch.as_tensor(label.as_tensor() if isinstance(label, MetaTensor) else label)
    if spec is None:
        table = {k: k for k in range(num_classes)}
        name = "global convention (no dataset id)"
    else:
        if class_names is None and not spec.by_name:
            table = {int(k): int(v) for k, v in spec.labels.items()}  # older form: checked just below
        else:
            table = spec.resolve(class_names, organs, num_classes=num_classes)[0]
        name = f"dataset {spec.name!r}"
        bad_targets = sorted({v for v in table.values() if not 0 <= v < num_classes})
        if bad_targets:
            raise ValueError(
                f"{name} maps to classes {bad_targets} outside 0..{num_classes - 1} (num_classes={num_classes})."
            )
    keys = sorted(table)
    lo, hi = keys[0], keys[-1]
    # lookup table over lo..hi; -1 marks values without a mapping
    lut_i = np.full(hi - lo + 1, -1, dtype=np.int64)
    lut_i[np.asarray(keys) - lo] = [table[k] for k in keys]

    def _fail(values: Any) -> None:
        values = [int(v) if float(v).is_integer() else float(v) for v in values]
        raise ValueError(
            f"label file {fname} contains values {values[:20]} that are not in the label mapping of {name} "
            f"(allowed values: {keys})."
        )

    use_np = lab.device.type == "cpu" and lab.dtype != torch.bfloat16
    arr = lab.detach().numpy() if use_np else lab.detach().cpu().numpy()  # small label maps only on GPU paths
    if arr.size == 0:
        return convert_to_dst_type(lab.clone(), label)[0]
    vmin, vmax = arr.min(), arr.max()  # two cheap passes; the slow paths run only on errors
    if vmin < lo or vmax > hi:
        outside = arr[(arr < lo) | (arr > hi)]
        _fail(np.unique(outside).tolist())
    small = np.uint8 if hi - lo < 256 else np.int32
    idx = (arr - lo if lo != 0 else arr).astype(small)
    if np.issubdtype(arr.dtype, np.floating) and not np.array_equal(idx, arr - lo if lo != 0 else arr):
        frac = arr[idx != (arr - lo if lo != 0 else arr)]
        raise ValueError(
            f"label file {fname} has non-integer values {np.unique(frac)[:10].tolist()} (interpolated label map?)."
        )
    lut = lut_i.astype(np.float32 if np.issubdtype(arr.dtype, np.floating) else np.int32)
    mapped = lut[idx]  # fancy indexing with a uint8 index: much faster than np.take here
    if (lut_i < 0).any() and mapped.min() < 0:
        _fail((np.unique(idx[mapped < 0]).astype(np.int64) + lo).tolist())
    out = torch.from_numpy(mapped.astype(arr.dtype, copy=False)).to(lab.device)
    return convert_to_dst_type(out, label)[0]


class MapDatasetLabelsd(MapTransform):
    """Map each item's label from its source dataset's convention to the global classes and attach the
    dataset's labeled-class mask to the label's metadata.

    The dataset is named by ``data[dataset_key]`` (e.g. ``"lits"``) and looked up with
    :func:`pipofan_monai.vocabulary.datasets.get_dataset_spec` (``datasets`` first, then user-registered
    and built-in datasets) and resolved into the vocabulary ``class_names`` (label values named by organ; see
    :py:meth:`~pipofan_monai.vocabulary.datasets.DatasetSpec.resolve`). Items without a dataset id are
    fully labeled data already in the global convention: identity mapping (values must be in
    ``0..num_classes-1``) and an all-ones mask.

    The mask, a float32 tensor of shape ``(num_classes,)`` with ones at background and at the organs the
    dataset annotates, is stored as ``label.meta[mask_key]``; it survives MONAI crops and DataLoader collation
    and arrives in the loss as ``(B, num_classes)``.

    Args:
        keys: label key(s) to map. Default ``"label"``.
        dataset_key: item key holding the source dataset name. Default ``"dataset"``.
        num_classes: K, number of global classes including background. Default ``len(class_names)``.
        datasets: optional extra dataset table as accepted by ``get_dataset_spec`` (config-level
            ``{name: {"labels": {raw: organ}, "annotates": [organ, ...]}}`` or the older
            ``{name: {"label_map": {raw: class id}, "labeled_classes": [...]}}``). Default None.
        mask_key: metadata key of the labeled-class mask. Default ``"labeled_mask"``.
        partial_labels: True (default) attaches the dataset's true labeled-class mask. False is the NAIVE
            baseline of the loss study: every class counts as labeled (all-ones mask), so organs a dataset does
            not annotate are treated as background. Labels are mapped the same way in both cases.
        allow_missing_keys: don't raise if a label key is absent (e.g. inference items).
        class_names: the global vocabulary, background first (any K >= 2). Default the paper's
            ``("background", "liver", "kidney", "spleen")``.
        organs: optional config-level ``organ_table`` (new organs or other relations). Default None.
        label_space: the model's :class:`~pipofan_monai.vocabulary.LabelSpace` (class names, organ and dataset
            tables in one object); when given, ``num_classes``, ``datasets``, ``class_names`` and ``organs`` must
            be left at their defaults (``partial_labels`` stays this pipeline's choice: a naive-baseline training
            pipeline and its validation pipeline share one label space).

    Raises:
        ValueError: label values outside the dataset's mapping, naming the file and the values.
        KeyError: unknown dataset name.

    Example::

        t = MapDatasetLabelsd("label", datasets={"my_ct": {"label_map": {0: 0, 1: 1, 4: 3}, "labeled_classes": [1, 3]}})
        out = t({"label": label, "dataset": "my_ct"})
        out["label"].meta["labeled_mask"]  # tensor([1., 1., 0., 1.])
        # five classes; BTCV's stomach (label 7) becomes class 4
        t = MapDatasetLabelsd("label", class_names=["background", "liver", "kidney", "spleen", "stomach"])
    """

    def __init__(
        self,
        keys: KeysCollection = "label",
        dataset_key: str = "dataset",
        num_classes: int | None = None,
        datasets: Mapping[str, Any] | None = None,
        mask_key: str = LABELED_MASK_KEY,
        allow_missing_keys: bool = False,
        partial_labels: bool = True,
        class_names: Sequence[str] | None = None,
        organs: Mapping[str, Any] | None = None,
        label_space: LabelSpace | None = None,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if label_space is not None:
            given = [n for n, v in (("num_classes", num_classes), ("datasets", datasets), ("class_names", class_names),
                                    ("organs", organs)) if v is not None]
            if given:
                raise ValueError(f"MapDatasetLabelsd takes either label_space or {given}, not both (they could disagree).")
            class_names, num_classes = label_space.class_names, label_space.num_classes
            datasets, organs = label_space.dataset_config, label_space.organ_config
        self.label_space = label_space
        num_classes = _num_classes(num_classes, class_names)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
        self.dataset_key = dataset_key
        self.num_classes = num_classes
        self.datasets = dict(datasets) if datasets else None
        self.organs = dict(organs) if organs else None
        self.class_names = validate_class_names(class_names, self.organs) if class_names is not None else None
        self.mask_key = mask_key
        self.partial_labels = bool(partial_labels)
        self._resolved: dict[str, tuple[dict[int, int], tuple[int, ...]]] = {}

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        name = d.get(self.dataset_key, None)
        spec = get_dataset_spec(name, self.datasets) if name not in (None, "") else None
        table = None
        if spec is not None:
            if self.label_space is not None:
                table, labeled = self.label_space.resolve(spec.name)
            else:
                if spec.name not in self._resolved:  # resolution is per dataset, not per item
                    self._resolved[spec.name] = spec.resolve(self.class_names, self.organs, num_classes=self.num_classes)
                table, labeled = self._resolved[spec.name]
            table = DatasetSpec(spec.name, table, labeled)  # resolved: class ids of this vocabulary
        if spec is None or not self.partial_labels:
            mask = np.ones(self.num_classes, dtype=np.float32)
        else:
            mask = labeled_mask(labeled, self.num_classes)
        for key in self.key_iterator(d):
            label = d[key]
            if not isinstance(label, MetaTensor):
                label = MetaTensor(torch.as_tensor(label))
            out = map_dataset_labels(label, table, self.num_classes)
            out.meta[self.mask_key] = torch.from_numpy(mask.copy())
            d[key] = out
        return d
