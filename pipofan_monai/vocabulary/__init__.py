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

"""The label space, defined once (core): the organ table (:mod:`.organs`), the source datasets' label tables
(:mod:`.datasets`), the partial-label mask contract (:mod:`.masks`) and the one object that holds them together
for a model (:class:`LabelSpace`)."""

from .datasets import BUILTIN_DATASETS, DATASET_ALIASES, DatasetSpec, get_dataset_spec, register_dataset
from .label_space import LabelSpace
from .masks import LABELED_MASK_KEY, MissingLabeledMaskError, get_labeled_mask, labeled_mask, resolve_labeled_mask
from .organs import DEFAULT_CLASS_NAMES, ORGANS, OrganSpec, canonical_organ_name, get_organ, organ_table

__all__ = [
    "LabelSpace",
    "OrganSpec",
    "ORGANS",
    "DEFAULT_CLASS_NAMES",
    "canonical_organ_name",
    "get_organ",
    "organ_table",
    "DatasetSpec",
    "BUILTIN_DATASETS",
    "DATASET_ALIASES",
    "get_dataset_spec",
    "register_dataset",
    "LABELED_MASK_KEY",
    "MissingLabeledMaskError",
    "labeled_mask",
    "get_labeled_mask",
    "resolve_labeled_mask",
]
