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

"""Where the training data comes from and which items train and validate (fold or named split)."""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Sequence

import torch

__all__ = ["SeededItemDataset", "load_training_data", "split_training_data"]

logger = logging.getLogger(__name__)


def load_training_data(
    datalist: str | os.PathLike | Mapping | None = None,
    dataset_dir: str | os.PathLike | None = None,
    demo_dir: str | os.PathLike | None = None,
) -> dict:
    """The datalist the bundle trains on, with absolute paths.

    Args:
        datalist: a datalist JSON (from ``python -m pipofan_monai datalist``) or dict; None (default) uses the
            built-in synthetic demo dataset, generated on first use into ``demo_dir``.
        dataset_dir: folder the datalist's relative paths are resolved against (default: the JSON's folder).
        demo_dir: where the demo dataset lives (default: ``$PIPOFAN_DEMO_DIR`` or ``~/.cache/pipofan_monai/demo``).
    """
    from pipofan_monai.apps.dataset_conversion import ensure_demo_dataset, load_datalist

    if datalist is None or datalist == "":
        datalist = ensure_demo_dataset(demo_dir)
        logger.info(f"no datalist given: using the built-in SYNTHETIC demo dataset {datalist}")
    return load_datalist(datalist, dataset_dir=dataset_dir)


def split_training_data(
    data: Mapping,
    fold: int = 0,
    num_folds: int = 5,
    split: str | None = None,
    datasets: Sequence[str] | None = None,
    max_val: int | None = None,
    min_slices: int = 1,
    label_space: Any = None,
) -> tuple[list, list]:
    """(train, validation) items: cross-validation fold ``fold`` of ``num_folds``, or a named split such as
    the paper's ``"btcv_paper"`` (then ``fold`` is ignored).

    Args:
        data: datalist dict (from :func:`load_training_data`).
        fold: validation fold, 0..num_folds-1.
        num_folds: number of folds.
        split: named split in the datalist's ``splits``; None for cross-validation.
        datasets: keep only these source datasets (None: all); every id must be one of the datalist's.
        max_val: keep at most this many validation volumes (spread over the datasets), None for all.
        min_slices: training volumes need at least this many slices (``2 * context + 1``); checked on the headers.
        label_space: the model's :class:`~pipofan_monai.vocabulary.LabelSpace`; when given, an organ that none
            of the training datasets annotates is reported (warning: it would never be learned).

    Raises:
        ValueError: unknown dataset ids in ``datasets`` (the message lists the datalist's and the known ones),
            items that mix having and lacking a ``dataset`` key, training volumes thinner than ``min_slices``
            (see :func:`pipofan_monai.apps.dataset_conversion.datalist.check_training_items`), no training item.
    """
    from pipofan_monai.apps.dataset_conversion import select_fold, select_split
    from pipofan_monai.apps.dataset_conversion.datalist import check_dataset_ids, check_training_items

    all_items = list(data.get("training", [])) if isinstance(data, Mapping) else list(data)
    check_training_items(all_items)
    datasets = check_dataset_ids(datasets, all_items)

    if split:
        train, val = select_split(data, split, datasets=datasets)
    else:
        if int(data.get("num_folds", num_folds)) != int(num_folds):
            raise ValueError(
                f"num_folds={num_folds} but the datalist was made with {data.get('num_folds')} folds; "
                "regenerate it or pass the matching num_folds."
            )
        train, val = select_fold(data, int(fold), int(num_folds), datasets=datasets)
    if not train:
        raise ValueError(f"no training items for fold={fold} split={split} datasets={datasets}.")
    check_training_items(train, min_slices=min_slices)
    if max_val is not None and len(val) > max_val:
        by_ds: dict[Any, list] = {}
        for item in val:
            by_ds.setdefault(item.get("dataset"), []).append(item)
        picked: list = []
        while len(picked) < max_val:
            for items in by_ds.values():
                if items and len(picked) < max_val:
                    picked.append(items.pop(0))
        val = picked
    if label_space is not None:
        from pipofan_monai.vocabulary.datasets import datasets_annotating

        ann = datasets_annotating([it.get("dataset") for it in train], label_space.class_names,
                                  dict(label_space.dataset_config) or None, dict(label_space.organ_config) or None)
        for organ, sources in ann.items():
            if sources:
                logger.info(f"class {organ!r} is annotated by {', '.join(sources)}")
            else:
                present = sorted({str(it.get('dataset')) for it in train})
                logger.warning(f"class {organ!r} is annotated by none of the training datasets {present}: the "
                               "network will never learn it (add a dataset that labels it, or drop it from "
                               "class_names).")
    logger.info(
        f"training on {len(train)} volumes, validating on {len(val)} "
        + (f"(split {split})" if split else f"(fold {fold} of {num_folds})")
    )
    return train, val


class SeededItemDataset(torch.utils.data.Dataset):
    """Training dataset whose items are addressed as ``(index, seed)`` (from
    ``PartialLabelSampler(item_seeds=True)``): the random transforms of ``dataset`` (crops, flips) are seeded from
    ``seed`` before item ``index`` is made, so an item depends only on its seed, not on which DataLoader worker
    makes it, on the worker's history, or on a resume in between. A plain integer index is passed through.

    Our own wrapper because MONAI seeds the transforms once per worker (or once per DataLoader without workers),
    so their state after a resume differs from the uninterrupted run's; ignite's ``DeterministicEngine`` reseeds
    per iteration but replaces the MONAI trainer.

    Args:
        dataset: a MONAI ``Dataset``/``CacheDataset`` with a ``transform``.
    """

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (tuple, list)) and len(key) == 2:
            from monai.data.utils import set_rnd

            index, seed = int(key[0]), int(key[1])
            # the transform only: set_rnd on the dataset itself would walk its whole cache
            set_rnd(getattr(self.dataset, "transform", self.dataset), seed)
            return self.dataset[index]
        return self.dataset[key]
